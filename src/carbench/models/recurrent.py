"""The CaR loop: propose → prompt → classify → drop weak queries → repeat (docs/method.md §1.2).

Stop rule (official): stop when a stage keeps as many queries as the stage before it (the count
starts at 0, so there are at least two stages). A stage that keeps nothing keeps its best query
instead, so the set never empties. `max_steps` is an optional safety cap (default None, like the
paper); when the cap ends the loop the output is that stage's proposals for the queries it was
given, unfiltered — so `max_steps=1` is the paper's "no recurrence" row of Table 2.

Two official-code fallbacks are switches (docs/method.md §5.2; both default to the official code):
- `fallback_unfiltered_quirk`: when every proposal of a stage is empty, the official code keeps
  prompting and scoring that stage's own (empty) proposals, and only the maps passed on to the
  post-processing fall back to the previous stage's *unfiltered* proposals (all of that stage's
  queries, in order; nothing at stage 1). The survivors then take the first of those maps in
  order, which need not be their own. False (clean): the previous stage's maps of the surviving
  queries replace the empty ones before prompting, so each query keeps its own map.
- `crf_one_hot_quirk`: the official one-hot after the CRF drops trailing queries that win no pixel
  (quirk D, see postprocess/crf.py), so they lose their mask and their score.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from carbench.models.backbones.device import autocast, check_amp
from carbench.models.components import KeyedProposer, MaskScorer, Proposer, WarmsScorerText, WarmsText
from carbench.models.labels import assemble_semantic_labels
from carbench.models.postprocess.crf import one_hot_channels
from carbench.models.postprocess.pool import PostprocessPool
from carbench.models.prompts import prompt_images, validate_prompts
from carbench.models.queries import check_background_queries, check_query_list
from carbench.types import Prediction

PostProcess = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (image, K×H×W maps) → K×H×W masks


QUERY_HINT = "the queries come from the dataset (dataset.queries) or the caller of segment()"


def check_queries(queries: Sequence[str]) -> list[str]:
    """The query list as a list, or a ValueError naming what is wrong with it (checks in models/queries.py)."""
    return check_query_list(queries, "queries", QUERY_HINT)


def check_unit_interval(name: str, value: object) -> float:
    """`value` as a float in [0, 1], or a ValueError naming the config key and the value."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r} ({type(value).__name__})")
    if not 0.0 <= float(value) <= 1.0:  # also refuses NaN
        raise ValueError(f"{name} must be in [0, 1], got {value!r}; set it to a value between 0 and 1")
    return float(value)


