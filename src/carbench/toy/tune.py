"""Choose the toy benchmark's thresholds (η, θ, λ) on the *tune* split — never on val.

    python -m carbench.toy.tune [--n 60] [--theta 0.3 0.45 0.6 0.75] [--eta 0.3 0.4 0.5] [--lam 0.3 0.4 0.5]

Coordinate search: θ × η on a grid at the config's λ, then λ at the best (θ, η). Prints the
table of tune mIoU and the best setting to paste into conf/dataset/toy.yaml.
"""

from __future__ import annotations

import argparse

from carbench.toy.runs import run_toy


def tune_miou(n: int, eta: float, theta: float, lam: float, extra: list[str]) -> float:
    """mIoU on the first `n` tune scenes at (η, θ, λ)."""
    overrides = [
        "dataset.split=tune",
        f"dataset.n={n}",
        f"model.mask_threshold={eta}",
        f"model.confidence_threshold={theta}",
        f"model.clipes_threshold={lam}",
        "num_workers=0",
        *extra,
    ]
    return float(run_toy(overrides)["mIoU"])


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60, help="tune scenes")
    ap.add_argument("--theta", type=float, nargs="+", default=[0.3, 0.45, 0.6, 0.75])
    ap.add_argument("--eta", type=float, nargs="+", default=[0.3, 0.4, 0.5])
    ap.add_argument("--lam", type=float, nargs="+", default=[0.3, 0.4, 0.5])
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = ap.parse_args(argv)
    results: dict[tuple[float, float, float], float] = {}
    lam0 = 0.4
    for theta in args.theta:
        for eta in args.eta:
            results[(eta, theta, lam0)] = tune_miou(args.n, eta, theta, lam0, args.overrides)
            print(
                f"η={eta:.2f} θ={theta:.2f} λ={lam0:.2f}  tune mIoU {results[(eta, theta, lam0)]:.2f}",
                flush=True,
            )
    eta_b, theta_b, _ = max(results, key=results.get)
    for lam in args.lam:
        if (eta_b, theta_b, lam) not in results:
            results[(eta_b, theta_b, lam)] = tune_miou(args.n, eta_b, theta_b, lam, args.overrides)
            print(
                f"η={eta_b:.2f} θ={theta_b:.2f} λ={lam:.2f}  tune mIoU {results[(eta_b, theta_b, lam)]:.2f}",
                flush=True,
            )
    best = max(results, key=results.get)
    print(f"best on tune: η={best[0]} θ={best[1]} λ={best[2]} → {results[best]:.2f} mIoU")
    return {
        "mask_threshold": best[0],
        "confidence_threshold": best[1],
        "clipes_threshold": best[2],
        "tune_mIoU": results[best],
    }


if __name__ == "__main__":
    main()
