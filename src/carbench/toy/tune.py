"""Choose the toy benchmark's CaR settings on the *tune* split — never on val.

    python -m carbench.toy.tune [overrides…] [--n 60] [--theta …] [--eta …] [--lam …] [--prompts circle,blur blur …]

(Hydra overrides such as threads=1 go first: the list options take every word after them.)

Coordinate search: θ × η on a grid (λ and prompts at the config's values), then λ, then the visual
prompts, each at the best setting so far. Prints every tune mIoU and the best setting to write into
conf/dataset_model/toy_car.yaml; the golden numbers on val are then measured by `carbench.toy.golden`.

η, λ and the prompts shape the proposals the stage-3 classifier is trained on
(`carbench.toy.train_classifier`), so a new value for any of them means re-running stage 3 to keep
the shipped file the output of the committed recipe; θ does not. To re-tune θ alone, pin the
others: ``--eta 0.4 --lam 0.3 --prompts circle,blur``.
"""

from __future__ import annotations

import argparse
import itertools

from carbench.toy.runs import run_toy, toy_config


def tune_miou(n: int, setting: dict[str, object], extra: list[str]) -> float:
    """mIoU on the first `n` tune scenes with the model keys of `setting` overridden."""
    overrides = ["dataset.split=tune", f"dataset.n={n}", "num_workers=0", *extra]
    for key, value in setting.items():
        overrides.append(f"model.{key}=[{','.join(value)}]" if isinstance(value, (list, tuple)) else f"model.{key}={value}")
    return float(run_toy(overrides)["mIoU"])


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60, help="tune scenes")
    ap.add_argument("--theta", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.45, 0.6, 0.7, 0.8])
    ap.add_argument("--eta", type=float, nargs="+", default=[0.3, 0.4, 0.5])
    ap.add_argument("--lam", type=float, nargs="+", default=[0.3, 0.4, 0.5])
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

    def score(setting: dict[str, object]) -> float:
        key = repr(sorted(setting.items()))
        if key not in seen:
            seen[key] = tune_miou(args.n, setting, args.overrides)
            print("  ".join(f"{k}={v}" for k, v in setting.items()) + f"  → tune mIoU {seen[key]:.2f}", flush=True)
        return seen[key]

    grids = [
        [{"mask_threshold": e, "confidence_threshold": t} for e, t in itertools.product(args.eta, args.theta)],
        [{"clipes_threshold": lam} for lam in args.lam],
        [{"visual_prompts": p.split(",")} for p in args.prompts],
    ]
    for grid in grids:
        best = max(({**best, **change} for change in grid), key=score)
    print(f"best on tune ({args.n} scenes): {best} → {score(best):.2f} mIoU")
    return {**best, "tune_mIoU": score(best)}


if __name__ == "__main__":
    main()
