"""Ablation table of a sweep: `python -m carbench.report MULTIRUN_DIR`.

Reads every results.json under the dir (a Hydra multirun, or any tree of runs), finds the config
keys that differ between runs (the sweep's axes) and prints one row per run: markdown on stdout,
`report.md` + `report.csv` next to the runs, and `report.png` when an axis is numeric (metric vs
that axis, one line per combination of the other axes). `--against car_paper` adds the paper's
number for every run that matches a row of conf/reported/car_paper.yaml. `--peers` prints a run
next to the methods of conf/reported/peers.yaml instead, flagging protocol differences. Semantic
runs also get the filter diagnostics' totals (precision and recall of the kept query set against
the GT classes, the share of images where it equals them, present classes dropped, absent ones kept).

This is how a sweep is seen without W&B.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from carbench import runs

METRICS = ("mIoU", "mIoU_present_classes", "aAcc")
#: short column names for the axes the paper's tables vary
AXIS_LABELS = {
    "model.mask_threshold": "η (mask_threshold)",
    "model.confidence_threshold": "θ (confidence_threshold)",
    "model.clipes_threshold": "λ (clipes_threshold)",
    "model.background_queries": "background queries",
    "model.visual_prompts": "visual prompts",
    "model.max_steps": "max_steps",
}


def _excluded(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in runs.NOT_AXES)


def find_axes(flat_configs: Sequence[dict[str, Any]]) -> list[str]:
    """Config keys whose value differs between runs, in config order (the sweep's axes)."""
    keys: list[str] = []
    for flat in flat_configs:
        keys += [k for k in flat if k not in keys]
    sentinel = object()
    return [
        k for k in keys
        if not _excluded(k) and len({repr(f.get(k, sentinel)) for f in flat_configs}) > 1
    ]


def axis_value(key: str, value: Any) -> Any:
    """What a cell shows: named background groups and prompt combinations instead of raw lists."""
    if key == "model.background_queries":
        return runs.background_name(value)
    if key == "model.visual_prompts":
        return runs.prompts_name(value)
    return value


def build_rows(results: Sequence[dict[str, Any]], root: Path, against: str | None = None) -> tuple[list[str], list[dict]]:
    """(axes, rows): one row per run with its axis values, metrics, image count and run dir."""
    flats = [runs.flatten(r.get("config") or {}) for r in results]
    axes = find_axes(flats)
    reported = None
    if against:
        from carbench.regress import load_reported

        reported = load_reported(against)
    with_filter = any(r.get("filter") for r in results)  # semantic runs since the filter diagnostics exist
    rows = []
    for res, flat in zip(results, flats, strict=True):
        row: dict[str, Any] = {a: axis_value(a, flat.get(a)) for a in axes}
        for m in METRICS:
            row[m] = runs.metric_value(res, m)
        if with_filter:
            for key, column in runs.FILTER_COLUMNS.items():
                value = runs.metric_value(res, f"filter.{key}")
                row[column] = int(value) if value is not None and key.startswith("wrongly") else value
        n = runs.item_counts(res)
        row["images"] = f"{n.get('evaluated')}/{n.get('split_size')}"
        if reported is not None:
            from carbench.regress import match_entries

            hits = match_entries(res, reported)
            row["paper"] = hits[0]["value"] if hits else None
            row["paper row"] = f"{hits[0]['table']}: {hits[0]['row']}" if hits else ""
        try:
            row["run"] = str(Path(res["run_dir"]).relative_to(root))
        except ValueError:
            row["run"] = res["run_dir"]
        rows.append(row)
    return axes, rows


def _cell(v: Any, is_axis: bool = False, digits: int = 2) -> str:
    """Axis values as configured (0.3, null); numbers the run produced with `digits` decimals; missing as –."""
    if is_axis:
        return runs.format_value(v)
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def failed_section(failed: list[dict[str, str]]) -> str:
    """Markdown list of the jobs that left no usable results.json ('' when none): never dropped silently."""
    if not failed:
        return ""
    lines = [f"\n\n**{len(failed)} failed job(s)** (not in the table):\n"]
    lines += [f"- `{f['dir']}` ({f['overrides'] or 'no overrides'}): {f['reason']}" for f in failed]
    return "\n".join(lines)


def to_markdown(axes: list[str], rows: list[dict]) -> str:
    if not rows:
        return "(no runs)"
    cols = list(rows[0])
    head = [AXIS_LABELS.get(c, c) for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    fractions = set(runs.FILTER_COLUMNS.values())  # the filter diagnostics are fractions in [0, 1]
    lines += ["| " + " | ".join(_cell(r[c], c in axes, 3 if c in fractions else 2) for c in cols) + " |"
              for r in rows]
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else runs.format_value(v) if not isinstance(v, float) else v)
                        for k, v in r.items()})


