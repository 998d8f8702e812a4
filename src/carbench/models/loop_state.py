"""One image's place in CaR's recurrence, so one driver can advance many images step by step.

`CaR.run_batch` (models/recurrent.py) owns the CLIP calls; this class owns every per-image rule of
the loop: which queries are alive, the step number, when a step can reuse the last one, the two
all-empty fallbacks, the keep rule (strict > θ, never empty), the stop rule and the trace. Keeping
the rules here, once, is what lets a batch of images, each at its own step, follow exactly the
path each would follow alone (the rules themselves are described in models/recurrent.py).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np

StepKey = Callable[[list[str], int], Hashable | None]  # (alive names, step) → proposal key or None


@dataclass(frozen=True)
class StepRules:
    """The recurrence's settings, shared by every image of a run."""

    theta: float
    max_steps: int | None
    reuse_unchanged_step: bool
    fallback_unfiltered_quirk: bool


@dataclass
class LoopResult:
    """What the recurrence hands on: alive indices, the maps for the post-processing, scores, trace."""

    alive: list[int]
    maps: np.ndarray
    scores: np.ndarray
    trace: list[dict]


class LoopState:
    """The recurrence of one image, advanced by a driver: `begin_step`, then `take` (or reuse), until `done`.

    A step either needs new proposals (`begin_step` returns True: the driver proposes for `names`
    at `step`, passes the maps through `fallback_before_prompting`, prompts and scores them, and
    calls `take`) or reuses the previous step (`begin_step` returns False: the driver calls
    `take_reused`).
    """

    def __init__(self, queries: Sequence[str], rules: StepRules, key: StepKey) -> None:
        self.queries = list(queries)
        self.rules = rules
        self.key = key
        self.alive = list(range(len(self.queries)))
        self.prev_kept = 0  # the stop rule compares each stage's kept count with the one before (from 0)
        self.prev_maps: np.ndarray | None = None  # clean fallback: previous stage's maps of the survivors
        self.prev_out: np.ndarray | None = None  # official fallback: previous stage's maps as handed on
        self.trace: list[dict] = []
        self.step = 0
        self.last: tuple[Hashable | None, np.ndarray, np.ndarray, list[np.ndarray]] | None = None
        self._key: Hashable | None = None
        self.result: LoopResult | None = None

    @property
    def done(self) -> bool:
        """True once the stop rule (or the step cap) has ended this image's recurrence."""
        return self.result is not None

    @property
    def names(self) -> list[str]:
        """The alive queries' texts, in query order: what this step proposes and scores."""
        return [self.queries[i] for i in self.alive]

    def begin_step(self) -> bool:
        """Start the next step; True when it needs new proposals, False when the last step's are reused.

        Reused only when the proposer's key says the maps would be recomputed bit for bit (all
        queries survived and nothing else changed, e.g. no quirk-A template switch): the scores would
        then be identical too.
        """
        if self.done:
            raise RuntimeError("begin_step on an image whose recurrence has ended")
        self.step += 1
        self._key = self.key(self.names, self.step)
        reuse = (self.rules.reuse_unchanged_step and self.last is not None and self._key is not None
                 and self.last[0] == self._key)
        return not reuse

    def fallback_before_prompting(self, maps: np.ndarray) -> np.ndarray:
        """Clean fallback (`fallback_unfiltered_quirk=False`): an all-empty stage prompts the survivors'
        own maps of the previous stage instead; otherwise the maps unchanged."""
        if not self.rules.fallback_unfiltered_quirk and self.prev_maps is not None and not maps.any():
            return self.prev_maps
        return maps

    def take_reused(self) -> bool:
        """Finish a step that reuses the previous step's maps, prompts and scores; True when done."""
        assert self.last is not None
        _, maps, scores, prompted = self.last
        return self.take(maps, prompted, scores, {"cam": 0.0, "prompts": 0.0, "classifier": 0.0})

    def take(self, maps: np.ndarray, prompted: list[np.ndarray], scores: np.ndarray, times: dict[str, float]) -> bool:
        """Record this step's maps, prompted images and scores; apply the keep and stop rules. True when done."""
        self.last = (self._key, maps, scores, prompted)
        out = maps
        if self.rules.fallback_unfiltered_quirk and self.prev_out is not None and not maps.any():
            out = self.prev_out  # official fallback: only what is handed on changes
        self.prev_out = out
        keep = scores > self.rules.theta
        if not keep.any():
            keep[int(np.argmax(scores))] = True
        self.trace.append(
            {
                "step": self.step,
                "alive": list(self.alive),
                "scores": [float(s) for s in scores],
                "kept": [a for a, k in zip(self.alive, keep, strict=True) if k],
                "maps": maps,  # n×H×W proposals and the prompted images the classifier saw:
                "prompted": prompted,  # what the demo's and overlays' per-step panels draw
                "time": dict(times),
            }
        )
        n_kept = int(keep.sum())
        converged = n_kept == self.prev_kept  # every alive query survived again
        if converged or (self.rules.max_steps is not None and self.step >= self.rules.max_steps):
            self.result = LoopResult(list(self.alive), out, scores, self.trace)
            return True
        self.prev_kept = n_kept
        self.alive = [a for a, k in zip(self.alive, keep, strict=True) if k]
        self.prev_maps = maps[keep]
        return False
