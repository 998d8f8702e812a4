"""What makes two attempts the same run: the config that changes results, and the data it ran on.

The progress log's header stores both, so a resume can be refused with the reason spelt out (the
config keys that differ, or how the split changed) instead of two opaque hashes.

Data fingerprint (cheap on purpose, it is taken at every start): the split's ids in order, plus the
size and modification time (ns) of every image and label file the adapter can name
(`image_path(i)` / `label_path(i)`). Re-sorting, adding or removing ids, or rewriting a file
changes it; copying a dataset without preserving times (plain `cp -r`) changes it too, which is
the safe side: such a resume is refused and names the change. Adapters without file paths
(e.g. RefCOCO expressions) are fingerprinted by their ids alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

#: keys that do not change what a run computes, so they may differ between a run and its resume
NON_SEMANTIC_KEYS = (
    "resume", "resume_search_dir", "num_workers", "threads", "on_error", "logger", "overlays", "dist", "sweep",
)
MAX_SHOWN = 5


def semantic_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that decides the numbers."""
    return {k: v for k, v in cfg.items() if k not in NON_SEMANTIC_KEYS}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_stats(dataset: Any, n: int) -> str | None:
    paths = []
    for getter in ("image_path", "label_path"):
        fn = getattr(dataset, getter, None)
        if callable(fn):
            paths += [fn(i) for i in range(n)]
    if not paths:
        return None
    stats = []
    for p in paths:
        try:
            st = os.stat(p)
            stats.append((str(p), st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((str(p), None, None))
    return _digest(stats)


def data_fingerprint(dataset: Any, n: int) -> dict[str, Any]:
    """The ids of the first `n` items of the split (kept, to say what changed) and a digest of their files."""
    ids = [str(i) for i in list(dataset.ids)[:n]]
    return {"ids": ids, "files": _file_stats(dataset, n)}


def run_hash(cfg: dict[str, Any], data: dict[str, Any] | None = None) -> str:
    """16-hex digest of the semantic config and (when given) the data fingerprint."""
    payload: dict[str, Any] = {"config": semantic_config(cfg)}
    if data is not None:
        payload["data"] = data
    return _digest(payload)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'key: old → new' for every dotted key whose value differs."""
    a, b = _flat(semantic_config(old)), _flat(semantic_config(new))
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            out.append(f"{key}: {_short(a.get(key, '<absent>'))} → {_short(b.get(key, '<absent>'))}")
    return out


def _short(v: Any) -> str:
    text = json.dumps(v, default=str) if not isinstance(v, str) else v
    return text if len(text) <= 60 else text[:57] + "…"


def data_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """How the split changed: ids added / removed, order changed, or files rewritten."""
    before, after = list(old.get("ids") or []), list(new.get("ids") or [])
    out = []
    removed = [i for i in before if i not in set(after)]
    added = [i for i in after if i not in set(before)]
    if removed:
        out.append(f"{len(removed)} id(s) no longer in the split ({', '.join(removed[:MAX_SHOWN])})")
    if added:
        out.append(f"{len(added)} id(s) new in the split ({', '.join(added[:MAX_SHOWN])})")
    if not removed and not added and before != after:
        moved = [f"{i}: {a} → {b}" for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
        out.append(f"the split was re-ordered (index {'; '.join(moved[:MAX_SHOWN])})")
    if not out and old.get("files") != new.get("files"):
        out.append("image or label files were modified (size or modification time changed)")
    return out


def header(cfg: dict[str, Any], data: dict[str, Any], cfg_hash: str) -> dict[str, Any]:
    """The progress log's first line: the hash, and what it was computed from (for the diff on refusal)."""
    return {"header": True, "config_hash": cfg_hash, "config": semantic_config(cfg), "data": data}


def explain_mismatch(old_header: dict[str, Any], new_header: dict[str, Any]) -> str:
    """One sentence on why two headers differ: config keys, then data changes; hashes only for old logs."""
    parts: list[str] = []
    if "config" in old_header:
        diff = config_differences(old_header["config"], new_header["config"])
        if diff:
            parts.append("config keys differ: " + "; ".join(diff[:MAX_SHOWN])
                         + (f" (and {len(diff) - MAX_SHOWN} more)" if len(diff) > MAX_SHOWN else ""))
    if "data" in old_header:
        parts += ["the dataset changed: " + d for d in data_differences(old_header["data"], new_header["data"])]
    if not parts:
        parts.append(f"config hash {old_header.get('config_hash')} vs {new_header.get('config_hash')}")
    return "; ".join(parts)
