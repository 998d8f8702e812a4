"""`model.fidelity`: one key that sets every official-code switch at once.

The released CaR code differs from what a reader of the paper would implement in a handful of
small ways (docs/method.md §5.2). Each is a boolean key in conf/model/car.yaml whose default is
``null``: null means "follow `model.fidelity`" (``official`` → True, reproduce the released code;
``clean`` → False, the paper reader's version). An explicit true/false always wins over the
fidelity, so ``model.fidelity=clean model.box_end_quirk=true`` isolates one behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Values of `model.fidelity`: the switch value each one implies.
FIDELITIES: dict[str, bool] = {"official": True, "clean": False}

#: The switches `model.fidelity` governs, with what turning each one on reproduces.
FIDELITY_SWITCHES: dict[str, str] = {
    "box_end_quirk": "CLIP-ES boxes lose their last patch column/row at the grid's right/bottom edge",
    "centroid_trunc_quirk": "circle/rectangle prompts centred at the truncated (not rounded) centroid",
    "cam_pil_resize_quirk": "CAM input resized as a uint8 PIL image (bicubic), not as floats",
    "pos_embed_fp16_quirk": "positional embeddings rounded to fp16 (precision only)",
    "crf_one_hot_quirk": "trailing queries that win no CRF pixel lose their mask and score",
    "fallback_unfiltered_quirk": "an all-empty stage hands on the previous stage's unfiltered maps",
}


def resolve_fidelity(cfg: Mapping[str, Any]) -> dict[str, bool]:
    """The value of every switch in `FIDELITY_SWITCHES` for a model config.

    A switch given as true/false keeps its value; a missing or null one takes the fidelity's.
    Anything else (a string, a number, an unknown fidelity) is a ValueError naming the key.
    """
    fidelity = cfg.get("fidelity", "official")
    if fidelity is None:
        fidelity = "official"
    if fidelity not in FIDELITIES:
        raise ValueError(
            f"unknown model.fidelity {fidelity!r}; valid: {', '.join(FIDELITIES)} "
            "(official = the released code's behaviours, clean = the paper reader's)"
        )
    resolved: dict[str, bool] = {}
    for key in FIDELITY_SWITCHES:
        value = cfg.get(key)
        if value is None:
            resolved[key] = FIDELITIES[fidelity]
        elif isinstance(value, bool):
            resolved[key] = value
        else:
            raise ValueError(
                f"model.{key} must be true, false or null (null = follow model.fidelity), got {value!r}"
            )
    return resolved
