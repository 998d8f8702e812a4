"""A user's own CaR parts, defined outside carbench (imported by tests/test_plugins.py by module path).

`BoxProposer` claims a centred box per query; `sparkle` is a visual prompt registered from here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from carbench.models.prompts import PromptContext, register_prompt

#: every (queries, background, step) a BoxProposer was asked for, and every sparkle call (image means)
CALLS: list[tuple[list[str], list[str], int]] = []
SPARKLES: list[float] = []


class BoxProposer:
    """Query k gets the box rows k·margin…; takes the pooled backbone and a key of its own."""

    def __init__(self, backbone, margin: int) -> None:
        self.backbone, self.margin = backbone, margin

    def propose(self, image: np.ndarray, queries: Sequence[str], background: Sequence[str], step: int) -> np.ndarray:
        CALLS.append((list(queries), list(background), step))
        h, w = image.shape[:2]
        maps = np.zeros((len(queries), h, w), np.float32)
        for k in range(len(queries)):
            maps[k, self.margin * (k + 1) : h - self.margin, self.margin : w - self.margin] = 1.0
        return maps


@register_prompt("sparkle", order=3.5)  # after circle, before rectangle
def sparkle(out: np.ndarray, mask: np.ndarray, ctx: PromptContext) -> np.ndarray:
    SPARKLES.append(float(out.mean()))
    out = out.copy()
    out[mask] = 255 - out[mask]
    return out


class LengthScorer:
    """Scores a query 0.9 when its text is longer than 5 characters, else 0.1 (no backbone needed)."""

    def score(self, prompted, queries, templates=None) -> np.ndarray:
        return np.array([0.9 if len(q) > 5 else 0.1 for q in queries], np.float32)
