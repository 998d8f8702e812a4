"""Regression gate: `python -m carbench.regress RESULTS --against car_paper [--tol 0.5]`.

Matches each run (a results.json, or every one under a dir) to the rows of a reported-numbers file
(conf/reported/<name>.yaml, schema in conf/reported/README.md) whose dataset and settings describe
it, prints ours / reported / delta per row, and exits non-zero on a miss:

    0  every run matched at least one row and every matched row is within tolerance
    1  a matched row is off by more than the tolerance, or a run matches no row
    2  the inputs cannot be compared (file missing, partial run without --allow-partial, bad YAML)

A partial run (limit=N, failed images) is refused by default: its number is not the split's
(rows that pin `limit` themselves, like a golden subset, are the exception).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from carbench import runs

REPORTED_DIR = runs.CONF_DIR / "reported"
ENTRY_KEYS = {"table", "row", "column", "dataset", "base", "settings", "value", "metric", "tol", "direction",
              "matchable", "note"}
DIRECTIONS = ("both", "min")  # both: |ours − reported| ≤ tol; min: only a drop below reported − tol fails


class ReportedError(ValueError):
    """The reported-numbers file is malformed."""


def reported_path(against: str) -> Path:
    """`car_paper` → conf/reported/car_paper.yaml; a path to a .yaml is used as is."""
    p = Path(against)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return REPORTED_DIR / f"{against}.yaml"


def load_reported(against: str) -> dict[str, Any]:
    """Load and check a reported-numbers file; every entry gets its full constraint set (base + settings)."""
    path = reported_path(against)
    if not path.exists():
        known = sorted(p.stem for p in REPORTED_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"reported numbers {path} not found; known: {', '.join(known)}")
    doc = yaml.safe_load(path.read_text()) or {}
    if "rows" in doc and "entries" not in doc:  # golden file of carbench.toy.golden
        from carbench.golden_rows import rows_to_entries

        doc = rows_to_entries(doc)
    bases = doc.get("bases") or {}
    entries = []
    for i, e in enumerate(doc.get("entries") or []):
        where = f"{path} entry {i} ({e.get('table')}: {e.get('row')})"
        unknown = set(e) - ENTRY_KEYS
        if unknown:
            raise ReportedError(f"{where}: unknown keys {sorted(unknown)}; valid: {sorted(ENTRY_KEYS)}")
        for key in ("table", "row", "dataset", "value"):
            if key not in e:
                raise ReportedError(f"{where}: missing '{key}'")
        if e.get("base") is not None and e["base"] not in bases:
            raise ReportedError(f"{where}: base {e['base']!r} is not one of {sorted(bases)}")
        constraints = {**(bases.get(e.get("base")) or {}), **(e.get("settings") or {})}
        direction = e.get("direction", doc.get("direction", "both"))
        if direction not in DIRECTIONS:
            raise ReportedError(f"{where}: direction must be one of {DIRECTIONS}, got {direction!r}")
        entries.append({
            **e,
            "constraints": constraints,
            "metric": e.get("metric") or doc.get("metric") or "mIoU",
            "tol": e.get("tol", doc.get("tol", 0.5)),
            "direction": direction,
            "matchable": e.get("matchable", True),
            "value": float(e["value"]),
        })
    return {"name": doc.get("name") or path.stem, "source": doc.get("source"), "path": path, "entries": entries}


def _same(ours: Any, wanted: Any) -> bool:
    if isinstance(wanted, list):
        return any(_same(ours, w) for w in wanted)
    if isinstance(wanted, bool) or isinstance(ours, bool):
        return ours is wanted
    if isinstance(wanted, (int, float)) and isinstance(ours, (int, float)):
        return math.isclose(float(ours), float(wanted), abs_tol=1e-9)
    return str(ours) == str(wanted)


def run_view(results: dict[str, Any]) -> dict[str, Any]:
    """The settings a constraint can name: paper-style names plus every dotted config key."""
    return {**runs.flatten(results.get("config") or {}), **runs.paper_settings(results)}


def match_entries(results: dict[str, Any], reported: dict[str, Any]) -> list[dict[str, Any]]:
    """Entries whose dataset and every constraint equal this run's."""
    view = run_view(results)
    dataset = runs.dataset_key(results)
    sentinel = object()
    return [
        e for e in reported["entries"]
        if e["matchable"] and str(e["dataset"]) == dataset
        and all(_same(view.get(k, sentinel), v) for k, v in e["constraints"].items())
    ]


