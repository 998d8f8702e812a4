"""Read the toy benchmark's golden file (`carbench.toy.golden` format) as regress entries.

That file lists rows as `{command: "python evaluate.py OVERRIDES", mIoU: …}` plus one
`tolerance_mIoU` (a drop below golden − tolerance fails; gains are fine). Each row becomes an entry
constrained by its overrides; a key that some row overrides is pinned, in the rows that leave it
alone, to the default of the benchmark's config, so the plain `car` row never matches a Grad-CAM run.
"""

from __future__ import annotations

import shlex
from typing import Any

import yaml

from carbench import runs


def parse_overrides(command: str) -> dict[str, Any]:
    """`python evaluate.py model.max_steps=1 limit=30` → {'model.max_steps': 1, 'limit': 30}."""
    out: dict[str, Any] = {}
    for tok in shlex.split(command):
        if "=" in tok and not tok.startswith("-"):
            key, value = tok.split("=", 1)
            out[key.lstrip("+~")] = yaml.safe_load(value) if value else None
    return out


def config_defaults(dataset: str, keys: set[str]) -> dict[str, Any]:
    """Values of `keys` in the composed config of `dataset=<dataset>` (Hydra compose, no run)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(runs.CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"dataset={dataset}"])
    flat = runs.flatten(OmegaConf.to_container(cfg, resolve=False))  # type: ignore[arg-type]
    return {k: flat.get(k) for k in keys}


def rows_to_entries(doc: dict[str, Any]) -> dict[str, Any]:
    """A golden-rows document → the regress schema (entries with settings, direction `min`)."""
    dataset = str(doc.get("benchmark") or "toy")
    rows = doc.get("rows") or {}
    overrides = {name: parse_overrides(str(row.get("command") or "")) for name, row in rows.items()}
    pinned = set().union(*overrides.values()) if overrides else set()
    defaults = config_defaults(dataset, pinned) if pinned else {}
    entries = []
    for name, row in rows.items():
        settings = {**defaults, **overrides[name]}
        if doc.get("split"):
            settings["split"] = doc["split"]
        entries.append({"table": f"{dataset} golden", "row": name, "dataset": dataset, "settings": settings,
                        "value": row["mIoU"], "note": row.get("what")})
    return {"name": dataset, "source": "golden numbers (carbench.toy.golden)", "metric": "mIoU",
            "tol": float(doc.get("tolerance_mIoU", 0.5)), "direction": "min", "entries": entries}