class CaR:
    """CLIP as RNN for semantic segmentation; implements `Segmenter` and `TextOverridable`.

    The loop talks to its parts only through `Proposer` and `MaskScorer` (models/components.py).
    `background_queries` are this model's default background words, handed to the proposer on
    every call; `segment(..., background=…, templates=…)` replaces them (and the scorer's
    templates) for one call, which is how the stuff pass and the inference protocols use it.
    `device` is where the CLIP work runs (it decides the autocast).
    """

    def __init__(
        self,
        proposer: Proposer,
        classifier: MaskScorer,
        mask_threshold: float = 0.4,
        confidence_threshold: float = 0.6,
        visual_prompts: Sequence[str] = ("circle", "blur"),
        postprocess: PostProcess | None = None,
        max_steps: int | None = None,
        background_queries: Sequence[str] = (),
        device: torch.device | str = "cpu",
        prompt_kwargs: dict | None = None,
        reuse_unchanged_step: bool = True,
        amp: str = "auto",
        postprocess_workers: int = 0,
        fallback_unfiltered_quirk: bool = True,
        crf_one_hot_quirk: bool = True,
    ) -> None:
        mask_threshold = check_unit_interval("model.mask_threshold (η)", mask_threshold)
        confidence_threshold = check_unit_interval("model.confidence_threshold (θ)", confidence_threshold)
        if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
            raise ValueError(f"model.max_steps must be an integer ≥ 1, or null for no cap; got {max_steps!r}")
        self.proposer = proposer
        self.classifier = classifier
        self.eta = mask_threshold
        self.theta = confidence_threshold
        self.prompts = validate_prompts(visual_prompts)
        self.postprocess = postprocess
        self.max_steps = max_steps
        self.background_queries = list(background_queries)
        self.device = torch.device(device)
        self.prompt_kwargs = prompt_kwargs or {}
        self.reuse_unchanged_step = reuse_unchanged_step
        self.fallback_unfiltered_quirk = fallback_unfiltered_quirk
        self.crf_one_hot_quirk = crf_one_hot_quirk
        self.amp = check_amp(amp)
        # > 0: post-processing runs in worker processes and `segment_deferred` overlaps it with the
        # next image's CLIP work (the engine's pipelined loop); outputs are identical either way.
        self.post_pool = PostprocessPool(postprocess, postprocess_workers) if postprocess and postprocess_workers else None

    def autocast(self):
        """bf16/fp16 autocast for the CLIP work on CUDA ("auto" = bf16 there); CPU stays fp32, bit-exact."""
        return autocast(self.device, self.amp)

    def text_defaults(self) -> tuple[list[str], list[str] | None]:
        """(background words, scorer templates or None = the scorer's own) used when a call passes none."""
        return list(self.background_queries), None

    def warm_text(self, queries: Sequence[str], background: Sequence[str], templates: Sequence[str] | None) -> None:
        """Let the parts that can encode their texts up front do so (cached, so ~free after image 1)."""
        if isinstance(self.proposer, WarmsText):
            self.proposer.warm(queries, background)
        if isinstance(self.classifier, WarmsScorerText):
            self.classifier.warm_text(queries, templates)

    def _step_key(self, names: list[str], background: Sequence[str], step: int):
        """What this step's proposals depend on, or None when the proposer cannot say (never reused)."""
        if isinstance(self.proposer, KeyedProposer):
            return self.proposer.proposal_key(names, background, step)
        return None

    def run_loop(
        self,
        image: np.ndarray,
        queries: Sequence[str],
        background: Sequence[str] = (),
        templates: Sequence[str] | None = None,
    ):
        """The recurrence alone: returns (alive indices, maps, their scores, trace).

        The maps are those handed to the post-processing: one per alive query, except after the
        official all-empty fallback, which hands on the previous stage's unfiltered maps (more
        rows than alive queries; `_assemble` pairs them in order, as the official code does).
        """
        alive = list(range(len(queries)))
        prev_kept = 0
        prev_maps: np.ndarray | None = None  # clean fallback: previous stage's maps of the survivors
        prev_out: np.ndarray | None = None  # official fallback: previous stage's maps as handed on
        trace: list[dict] = []
        step = 0
        last: tuple[list[str], np.ndarray, np.ndarray, list[np.ndarray]] | None = None
        while True:
            step += 1
            names = [queries[i] for i in alive]
            key = self._step_key(names, background, step)
            t0 = time.perf_counter()
            if self.reuse_unchanged_step and last is not None and key is not None and last[0] == key:
                # The proposer says this step's maps equal the last step's (all survived, e.g. no
                # quirk-A template switch): maps and scores would be recomputed bit for bit, so reuse them.
                _, maps, scores, prompted = last
                t1 = t2 = t3 = time.perf_counter()
            else:
                maps = self.proposer.propose(image, names, background, step)
                if not self.fallback_unfiltered_quirk and prev_maps is not None and not maps.any():
                    maps = prev_maps  # clean fallback: before prompting, the survivors' own maps
                t1 = time.perf_counter()
                prompted = prompt_images(image, maps, self.prompts, self.eta, **self.prompt_kwargs)
                t2 = time.perf_counter()
                scores = self.classifier.score(prompted, names, templates)
                t3 = time.perf_counter()
            last = (key, maps, scores, prompted)
            out = maps
            if self.fallback_unfiltered_quirk and prev_out is not None and not maps.any():
                out = prev_out  # official fallback: only what is handed on changes
            prev_out = out
            keep = scores > self.theta
            if not keep.any():
                keep[int(np.argmax(scores))] = True
            trace.append(
                {
                    "step": step,
                    "alive": list(alive),
                    "scores": [float(s) for s in scores],
                    "kept": [a for a, k in zip(alive, keep, strict=True) if k],
                    "maps": maps,  # n×H×W proposals and the prompted images the classifier saw:
                    "prompted": prompted,  # what the demo's and overlays' per-step panels draw
                    "time": {"cam": t1 - t0, "prompts": t2 - t1, "classifier": t3 - t2},
                }
            )
            n_kept = int(keep.sum())
            converged = n_kept == prev_kept  # every alive query survived again
            if converged or (self.max_steps is not None and step >= self.max_steps):
                return alive, out, scores, trace
            prev_kept = n_kept
            alive = [a for a, k in zip(alive, keep, strict=True) if k]
            prev_maps = maps[keep]

    def _clip_stage(
        self, image: np.ndarray, queries: list[str], background: Sequence[str] | None, templates: Sequence[str] | None
    ):
        """Everything before post-processing: text warm-up and the recurrence."""
        queries = check_queries(queries)
        background = self.background_queries if background is None else list(background)
        check_background_queries(queries, background)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be H×W×3 uint8 RGB, got shape {image.shape} dtype {image.dtype}")
        t0 = time.perf_counter()
        with self.autocast():
            self.warm_text(queries, background, templates)
        t_text = time.perf_counter() - t0
        with self.autocast():
            alive, maps, scores, trace = self.run_loop(image, queries, background, templates)
        trace[0]["time"]["text"] = t_text
        return queries, alive, maps, scores, trace

    def _assemble(self, image, queries, alive, final, scores, trace, t_post: float) -> Prediction:
        """Scatter the final maps and scores back to the original query order.

        Maps pair with the alive queries in order; with more maps than queries (official fallback)
        the extra ones are unused, and with the CRF one-hot quirk the queries after the last one
        that won a pixel get no map, and so (official) no score either.
        """
        h, w = image.shape[:2]
        masks = np.zeros((len(queries), h, w), np.float32)
        full_scores = np.zeros(len(queries), np.float32)
        n = min(len(alive), len(final))
        if self.crf_one_hot_quirk and self.postprocess is not None:
            n = min(n, one_hot_channels(final))
        masks[alive[:n]] = final[:n]
        full_scores[alive[:n]] = scores[:n]
        trace[-1]["time"]["postprocess"] = t_post
        labels = assemble_semantic_labels(masks, full_scores)
        return Prediction(labels=labels, masks=masks, scores=full_scores, kept=list(alive), trace=trace)

    def segment(
        self,
        image: np.ndarray,
        queries: list[str],
        *,
        background: Sequence[str] | None = None,
        templates: Sequence[str] | None = None,
    ) -> Prediction:
        """One image: the recurrence, then the post-processing (None = this model's own texts)."""
        queries, alive, maps, scores, trace = self._clip_stage(image, queries, background, templates)
        t0 = time.perf_counter()
        final = self.postprocess(image, maps).astype(np.float32) if self.postprocess else maps
        return self._assemble(image, queries, alive, final, scores, trace, time.perf_counter() - t0)

    def segment_deferred(self, image: np.ndarray, queries: list[str]) -> Callable[[], Prediction]:
        """Do the CLIP work now; return a function that finishes the `Prediction`.

        With a post-processing pool the CRF starts in a worker before this returns, so the caller
        can run the next image's CLIP work before calling the function (the pipelined engine loop).
        Without one this is `segment` with the result wrapped.
        """
        if self.post_pool is None:
            pred = self.segment(image, queries)
            return lambda: pred
        queries, alive, maps, scores, trace = self._clip_stage(image, queries, None, None)
        future = self.post_pool.submit(image, maps)

        def finish() -> Prediction:
            t0 = time.perf_counter()
            final, t_post = future.result()
            trace[-1]["time"]["postprocess_wait"] = time.perf_counter() - t0
            return self._assemble(image, queries, alive, final, scores, trace, t_post)

        return finish
