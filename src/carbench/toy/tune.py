"""Choose the toy benchmark's CaR settings on the *tune* split — never on val.

    python -m carbench.toy.tune [overrides…] [--n 60] [--lam …] [--theta …] [--eta …] [--prompts circle,blur blur …]

(Hydra overrides such as threads=1 go first: the list options take every word after them.)

Order of the search, each step at the best setting so far:
1. λ (CLIP-ES's box threshold) on the mIoU with oracle queries (`run_toy_oracle`: each image's true
   classes, nothing dropped). λ only shapes the proposals, and the stage-3 classifier is trained on
   those proposals, so λ is chosen by a measure that does not involve the classifier
   (`--lam-by car` scores λ by CaR's mIoU instead, after θ and η, as the other settings are).
2. θ × η on a grid, by CaR's mIoU.
3. The visual prompts, by CaR's mIoU.

Prints every tune mIoU and the best setting to write into conf/dataset_model/toy_car.yaml; the
golden numbers on val are then measured by `carbench.toy.golden`.

η, λ and the prompts shape the proposals the stage-3 classifier is trained on
(`carbench.toy.train_classifier`), so a new value for any of them means re-running stage 3 to keep
the shipped file the output of the committed recipe; θ does not. To re-tune θ alone, pin the
others: ``--eta 0.4 --lam 0.6 --prompts circle,blur``.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable

from carbench.toy.runs import run_toy, run_toy_oracle, toy_config

#: λ grid: the range the official CaR configs use (0.3 … 0.7).
LAM_GRID = [0.3, 0.4, 0.5, 0.6, 0.7]


def _overrides(n: int, setting: dict[str, object], extra: list[str]) -> list[str]:
    out = ["dataset.split=tune", f"dataset.n={n}", "num_workers=0", *extra]
    for key, value in setting.items():
        out.append(f"model.{key}=[{','.join(value)}]" if isinstance(value, (list, tuple)) else f"model.{key}={value}")
    return out


def tune_miou(n: int, setting: dict[str, object], extra: list[str]) -> float:
    """CaR's mIoU on the first `n` tune scenes with the model keys of `setting` overridden."""
    return float(run_toy(_overrides(n, setting, extra))["mIoU"])


def tune_oracle_miou(n: int, setting: dict[str, object], extra: list[str]) -> float:
    """The oracle-query mIoU on the first `n` tune scenes (no filter: the proposals' own quality)."""
    return float(run_toy_oracle(_overrides(n, setting, extra))["mIoU"])


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60, help="tune scenes")
    ap.add_argument("--theta", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.45, 0.6, 0.7, 0.8])
    ap.add_argument("--eta", type=float, nargs="+", default=[0.3, 0.4, 0.5])
    ap.add_argument("--lam", type=float, nargs="+", default=LAM_GRID)
    ap.add_argument("--lam-by", choices=("oracle", "car"), default="oracle",
                    help="score λ by the oracle-query mIoU (first) or by CaR's mIoU (after θ × η)")
    ap.add_argument("--prompts", nargs="+", default=["circle,blur", "blur"], help="comma-separated prompt lists")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides (e.g. threads=1)")
    args = ap.parse_args(argv)
    base = toy_config(args.overrides).model
    best: dict[str, object] = {
        "mask_threshold": base.mask_threshold,
        "confidence_threshold": base.confidence_threshold,
        "clipes_threshold": base.clipes_threshold,
        "visual_prompts": list(base.visual_prompts),
    }
    seen: dict[str, float] = {}

    def scorer(what: str, measure: Callable[[int, dict[str, object], list[str]], float]):
        def score(setting: dict[str, object]) -> float:
            key = what + repr(sorted(setting.items()))
            if key not in seen:
                seen[key] = measure(args.n, setting, args.overrides)
                print("  ".join(f"{k}={v}" for k, v in setting.items()) + f"  → tune {what} mIoU {seen[key]:.2f}",
                      flush=True)
            return seen[key]
        return score

    car, oracle = scorer("CaR", tune_miou), scorer("oracle", tune_oracle_miou)
    lam_grid = [{"clipes_threshold": lam} for lam in args.lam]
    steps = [(lam_grid, oracle)] if args.lam_by == "oracle" else []
    steps.append(([{"mask_threshold": e, "confidence_threshold": t} for e, t in itertools.product(args.eta, args.theta)],
                  car))
    if args.lam_by == "car":
        steps.append((lam_grid, car))
    steps.append(([{"visual_prompts": p.split(",")} for p in args.prompts], car))
    for grid, score in steps:
        best = max(({**best, **change} for change in grid), key=score)
    print(f"best on tune ({args.n} scenes): {best} → {car(best):.2f} mIoU")
    return {**best, "tune_mIoU": car(best)}


if __name__ == "__main__":
    main()
