"""carbench entry point (Hydra). `python evaluate.py [overrides]`; see README.md and conf/config.yaml."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from carbench.engine.evaluate import run_evaluation  # heavy imports after Hydra parsed the CLI
    from carbench.engine.interrupts import RunInterrupted

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        results = run_evaluation(cfg, out_dir)
    except RunInterrupted as stop:  # Ctrl-C / SIGTERM: one line, what is kept and how to go on, no traceback
        print(f"\n{stop.message}", file=sys.stderr, flush=True)  # on its own line, after any progress bar
        sys.exit(stop.exit_code)
    name = results["primary_metric"]  # mIoU; gIoU for GRES
    value = float(results["metrics"][name])
    print(f"{name} {value:.2f} over {results['num_items']['evaluated']} {results['unit']}s "
          f"-> {Path(results['run_dir']) / 'results.json'}")
    return value  # the value Hydra sweepers optimise


if __name__ == "__main__":
    main()
