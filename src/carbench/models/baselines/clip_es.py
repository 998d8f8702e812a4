"""CLIP-ES alone: CaR's proposals for every query in one step, no recurrence (`model=clip_es`).

The paper's Table 2 row "without recurrence (T = 1)": 15.2 mIoU on VOC against 67.6 with it. It is
CaR with the loop cut after its first stage (`max_steps=1`, see `models/recurrent.py`): every query
keeps its CLIP-ES map whatever the classifier says, then the post-processing (dense CRF) makes the
maps exclusive. The classifier still runs once: its scores only order overlapping masks when no
CRF is used. Everything else (backbones, λ, background queries, CRF) is the CaR config, so the row
differs from CaR in exactly the recurrence.

This module only turns the model config into CaR's; the model factory builds CaR from it, so the
factory depends on this module and never the other way round.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["clip_es_config"]


def clip_es_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The CaR config of the one-step row: `cfg` with max_steps=1; any other max_steps is an error."""
    steps = cfg.get("max_steps")
    if steps not in (None, 1):
        raise ValueError(f"model=clip_es is the one-step row (max_steps=1); got model.max_steps={steps}")
    return {**cfg, "max_steps": 1}