def numeric_axes(axes: list[str], rows: list[dict]) -> list[str]:
    def num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    return [a for a in axes if all(num(r[a]) for r in rows)]


def plot(path: Path, axes: list[str], rows: list[dict], metric: str = "mIoU") -> Path | None:
    """metric vs each numeric axis (one panel each), one line per combination of the other axes."""
    num_axes = numeric_axes(axes, rows)
    if not num_axes:
        return None
    try:
        import matplotlib
    except ImportError:  # a dev extra; the table and CSV do not need it
        print("note: matplotlib is not installed, so no report.png (pip install matplotlib)", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, panels = plt.subplots(1, len(num_axes), figsize=(4.5 * len(num_axes), 3.6), squeeze=False)
    for ax, x_key in zip(panels[0], num_axes, strict=True):
        others = [a for a in axes if a != x_key]
        series: dict[tuple, list[tuple[float, float]]] = {}
        for r in rows:
            if r[metric] is not None:
                series.setdefault(tuple(r[o] for o in others), []).append((r[x_key], r[metric]))
        for label, pts in series.items():
            pts.sort()
            name = ", ".join(f"{AXIS_LABELS.get(o, o).split(' ')[0]}={_cell(v, True)}"
                             for o, v in zip(others, label, strict=True))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", linewidth=1, label=name or metric)
        ax.set_xlabel(AXIS_LABELS.get(x_key, x_key))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if len(series) <= 9:
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report(root: Path, out_dir: Path | None = None, against: str | None = None, metric: str = "mIoU") -> dict:
    """Build and write the report of all runs under `root`; returns paths, axes, rows and markdown."""
    plottable = [*METRICS, *runs.FILTER_COLUMNS.values()]
    if metric not in plottable:  # checked before anything is written: a typo would otherwise end in a KeyError
        raise ValueError(f"--metric {metric!r} is not a column of the report; valid: {', '.join(plottable)}")
    root = Path(root)
    files = runs.find_results(root)
    failed = runs.failed_jobs(root)
    if not files and not failed:
        raise FileNotFoundError(f"no results.json under {root}; is it a run or multirun dir?")
    if root.is_file():  # one named file: an unreadable one is the error itself
        results = [runs.load_results(root)]
    else:
        results = []
        for f in files:  # in a tree, an unreadable results.json is one more failed job, listed
            try:
                results.append(runs.load_results(f))
            except runs.ResultsFileError as err:
                failed.append({"dir": str(f.parent), "overrides": "?", "reason": str(err)})
    axes, rows = build_rows(results, root if root.is_dir() else root.parent, against)
    out_dir = Path(out_dir) if out_dir else (root if root.is_dir() else root.parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = to_markdown(axes, rows) + failed_section(failed)
    (out_dir / "report.md").write_text(md + "\n")
    write_csv(out_dir / "report.csv", rows)
    png = plot(out_dir / "report.png", axes, rows, metric)
    return {"axes": axes, "rows": rows, "markdown": md, "failed": failed, "md": out_dir / "report.md",
            "csv": out_dir / "report.csv", "png": png}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m carbench.report", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, help="multirun dir, run dir, or a results.json")
    p.add_argument("--out", type=Path, help="where report.md/csv/png go (default: the runs dir)")
    p.add_argument("--against", help="add the reported number of each run's matching row (e.g. car_paper)")
    p.add_argument("--metric", default="mIoU", help="metric plotted (default mIoU)")
    p.add_argument("--peers", action="store_true", help="print each run next to conf/reported/peers.yaml")
    p.add_argument("--peers-file", type=Path, help="peers YAML (default conf/reported/peers.yaml)")
    args = p.parse_args(argv)
    if args.peers:
        from carbench.peers import peers_table

        files = runs.find_results(args.runs)
        if not files:
            print(f"error: no results.json under {args.runs}", file=sys.stderr)
            return 2
        try:
            tables = [peers_table(runs.load_results(f), args.peers_file) for f in files]
        except runs.ResultsFileError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        for table in tables:
            print(table)
            print()
        return 0
    try:
        out = report(args.runs, args.out, args.against, args.metric)
    except (FileNotFoundError, ValueError, runs.ResultsFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(out["markdown"])
    print(f"\naxes: {', '.join(out['axes']) or '(none: runs share one config)'}")
    print(f"written: {out['md']}  {out['csv']}" + (f"  {out['png']}" if out["png"] else ""))
    return 1 if out["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
