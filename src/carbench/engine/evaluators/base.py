"""What a task contributes to the one evaluation loop: an `Evaluator`, in the style of detectron2's
`DatasetEvaluator`.

The loop (engine/loop.py) owns everything every task shares: loading, resume, sharding, progress
records, timing, the failure guard and the result file's common sections. An evaluator owns what
differs per task:

* ``reset()`` — a fresh metric state;
* ``process(sample, prediction) -> record`` — score one item, write its optional outputs
  (prediction PNG, overlay) and return the task's fields of its progress record (the metric-state
  delta, so a resumed run can rebuild the state without the masks);
* ``replay(record)`` — add a record written by an earlier attempt (resume) to the state;
* ``evaluate() -> metrics`` — the ``metrics`` section (a collective under torchrun: every rank calls it);
* ``summarise(records) -> dict`` — the task's other sections of results.json (dataset description,
  per-class IoU, filter diagnostics, per-item entries …), from the synced state and every record.

A new task (say, instance segmentation) is one evaluator file plus its entry in `build_evaluator`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from carbench.types import Prediction, Sample


@dataclass(frozen=True)
class Outputs:
    """The optional per-item files a run writes: prediction PNGs and overlays of the first items.

    `overlay_ids` names the items (by sample id) that get an overlay, so `process` needs nothing but
    the sample to decide.
    """

    run_dir: Path
    save_predictions: bool = False
    overlay_ids: frozenset[str] = frozenset()

    @property
    def pred_dir(self) -> Path:
        return self.run_dir / "predictions"

    def overlay_path(self, sample_id: str) -> Path | None:
        return self.run_dir / "overlays" / f"{sample_id}.png" if sample_id in self.overlay_ids else None


class Evaluator(ABC):
    """One task's metric, records and result sections (module docstring).

    Class attributes:
        task: ``semantic`` or ``referring`` (written to results.json).
        primary_metric: the metrics key `evaluate.py` prints and returns to Hydra sweepers.
    """

    task: str = ""
    primary_metric: str = "mIoU"

    #: what one item is: ``image``, ``expression`` or ``ref`` (results.json ``unit``)
    unit: str = "image"

    @abstractmethod
    def reset(self) -> None:
        """Drop every accumulated state."""

    @abstractmethod
    def process(self, sample: Sample, prediction: Prediction) -> dict[str, Any]:
        """Score one item, write its outputs; return the task's fields of its progress record."""

    @abstractmethod
    def replay(self, record: dict[str, Any]) -> None:
        """Add an ``ok`` record of an earlier attempt to the state (exactly what `process` added)."""

    @abstractmethod
    def evaluate(self) -> dict[str, Any]:
        """The ``metrics`` section over every item seen (synced across torchrun ranks)."""

    @abstractmethod
    def summarise(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The task's own sections of results.json, given every rank's records in index order.

        Called after `evaluate`, so the synced state is available.
        """

    @abstractmethod
    def per_item(self, record: dict[str, Any]) -> dict[str, Any]:
        """The task's fields of an ``ok`` record's ``per_item`` entry (besides id, steps, kept)."""

    @abstractmethod
    def to(self, device: torch.device) -> Evaluator:
        """Move the metric states to `device` (nccl gathers CUDA tensors only)."""

    def describe(self) -> str:
        """The progress bar's title."""
        return f"{self.task} evaluation"

    def count_line(self, results: dict[str, Any]) -> str:
        """The line printed at the end: expected / evaluated / failed items."""
        c = results["num_items"]
        return f"{self.unit}s: expected {c['expected']}, evaluated {c['evaluated']}, failed {c['failed']}"
