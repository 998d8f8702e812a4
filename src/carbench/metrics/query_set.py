"""Filter diagnostics: how well CaR's recurrence picks the query set, separately from the masks.

CaR's recurrence keeps the queries whose classifier score clears θ and drops the rest. A low
mIoU can come from that filter (a present class dropped, an absent one kept) or from the masks
of the right classes; these numbers separate the two. For each image the caller gives the set of
query ids kept after every step and the set of class ids present in the ground truth; the metric
counts, per step and for the run's final output:

* ``precision`` = kept ∧ present / kept and ``recall`` = kept ∧ present / present, both summed over
  images before dividing (micro average, so an image with three objects weighs three times);
* ``exact`` = the fraction of images whose kept set equals the present set;
* ``wrongly_dropped`` = present classes missing from the kept set, ``wrongly_kept`` = absent classes
  in it (totals over images).

Steps are carried forward: an image whose recurrence stopped after step t counts with its final
set at every later step (that is what further steps would keep: the stop rule fires exactly when
a step keeps every query it was given). So every row covers every image, and row s reads "what
if the loop had been cut after s steps".

Every state is a sum (`dist_reduce_fx="sum"`), so torchrun shards and `merge_state` combine
exactly, like `SemanticIoU`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from numbers import Integral
from typing import Any

import torch
from torchmetrics import Metric

#: Count states, one entry per step (plus the final output in their `final_*` twins).
_COUNTS: tuple[str, ...] = ("true_kept", "wrongly_kept", "wrongly_dropped", "exact", "images")


def _as_id_set(ids: Iterable[int], name: str) -> frozenset[int]:
    """A set of non-negative int ids, or a TypeError / ValueError naming `name` and the bad values."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise TypeError(f"{name} must be a set (or list) of int ids, got {type(ids).__name__}: {ids!r}")
    out = set()
    for v in ids:
        if isinstance(v, bool) or not isinstance(v, Integral):  # numpy ints are Integral too
            raise TypeError(f"{name} must hold int ids, got {v!r} ({type(v).__name__}) in {ids!r}")
        v = int(v)
        if v < 0:
            raise ValueError(f"{name} must hold non-negative ids, got {v} in {ids!r}")
        out.add(v)
    return frozenset(out)


class QuerySetDiagnostics(Metric):
    """Precision / recall / exact match of the kept query set against the GT classes, per step.

    Args:
        max_steps: how many step rows to keep (state size must be fixed for distributed sync).
            An image with more steps raises a ValueError naming this argument.
        **kwargs: forwarded to `torchmetrics.Metric`.

    `update(kept_per_step, present, final=None)` adds one image: `kept_per_step[s]` is the set of
    query ids kept after step s+1, `present` the ids of the classes in its ground truth (without
    background / ignore), `final` the set the run outputs (default: the last step's kept set; a
    run cut by `model.max_steps` outputs the last step's *input* set, unfiltered, so pass that).

    `compute()` returns ``{"final": row, "per_step": [row, …]}`` where a row is ``{"step",
    "images", "precision", "recall", "exact", "wrongly_dropped", "wrongly_kept"}`` (precision,
    recall and exact as fractions in [0, 1], NaN when undefined; the two counts as ints).
    ``per_step`` has one row per step up to the longest recurrence seen.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, max_steps: int = 16, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
        self.max_steps = max_steps
        for name in _COUNTS:
            self.add_state(name, default=torch.zeros(max_steps, dtype=torch.int64), dist_reduce_fx="sum")
            self.add_state(f"final_{name}", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        # images whose recurrence ran exactly s+1 steps (tells how far the per-step rows are observed)
        self.add_state("steps_run", default=torch.zeros(max_steps, dtype=torch.int64), dist_reduce_fx="sum")

    @staticmethod
    def _counts(kept: frozenset[int], present: frozenset[int]) -> tuple[int, int, int, int]:
        return len(kept & present), len(kept - present), len(present - kept), int(kept == present)

    def update(
        self,
        kept_per_step: Sequence[Iterable[int]],
        present: Iterable[int],
        final: Iterable[int] | None = None,
    ) -> None:
        """Add one image (see the class docstring for the arguments)."""
        if isinstance(kept_per_step, (str, bytes)) or not isinstance(kept_per_step, Sequence):
            raise TypeError(f"kept_per_step must be a list of sets (one per step), got {type(kept_per_step).__name__}")
        if len(kept_per_step) == 0:
            raise ValueError("kept_per_step is empty: pass the kept query ids of at least one step")
        if len(kept_per_step) > self.max_steps:
            raise ValueError(
                f"the image ran {len(kept_per_step)} steps but QuerySetDiagnostics(max_steps={self.max_steps}) "
                f"keeps {self.max_steps} step rows; construct it with max_steps ≥ {len(kept_per_step)}"
            )
        steps = [_as_id_set(k, f"kept_per_step[{s}]") for s, k in enumerate(kept_per_step)]
        truth = _as_id_set(present, "present")
        out = steps[-1] if final is None else _as_id_set(final, "final")
        rows = torch.zeros(len(_COUNTS), self.max_steps, dtype=torch.int64)
        for s in range(self.max_steps):
            kept = steps[min(s, len(steps) - 1)]
            rows[:4, s] = torch.tensor(self._counts(kept, truth))
        rows[4] = 1
        for name, row in zip(_COUNTS, rows, strict=True):
            setattr(self, name, getattr(self, name) + row.to(self.images.device))
        for name, value in zip(_COUNTS, (*self._counts(out, truth), 1), strict=True):
            setattr(self, f"final_{name}", getattr(self, f"final_{name}") + value)
        self.steps_run[len(steps) - 1] += 1

    @staticmethod
    def _row(step: int | None, tk: int, wk: int, wd: int, exact: int, images: int) -> dict[str, Any]:
        nan = float("nan")
        return {
            "step": step,
            "images": images,
            "precision": tk / (tk + wk) if tk + wk else nan,
            "recall": tk / (tk + wd) if tk + wd else nan,
            "exact": exact / images if images else nan,
            "wrongly_dropped": wd,
            "wrongly_kept": wk,
        }

    def compute(self) -> dict[str, Any]:
        """The final row and one row per step up to the longest recurrence seen (see class docstring)."""
        ran = torch.nonzero(self.steps_run).flatten()
        n_rows = int(ran.max()) + 1 if len(ran) else 0
        per_step = []
        for s in range(n_rows):
            tk, wk, wd, ex, n = (int(getattr(self, name)[s]) for name in _COUNTS)
            per_step.append(self._row(s + 1, tk, wk, wd, ex, n))
        tk, wk, wd, ex, n = (int(getattr(self, f"final_{name}")) for name in _COUNTS)
        return {"final": self._row(None, tk, wk, wd, ex, n), "per_step": per_step}
