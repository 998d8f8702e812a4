"""A run next to other methods' numbers (conf/reported/peers.yaml), flagging protocol differences.

Peer numbers come from papers run under other evaluation protocols (SCLIP-style sliding-window
mmseg inference at a fixed short side, vs CaR's native-resolution single pass), so a table that
mixes them must say so on every row where the protocol is not the run's. The peers file schema:

    entries:
      - {method: str, dataset: str, mIoU: float, protocol: str, source: str, kind: P|S, model: str (optional)}

`dataset` uses carbench dataset names (voc, voc20, context, context59, coco_object …); `protocol`
is `car`, `sclip` or free text; `kind` is P (primary: read from the method's own paper, README or abstract) or S (secondary: a
third-party transcription of the paper's table, consistent with another source);
`model`, when given, is the carbench model that reimplements the method (a run of it is flagged).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from carbench import runs

PEERS_FILE = runs.CONF_DIR / "reported" / "peers.yaml"
OUR_PROTOCOL = "car"
REQUIRED = ("method", "dataset", "mIoU", "protocol", "source", "kind")


def load_peers(path: Path | None = None) -> list[dict[str, Any]]:
    path = Path(path or PEERS_FILE)
    if not path.exists():
        raise FileNotFoundError(f"peers file {path} not found (schema: carbench/peers.py docstring)")
    entries = (yaml.safe_load(path.read_text()) or {}).get("entries") or []
    for i, e in enumerate(entries):
        missing = [k for k in REQUIRED if k not in e]
        if missing:
            raise ValueError(f"{path} entry {i} ({e.get('method')!r}) lacks {', '.join(missing)}")
        if e["kind"] not in ("P", "S"):
            raise ValueError(f"{path} entry {i}: kind must be P or S, got {e['kind']!r}")
    return entries


def protocol_note(entry: dict[str, Any], ours: str = OUR_PROTOCOL) -> str:
    """Empty when the peer was measured like this run (`ours`: the run's model.protocol.name), else what differs."""
    proto = str(entry.get("protocol") or "").strip()
    if proto.lower().split()[0:1] == [ours.lower()]:
        return ""
    return f"⚠ protocol differs: {proto or 'unknown'} (this run: {ours})"


def same_method_note(entry: dict[str, Any], model: str) -> str:
    """Entries may name the carbench model that reimplements them (`model: reco`); flag them for such a run."""
    return f"same method as this run (model={model})" if entry.get("model") == model else ""


def metric_rule_note(results: dict[str, Any]) -> str:
    """The run's own metric rule when it is not the community (mmseg) one."""
    rule = results.get("metric_rule") or {}
    notes = []
    if rule.get("reduction") not in (None, "mmseg"):
        notes.append(f"mIoU over {rule['reduction']} classes")
    if rule.get("pred_ignore") == "drop":
        notes.append("'no class' predictions dropped (CaR's lenient rule)")
    return "; ".join(notes)


def peers_table(results: dict[str, Any], peers_file: Path | None = None) -> str:
    """Markdown: this run, then every peer entry on the same dataset (best first)."""
    dataset = runs.dataset_key(results)
    s = runs.paper_settings(results)
    ours = runs.metric_value(results, "mIoU")
    proto = str(s.get("protocol") or OUR_PROTOCOL)
    rows = [("**this run**", ours, proto, "S", results.get("run_dir", ""), metric_rule_note(results))]
    same = [e for e in load_peers(peers_file) if str(e["dataset"]) == dataset]
    for e in sorted(same, key=lambda e: -float(e["mIoU"])):
        note = "; ".join(n for n in (same_method_note(e, s["model"]), protocol_note(e, proto)) if n)
        rows.append((e["method"], float(e["mIoU"]), e["protocol"], e["kind"], e["source"], note))
    if s["model"] in ("car", "clip_es"):
        head = (f"### {dataset}: this run ({s['proposal']} + {s['classifier']}, η={s['eta']} θ={s['theta']} "
                f"λ={s['lambda']}, {s['postprocess']}) vs peers")
    else:
        head = f"### {dataset}: this run (model={s['model']}, {s['postprocess']}) vs peers"
    lines = [head, "", "| method | mIoU | protocol | kind | source | note |", "|---|---|---|---|---|---|"]
    for method, miou, proto, kind, src, note in rows:
        cell = "–" if miou is None else f"{miou:.1f}"
        lines.append(f"| {method} | {cell} | {proto} | {kind} | {src} | {note} |")
    if len(rows) == 1:
        lines.append(f"\n(no peer entries for dataset {dataset!r} in {peers_file or PEERS_FILE})")
    if runs.is_partial(results):
        n = results.get("num_images") or {}
        lines.append(f"\n⚠ this run scored {n.get('evaluated')} of {n.get('split_size')} images: not comparable")
    return "\n".join(lines)
