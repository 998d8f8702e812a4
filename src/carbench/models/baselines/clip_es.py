"""CLIP-ES alone: CaR's proposals for every query in one step, no recurrence (`model=clip_es`).

The paper's Table 2 row "without recurrence (T = 1)": 15.2 mIoU on VOC against 67.6 with it. It is
CaR with the loop cut after its first stage (`max_steps=1`, see `models/recurrent.py`): every query
keeps its CLIP-ES map whatever the classifier says, then the post-processing (dense CRF) makes the
maps exclusive. The classifier still runs once: its scores only order overlapping masks when no
CRF is used. Everything else (backbones, λ, background queries, CRF) is the CaR config, so the row
differs from CaR in exactly the recurrence.
"""

from __future__ import annotations

from typing import Any

from carbench.models.recurrent import CaR, PostProcess


def build_clip_es(cfg: dict[str, Any], postprocess: PostProcess | None, pool: Any) -> CaR:
    """CaR with max_steps=1; any other max_steps in the config is a contradiction and an error."""
    from carbench.models.factory import build_car

    steps = cfg.get("max_steps")
    if steps not in (None, 1):
        raise ValueError(f"model=clip_es is the one-step row (max_steps=1); got model.max_steps={steps}")
    return build_car({**cfg, "max_steps": 1}, postprocess, pool)
