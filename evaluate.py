"""carbench entry point (Hydra). `python evaluate.py [overrides]`; see README.md and conf/config.yaml."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from carbench.engine.evaluate import run_evaluation  # heavy imports after Hydra parsed the CLI

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    results = run_evaluation(cfg, out_dir)
    print(f"mIoU {results['metrics']['mIoU']:.2f} over {results['num_images']['evaluated']} images "
          f"-> {Path(results['run_dir']) / 'results.json'}")
    return float(results["metrics"]["mIoU"])  # the value Hydra sweepers optimise


if __name__ == "__main__":
    main()