def nearest_entries(results: dict[str, Any], reported: dict[str, Any], k: int = 3) -> list[tuple[dict, list[str]]]:
    """Rows of the same dataset with the fewest mismatching settings (explains a no-match)."""
    view = run_view(results)
    dataset = runs.dataset_key(results)
    scored = []
    for e in reported["entries"]:
        if e["matchable"] and str(e["dataset"]) == dataset:
            diff = [f"{key}: run {runs.format_value(view.get(key))} vs row {runs.format_value(v)}"
                    for key, v in e["constraints"].items() if not _same(view.get(key), v)]
            scored.append((len(diff), e, diff))
    scored.sort(key=lambda t: t[0])
    return [(e, diff) for _, e, diff in scored[:k]]


def check_run(
    results: dict[str, Any], reported: dict[str, Any], tol: float | None, allow_partial: bool = False
) -> tuple[int, list[str]]:
    """(status, lines) for one run: 0 all within tolerance, 1 a miss or no matching row, 2 refused.

    A partial run (limit=N or failed images) is refused unless every matching row pins `limit`
    itself (a golden subset row, e.g. the toy CI gate) or `allow_partial` is set.
    """
    s = runs.paper_settings(results)
    lines = [f"run: {results.get('run_dir')}",
             "  " + " ".join(f"{k}={runs.format_value(v)}" for k, v in s.items())]
    hits = match_entries(results, reported)
    if not hits:
        lines.append(f"  MISS: no row of {reported['name']} matches this run's dataset + settings.")
        datasets = sorted({str(e["dataset"]) for e in reported["entries"]})
        if s["dataset"] not in datasets:
            lines.append(f"    it has no rows for dataset {s['dataset']!r} (datasets: {', '.join(datasets)})")
        for e, diff in nearest_entries(results, reported):
            lines.append(f"    {e['table']}: {e['row']} {e.get('column') or ''} — differs in " + "; ".join(diff))
        return 1, lines
    n = runs.item_counts(results)
    if runs.is_partial(results) and not allow_partial and not all("limit" in e["constraints"] for e in hits):
        lines.append(f"  REFUSED: scored {n.get('evaluated')} of {n.get('split_size')} images ({n.get('failed', 0)} "
                     "failed); a partial run is not the split's number (--allow-partial to compare anyway)")
        return 2, lines
    lines.append("  | table | row | metric | ours | reported | delta | tol | status |")
    lines.append("  |---|---|---|---|---|---|---|---|")
    status = 0
    for e in hits:
        ours = runs.metric_value(results, e["metric"])
        t = float(tol if tol is not None else e["tol"])
        if ours is None:
            verdict, delta_txt, ours_txt, status = "MISS (metric absent)", "–", "–", 1
        else:
            delta = ours - e["value"]
            ok = (delta >= -t - 1e-9) if e["direction"] == "min" else abs(delta) <= t + 1e-9
            verdict, delta_txt, ours_txt = ("ok" if ok else "MISS"), f"{delta:+.2f}", f"{ours:.2f}"
            status = status if ok else 1
        row = e["row"] + (f" [{e['column']}]" if e.get("column") else "")
        bound = f"−{t:g}" if e["direction"] == "min" else f"±{t:g}"
        lines.append(f"  | {e['table']} | {row} | {e['metric']} | {ours_txt} | {e['value']:.2f} | {delta_txt} | "
                     f"{bound} | {verdict} |")
    return status, lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m carbench.regress", description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", type=Path, help="results.json file(s) or run/multirun dirs")
    p.add_argument("--against", default="car_paper", help="conf/reported/<NAME>.yaml or a YAML path")
    p.add_argument("--tol", type=float, help="allowed |ours − reported| in points (default: per row / file, 0.5)")
    p.add_argument("--allow-partial", action="store_true", help="compare runs that scored only part of the split")
    args = p.parse_args(argv)
    try:
        reported = load_reported(args.against)
        files = [f for r in args.results for f in runs.find_results(r)]
        if not files:
            raise FileNotFoundError(f"no results.json in {', '.join(map(str, args.results))}")
        all_results = [runs.load_results(f) for f in files]
    except (FileNotFoundError, ReportedError, yaml.YAMLError, runs.ResultsFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"against {reported['name']} ({reported['path']}): {reported.get('source') or ''}")
    worst = 0
    for res in all_results:
        status, lines = check_run(res, reported, args.tol, args.allow_partial)
        print("\n".join(lines))
        worst = max(worst, status)
    verdict = {0: "PASS", 1: "FAIL", 2: "ERROR"}[worst]
    print(f"{verdict}: {len(all_results)} run(s) against {reported['name']}")
    return worst


if __name__ == "__main__":
    sys.exit(main())
