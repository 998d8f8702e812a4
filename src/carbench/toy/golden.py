"""Measure the toy benchmark's golden numbers on *val* and write them to conf/reported/toy.yaml.

    python -m carbench.toy.golden            # all rows (a few minutes on 2 cores)
    python -m carbench.toy.golden --check    # re-measure and compare with the file (exit 1 on a drop)

Each row is one `python evaluate.py dataset=toy …` command (issue 8's shapes of the paper's claims):
CaR as configured; one step with all classes as queries (`model.max_steps=1`, Table 2's "no
recurrence"); plain Grad-CAM instead of CLIP-ES; and the fixed val subset the CI gate re-runs
(`tests/test_toy_benchmark.py`). The thresholds come from conf/dataset/toy.yaml, chosen on the
tune split by `carbench.toy.tune` — never on val.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from carbench.toy.model import TOY_WEIGHTS
from carbench.toy.runs import CONF_DIR, run_toy

GOLDEN_FILE = CONF_DIR / "reported" / "toy.yaml"
#: Images of the val subset the CI gate re-runs (the first N of the split).
CI_SUBSET = 30
#: name → (overrides, what the row shows)
ROWS: dict[str, tuple[list[str], str]] = {
    "car": ([], "CaR with the tuned thresholds (the bundled default run)"),
    "no_recurrence": (["model.max_steps=1"], "one step, all 8 classes as queries (paper Table 2 'no recurrence')"),
    "gradcam": (["model.cam=gradcam"], "CaR with plain Grad-CAM proposals instead of CLIP-ES (Table 2)"),
    "ci_subset": ([f"limit={CI_SUBSET}"], f"CaR on the first {CI_SUBSET} val images (the CI gate)"),
}


def _command(overrides: list[str]) -> str:
    return " ".join(["python evaluate.py", *overrides])


def measure(names: list[str], threads: int | None) -> dict[str, dict[str, Any]]:
    extra = [f"threads={threads}"] if threads else []
    rows = {}
    for name in names:
        overrides, what = ROWS[name]
        got = run_toy([*overrides, *extra, "num_workers=0"])
        rows[name] = {"command": _command(overrides), "what": what, **got}
        print(f"{name:>14}: mIoU {got['mIoU']:6.2f}  query sets exact {got['query_set_accuracy']:.3f}  "
              f"({got['images']} images, {got['wall_s']:.0f} s)", flush=True)
    return rows


def weights_sha256() -> str:
    return TOY_WEIGHTS.with_name(TOY_WEIGHTS.name + ".sha256").read_text().split()[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 while the CPU is shared)")
    ap.add_argument("--check", action="store_true", help="compare with the golden file instead of writing it")
    ap.add_argument("--tol", type=float, default=None, help="allowed mIoU drop for --check (default: the file's)")
    args = ap.parse_args(argv)
    rows = measure(args.rows, args.threads)
    if args.check:
        golden = yaml.safe_load(GOLDEN_FILE.read_text())
        tol = args.tol if args.tol is not None else float(golden["tolerance_mIoU"])
        bad = [n for n in rows if rows[n]["mIoU"] < golden["rows"][n]["mIoU"] - tol]
        for n in rows:
            print(f"{n}: ours {rows[n]['mIoU']:.2f} golden {golden['rows'][n]['mIoU']:.2f}")
        if bad:
            print(f"below golden - {tol}: {', '.join(bad)}", file=sys.stderr)
            return 1
        return 0
    old = yaml.safe_load(GOLDEN_FILE.read_text()) if GOLDEN_FILE.is_file() else {}
    doc = {
        "benchmark": "toy",
        "split": "val",
        "weights_sha256": weights_sha256(),
        "tolerance_mIoU": old.get("tolerance_mIoU", 2.0),
        "rows": {**old.get("rows", {}), **rows},
    }
    Path(GOLDEN_FILE).parent.mkdir(parents=True, exist_ok=True)
    GOLDEN_FILE.write_text(
        "# Golden numbers of the bundled toy benchmark (val split), written by `python -m carbench.toy.golden`.\n"
        "# Each row's `command` reproduces it; CI (tests/test_toy_benchmark.py) fails when a row drops more than\n"
        "# tolerance_mIoU below these. Re-measure after retraining the toy CLIP (weights_sha256 changes).\n"
        + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    )
    print(f"wrote {GOLDEN_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
