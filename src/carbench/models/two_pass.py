"""Pascal Context's "mutual background" scheme: CaR on the thing classes, then on the stuff classes.

docs/method.md §1.7 and the official evaluate.py (``eval_semantic`` with a stuff label space):

1. things pass: the thing queries, the dataset's generic background words in the CAM softmax, the
   dataset's visual prompts and CRF;
2. stuff pass: the stuff queries, with the *thing query strings* as CAM background words, the stuff
   visual prompts (Context: blur + gray) and the stuff CRF background exponent;
3. one label map: stuff painted first (ascending score), then things on top (ascending score), each
   pass's query index mapped back to the dataset's query order.

Why two passes: many stuff classes (sky, grass, water, road, …) are exactly the generic background
words, so asking for them in the same pass as things would make them fight their own background.
(The paper says things also use the stuff names as background; the released code uses the generic
list for things — we follow the code, docs/method.md §1.7 "discrepancy".)

Selected by ``model.two_pass`` in the (dataset, model) specialising config
(conf/dataset_model/context_car.yaml); `models.build.build_model` builds it with `build_two_pass`
instead of `build_segmenter`. Both passes share one loaded copy of each CLIP. The stuff pass gets the
thing queries as background words per call (`segment(..., background=…)`), so neither CaR is modified.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from carbench.models.factory import BackbonePool, _plain, build_car, build_postprocess
from carbench.models.labels import assemble_semantic_labels
from carbench.models.recurrent import CaR
from carbench.types import BACKGROUND, Prediction

__all__ = ["TwoPassCaR", "build_two_pass"]


class TwoPassCaR:
    """Segmenter over a query list split into things and stuff (the queries named in `stuff_queries`).

    Args:
        thing: CaR configured for things (generic background words, thing prompts, thing CRF).
        stuff: CaR configured for stuff; it gets the thing queries as background words on every call.
        stuff_queries: the query strings that are stuff, in the order the stuff pass receives them
            (the official list order); every other query is a thing, kept in query order.
    """

    def __init__(self, thing: CaR, stuff: CaR, stuff_queries: Sequence[str]) -> None:
        if len(set(stuff_queries)) != len(stuff_queries):
            raise ValueError(f"two_pass.stuff_queries has duplicates: {list(stuff_queries)}")
        self.thing, self.stuff = thing, stuff
        self.stuff_queries = list(stuff_queries)

    def split(self, queries: Sequence[str]) -> tuple[list[int], list[int]]:
        """(thing indices in query order, stuff indices in `stuff_queries` order) into `queries`."""
        missing = [q for q in self.stuff_queries if q not in queries]
        if missing:
            raise ValueError(f"two_pass.stuff_queries {missing} are not among the dataset's queries; they must be "
                             "spelled exactly like dataset.queries")
        stuff_idx = [list(queries).index(q) for q in self.stuff_queries]
        stuff_set = set(stuff_idx)
        return [i for i in range(len(queries)) if i not in stuff_set], stuff_idx

    def text_defaults(self) -> tuple[list[str], list[str] | None]:
        """The things pass's background words and templates (`TextOverridable`)."""
        return self.thing.text_defaults()

    def segment(
        self,
        image: np.ndarray,
        queries: list[str],
        *,
        background: Sequence[str] | None = None,
        templates: Sequence[str] | None = None,
    ) -> Prediction:
        """Both passes; `background` replaces the things pass's words, `templates` both passes' (None = own)."""
        thing_idx, stuff_idx = self.split(queries)
        h, w = image.shape[:2]
        labels = np.full((h, w), BACKGROUND, dtype=np.int64)
        masks = np.zeros((len(queries), h, w), np.float32)
        scores = np.zeros(len(queries), np.float32)
        kept: list[int] = []
        trace: list[dict[str, Any]] = []
        # stuff first (painted under), then things (painted over): the official assign_label order
        for name, model, idx in (("stuff", self.stuff, stuff_idx), ("thing", self.thing, thing_idx)):
            if not idx:
                continue
            # the stuff pass's background words are this image's thing queries, passed per call
            bg = [queries[i] for i in thing_idx] if name == "stuff" else background
            pred = model.segment(image, [queries[i] for i in idx], background=bg, templates=templates)
            own = assemble_semantic_labels(pred.masks, pred.scores)  # this pass's painting, ascending score
            lut = np.asarray(idx, dtype=np.int64)
            painted = own != BACKGROUND
            labels[painted] = lut[own[painted]]
            masks[idx] = pred.masks
            scores[idx] = pred.scores
            kept += [idx[k] for k in pred.kept]
            # a step's alive/kept indices point into this pass's query list; query_ids maps them to `queries`
            trace += [{**step, "pass": name, "query_ids": list(idx)} for step in pred.trace]
        return Prediction(labels=labels, masks=masks, scores=scores, kept=sorted(kept), trace=trace)


def build_two_pass(
    model_cfg: Mapping | DictConfig,
    postprocess_cfg: Mapping | DictConfig | None,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> TwoPassCaR:
    """Both CaRs from `model_cfg` (+ its ``two_pass`` block) sharing one BackbonePool.

    ``model.two_pass`` keys: ``stuff_queries`` (required), ``stuff_visual_prompts`` (default: the thing
    prompts), ``stuff_bg_factor`` (CRF background exponent of the stuff pass; default: the CRF's).
    """
    cfg = _plain(model_cfg)
    tp = cfg.pop("two_pass", None) or {}
    if cfg.get("name", "car") != "car":
        raise ValueError(f"model.two_pass needs model.name=car, got {cfg.get('name')!r}")
    unknown = sorted(set(tp) - {"stuff_queries", "stuff_visual_prompts", "stuff_bg_factor"})
    if unknown:
        raise ValueError(f"unknown model.two_pass key(s) {unknown}; valid: stuff_queries, stuff_visual_prompts, "
                         "stuff_bg_factor")
    if not tp.get("stuff_queries"):
        raise ValueError("model.two_pass.stuff_queries must list the stuff query strings")
    pool = BackbonePool(torch.device(device), seed=seed, cache_dir=cfg.get("cache_dir"))
    thing = build_car(cfg, build_postprocess(postprocess_cfg), pool)
    post = _plain(postprocess_cfg)
    if post.get("name", "none") == "crf" and tp.get("stuff_bg_factor") is not None:
        post["bg_factor"] = float(tp["stuff_bg_factor"])
    stuff_cfg = {**cfg, "background_queries": []}  # the thing queries are passed at every call
    if tp.get("stuff_visual_prompts"):
        stuff_cfg["visual_prompts"] = list(tp["stuff_visual_prompts"])
    stuff = build_car(stuff_cfg, build_postprocess(post), pool)
    return TwoPassCaR(thing, stuff, list(tp["stuff_queries"]))
