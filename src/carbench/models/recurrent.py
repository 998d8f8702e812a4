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

Batching (`segment_batch`, `model.batch_images`): the per-image rules live in one `LoopState` per
image (models/loop_state.py) and `run_batch` advances all of them a step at a time, so each image
runs its own recurrence (own queries, own step number, own stop) and leaves the batch once it has
converged. Each step's CLIP work of the images still running goes through the components' batch
methods when they have them (`BatchProposer`, `BatchScorer`), image by image otherwise; a single
image always takes the plain `propose` / `score` path, so `segment` is `run_batch` of one image.
Per-image trace timings: a batched stage's time is split evenly over the images computed in it
(a reused step costs 0), so the per-image sums still add up to the run's time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np
import torch

from carbench.models.backbones.device import autocast, check_amp
from carbench.models.components import (
    BatchProposer,
    BatchScorer,
    KeyedProposer,
    MaskScorer,
    Proposer,
    WarmsScorerText,
    WarmsText,
)
from carbench.models.labels import assemble_semantic_labels
from carbench.models.loop_state import LoopResult, LoopState, StepRules
from carbench.models.postprocess.crf import one_hot_channels
from carbench.models.postprocess.pool import PostprocessPool
from carbench.models.prompts import prompt_images, validate_prompts
from carbench.models.queries import check_background_queries, check_model_background, check_query_list
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
        self.background_queries = check_model_background(background_queries)
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
        (res,) = self.run_batch([image], [queries], background, templates)
        return res.alive, res.maps, res.scores, res.trace

    def run_batch(
        self,
        images: Sequence[np.ndarray],
        queries: Sequence[Sequence[str]],
        background: Sequence[str] = (),
        templates: Sequence[str] | None = None,
    ) -> list[LoopResult]:
        """The recurrence of several images together (module docstring, "Batching"); one result per image."""
        rules = StepRules(self.theta, self.max_steps, self.reuse_unchanged_step, self.fallback_unfiltered_quirk)
        states = [
            LoopState(q, rules, lambda names, step: self._step_key(names, background, step)) for q in queries
        ]
        running = list(range(len(states)))
        while running:
            fresh = [i for i in running if states[i].begin_step()]
            for i in running:
                if i not in fresh:
                    states[i].take_reused()
            if fresh:
                self._fresh_step(images, states, fresh, background, templates)
            running = [i for i in running if not states[i].done]
        return [s.result for s in states]  # type: ignore[misc]  # every state is done here

    def _fresh_step(
        self,
        images: Sequence[np.ndarray],
        states: list[LoopState],
        fresh: list[int],
        background: Sequence[str],
        templates: Sequence[str] | None,
    ) -> None:
        """Propose, prompt and score one step of the images in `fresh`; each state takes its own results."""
        imgs = [images[i] for i in fresh]
        names = [states[i].names for i in fresh]
        t0 = time.perf_counter()
        maps = self._propose(imgs, names, background, [states[i].step for i in fresh])
        maps = [states[i].fallback_before_prompting(m) for i, m in zip(fresh, maps, strict=True)]
        t1 = time.perf_counter()
        prompted = [prompt_images(im, m, self.prompts, self.eta, **self.prompt_kwargs)
                    for im, m in zip(imgs, maps, strict=True)]
        t2 = time.perf_counter()
        scores = self._score(prompted, names, templates)
        t3 = time.perf_counter()
        n = len(fresh)
        times = {"cam": (t1 - t0) / n, "prompts": (t2 - t1) / n, "classifier": (t3 - t2) / n}
        for k, i in enumerate(fresh):
            states[i].take(maps[k], prompted[k], scores[k], times)

    def _propose(
        self, images: list[np.ndarray], names: list[list[str]], background: Sequence[str], steps: list[int]
    ) -> list[np.ndarray]:
        """One step's proposals of these images: in one call when the proposer batches, else image by image."""
        if len(images) > 1 and isinstance(self.proposer, BatchProposer):
            maps = self.proposer.propose_batch(images, names, background, steps)
            if len(maps) != len(images):
                raise ValueError(f"{type(self.proposer).__name__}.propose_batch returned {len(maps)} map stacks "
                                 f"for {len(images)} images; it must return one per image")
            return list(maps)
        return [self.proposer.propose(im, q, background, s) for im, q, s in zip(images, names, steps, strict=True)]

    def _score(
        self, prompted: list[list[np.ndarray]], names: list[list[str]], templates: Sequence[str] | None
    ) -> list[np.ndarray]:
        """One step's scores of these images: in one call when the scorer batches, else image by image."""
        if len(prompted) > 1 and isinstance(self.classifier, BatchScorer):
            scores = self.classifier.score_batch(prompted, names, templates)
            if len(scores) != len(prompted):
                raise ValueError(f"{type(self.classifier).__name__}.score_batch returned {len(scores)} score "
                                 f"vectors for {len(prompted)} images; it must return one per image")
            return list(scores)
        return [self.classifier.score(p, q, templates) for p, q in zip(prompted, names, strict=True)]

    def _clip_stage(
        self,
        images: Sequence[np.ndarray],
        queries: Sequence[list[str]],
        background: Sequence[str] | None,
        templates: Sequence[str] | None,
    ) -> list[tuple[list[str], LoopResult]]:
        """Everything before post-processing, for a batch: checks, text warm-up and the recurrence."""
        if len(images) != len(queries):
            raise ValueError(f"{len(images)} images but {len(queries)} query lists; give one query list per image")
        if background is None:
            background = self.background_queries
        checked = []
        for image, q in zip(images, queries, strict=True):
            q = check_queries(q)
            background = check_background_queries(q, background)  # a list from here on (a string is refused)
            if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                shape, dtype = getattr(image, "shape", None), getattr(image, "dtype", type(image).__name__)
                raise ValueError(f"image must be H×W×3 uint8 RGB, got shape {shape} dtype {dtype}")
            checked.append(q)
        t_text = []
        for q in checked:
            t0 = time.perf_counter()
            with self.autocast():
                self.warm_text(q, background, templates)
            t_text.append(time.perf_counter() - t0)
        with self.autocast():
            results = self.run_batch(images, checked, background, templates)
        for res, t in zip(results, t_text, strict=True):
            res.trace[0]["time"]["text"] = t
        return list(zip(checked, results, strict=True))

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
        (pred,) = self.segment_batch([image], [queries], background=background, templates=templates)
        return pred

    def segment_batch(
        self,
        images: Sequence[np.ndarray],
        queries: Sequence[list[str]],
        *,
        background: Sequence[str] | None = None,
        templates: Sequence[str] | None = None,
    ) -> list[Prediction]:
        """Several images, each with its own queries: the recurrences run together (module docstring),
        then each image's post-processing; one `Prediction` per image, equal to its own `segment`."""
        preds = []
        for image, (q, res) in zip(images, self._clip_stage(images, queries, background, templates), strict=True):
            t0 = time.perf_counter()
            final = self.postprocess(image, res.maps).astype(np.float32) if self.postprocess else res.maps
            preds.append(self._assemble(image, q, res.alive, final, res.scores, res.trace, time.perf_counter() - t0))
        return preds

    def segment_deferred(self, image: np.ndarray, queries: list[str]) -> Callable[[], Prediction]:
        """Do the CLIP work now; return a function that finishes the `Prediction`.

        With a post-processing pool the CRF starts in a worker before this returns, so the caller
        can run the next image's CLIP work before calling the function (the pipelined engine loop).
        Without one this is `segment` with the result wrapped.
        """
        if self.post_pool is None:
            pred = self.segment(image, queries)
            return lambda: pred
        (finish,) = self.segment_batch_deferred([image], [queries])
        return finish

    def segment_batch_deferred(
        self, images: Sequence[np.ndarray], queries: Sequence[list[str]]
    ) -> list[Callable[[], Prediction]]:
        """`segment_deferred` of a batch: the CLIP work of all images now, every image's post-processing
        submitted to the pool before this returns; one finishing function per image."""
        if self.post_pool is None:
            preds = self.segment_batch(images, queries)
            return [lambda pred=pred: pred for pred in preds]
        stages = self._clip_stage(images, queries, None, None)
        futures = [self.post_pool.submit(image, res.maps) for image, (_, res) in zip(images, stages, strict=True)]
        return [self._finisher(image, q, res, future)
                for image, (q, res), future in zip(images, stages, futures, strict=True)]

    def _finisher(
        self, image: np.ndarray, queries: list[str], res: LoopResult, future: Future
    ) -> Callable[[], Prediction]:
        """A function that waits for this image's post-processing and assembles its `Prediction`."""

        def finish() -> Prediction:
            t0 = time.perf_counter()
            final, t_post = future.result()
            res.trace[-1]["time"]["postprocess_wait"] = time.perf_counter() - t0
            return self._assemble(image, queries, res.alive, final, res.scores, res.trace, t_post)

        return finish
