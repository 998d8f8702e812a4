"""gRefCOCO (GRES, generalized referring segmentation): expressions with one, several or no target.

Layout (ReLA's release, the REFER convention): ``<root>/grefcoco/grefs(unc).json`` (a JSON list of
refs), ``<root>/grefcoco/instances.json`` (COCO images / annotations / categories) and the COCO
train2014 images under ``<root>/images/mscoco/images/train2014``. A gRefCOCO ref differs from a
RefCOCO one in two ways, both kept here:

- ``ann_id`` is a *list* of annotation ids (several targets: "the two people on the left");
- ``ann_id == [-1]`` (and ``no_target: true`` where present) marks an expression whose referent is
  not in the image; its ground truth is the empty mask.

One sample per expression (ReLA's protocol). Ground truth of a multi-target sample is the union of
its targets' masks, as ReLA builds it (``multi_target=union``); ``multi_target=first`` reproduces the
released CaR loader, which keeps only the first target's mask (a defect: the other targets become
false positives). Per annotation, polygons are combined with ``mask_rule`` (``union`` as ReLA,
``exclusive`` as the RefCOCO loaders).

CaR's recurrence never empties the query set, so by itself it never answers "no target". The
``no_target_rule`` switch says when a prediction is turned into the empty mask; the engine applies it
with `carbench.metrics.gres.apply_no_target_rule`:

- ``never`` (default): CaR as released, N-acc is then 0 by construction;
- ``min_score``: empty when the kept query's final score is below ``no_target_threshold``;
- ``min_area``: empty when the predicted foreground covers less than ``no_target_threshold`` of the image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from carbench.data.layout import report_missing
from carbench.data.refer_format import (
    IMAGE_SUBDIR,
    MASK_RULES,
    clean_expression,
    decode_ann_mask,
    read_coco_image,
    select_refs,
)
from carbench.data.registry import register_dataset
from carbench.types import Sample

__all__ = ["GRefCOCO", "MULTI_TARGET_RULES", "NO_TARGET_RULES", "GREFCOCO_SPLITS"]

MULTI_TARGET_RULES = ("union", "first")
NO_TARGET_RULES = ("never", "min_score", "min_area")
GREFCOCO_SPLITS = ("train", "val", "testA", "testB")
NO_TARGET_ANN = -1
HINT = (
    "Expected <root>/grefcoco/grefs(unc).json, <root>/grefcoco/instances.json and "
    f"<root>/{IMAGE_SUBDIR}/COCO_train2014_*.jpg; follow datasets/README.md, section 'gRefCOCO (GRES)' "
    "(ReLA's annotation release + COCO train2014 images, no conversion); set dataset.root=<root>."
)


def _ann_ids(ref: dict[str, Any]) -> list[int]:
    """The ref's annotation ids as a list ([] for a no-target ref), validating the two encodings agree."""
    raw = ref["ann_id"]
    ids = [int(a) for a in (raw if isinstance(raw, list) else [raw])]
    no_target = ids == [NO_TARGET_ANN]
    if NO_TARGET_ANN in ids and not no_target:
        raise ValueError(f"gRefCOCO ref {ref['ref_id']} mixes the no-target id -1 with real annotations {ids}")
    if "no_target" in ref and bool(ref["no_target"]) != no_target:
        raise ValueError(
            f"gRefCOCO ref {ref['ref_id']}: no_target={ref['no_target']} but ann_id={raw}; the annotation file is "
            "inconsistent, re-download grefs(unc).json"
        )
    return [] if no_target else ids


class GRefCOCO:
    """gRefCOCO samples (one per expression) with union / first-target GT and the no-target switch.

    Args:
        root: folder holding ``grefcoco/`` and ``images/``.
        split: ``val``, ``testA`` or ``testB`` (``train`` is accepted but is never a benchmark).
        split_by: only ``unc`` exists for gRefCOCO.
        text: ``raw`` or ``sent`` sentence field; ``clean`` applies CaR's cleaning (lower-case, drop '"', '/').
        multi_target: ``union`` (ReLA) or ``first`` (the released CaR loader).
        mask_rule: per-annotation polygon rule, ``union`` (ReLA) or ``exclusive`` (REFER sum == 1).
        no_target_rule / no_target_threshold: when the engine empties a prediction (module docstring).
        task: must be ``referring``.
    """

    task = "referring"

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "val",
        split_by: str = "unc",
        text: str = "raw",
        clean: bool = True,
        multi_target: str = "union",
        mask_rule: str = "union",
        no_target_rule: str = "never",
        no_target_threshold: float = 0.0,
        task: str = "referring",
    ) -> None:
        if task != "referring":
            raise ValueError(f"grefcoco is a referring dataset; dataset.task must be 'referring', got {task!r}")
        checks = (("split", split, GREFCOCO_SPLITS), ("split_by", split_by, ("unc",)), ("text", text, ("raw", "sent")),
                  ("multi_target", multi_target, MULTI_TARGET_RULES), ("mask_rule", mask_rule, MASK_RULES),
                  ("no_target_rule", no_target_rule, NO_TARGET_RULES))
        for key, value, valid in checks:
            if value not in valid:
                raise ValueError(f"unknown dataset.{key} {value!r} for grefcoco; valid: {', '.join(valid)}")
        threshold = float(no_target_threshold)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"dataset.no_target_threshold must lie in [0, 1], got {no_target_threshold}")
        self.root = Path(root).expanduser()
        self.split, self.split_by, self.text, self.clean = split, split_by, text, bool(clean)
        self.multi_target, self.mask_rule = multi_target, mask_rule
        self.no_target_rule, self.no_target_threshold = no_target_rule, threshold
        self.name = "grefcoco"
        self.mode = "expression"  # one sample per expression (what the referring loop reads)
        refs, instances = self._load_files()
        chosen = select_refs(refs, split)
        if not chosen:
            present = sorted({str(r.get("split")) for r in refs})
            raise ValueError(f"grefcoco grefs({split_by}).json has no ref in split {split!r}; splits present: {present}")
        anns = {a["id"]: a for a in instances["annotations"]}
        imgs = {i["id"]: i for i in instances["images"]}
        self.anns: dict[int, dict] = {}
        self.imgs: dict[int, dict] = {}
        self.targets: list[list[int]] = []
        for r in chosen:
            ids = _ann_ids(r)
            unknown = [a for a in ids if a not in anns]
            if unknown or r["image_id"] not in imgs:
                raise ValueError(f"grefcoco: ref {r['ref_id']} names anns {unknown} / image {r['image_id']} absent "
                                 f"from instances.json; the annotation files do not belong together. {HINT}")
            self.anns.update({a: anns[a] for a in ids})
            self.imgs[r["image_id"]] = imgs[r["image_id"]]
            self.targets.append(ids)
        self.refs = chosen
        self.items: list[tuple[int, int]] = [
            (k, j) for k, r in enumerate(chosen) for j in range(len(r["sentences"]))
        ]
        if not self.items:
            raise ValueError(f"grefcoco split {split!r} has refs but no sentences; re-download grefs({split_by}).json")
        self.ids = [f"ref{chosen[k]['ref_id']}_sent{chosen[k]['sentences'][j]['sent_id']}" for k, j in self.items]
        self.image_dir = self.root / IMAGE_SUBDIR
        report_missing((self.image_dir / self.imgs[i]["file_name"] for i in sorted(self.imgs)), "grefcoco", HINT)

    def _load_files(self) -> tuple[list[dict], dict[str, Any]]:
        folder = self.root / "grefcoco"
        ref_file, inst_file = folder / f"grefs({self.split_by}).json", folder / "instances.json"
        for f in (ref_file, inst_file):
            if not f.is_file():
                present = sorted(p.name for p in folder.glob("*")) if folder.is_dir() else []
                raise FileNotFoundError(f"grefcoco: expected {f}, which is missing (files in {folder}: "
                                        f"{present or 'none'}). {HINT}")
        refs = json.loads(ref_file.read_text())
        if not isinstance(refs, list) or (refs and not isinstance(refs[0], dict)):
            raise ValueError(f"{ref_file} does not hold a list of ref dicts (gRefCOCO format); re-download it. {HINT}")
        instances = json.loads(inst_file.read_text())
        missing = [k for k in ("images", "annotations", "categories") if k not in instances]
        if missing:
            raise ValueError(f"{inst_file} lacks the COCO keys {missing}; re-download it. {HINT}")
        return refs, instances

    def is_no_target(self, index: int) -> bool:
        """Whether sample `index` refers to nothing in its image."""
        return not self.targets[self.items[index][0]]

    def queries_of(self, index: int) -> list[str]:
        """[the expression] of sample `index`, without decoding anything."""
        k, j = self.items[index]
        t = str(self.refs[k]["sentences"][j][self.text])
        return [clean_expression(t) if self.clean else t]

    @property
    def num_images(self) -> int:
        return len(self.imgs)

    def __len__(self) -> int:
        return len(self.items)

    def target_mask(self, k: int, h: int, w: int) -> np.ndarray:
        """H×W bool GT of ref `k`: empty, the first target, or the union of all targets."""
        ids = self.targets[k]
        if self.multi_target == "first":
            ids = ids[:1]
        out = np.zeros((h, w), dtype=bool)
        for a in ids:
            out |= decode_ann_mask(self.anns[a]["segmentation"], h, w, self.mask_rule)
        return out

    def __getitem__(self, index: int) -> Sample:
        n = len(self.items)
        if not -n <= index < n:
            raise IndexError(f"grefcoco: index {index} out of range for {n} samples")
        index %= n
        k, j = self.items[index]
        r = self.refs[k]
        info = self.imgs[r["image_id"]]
        image = read_coco_image(self.image_dir, info)
        h, w = int(info["height"]), int(info["width"])
        queries = self.queries_of(index)
        if not queries[0].strip():
            raise ValueError(f"{self.ids[index]}: the expression is empty after cleaning")
        return Sample(
            id=self.ids[index], image=image, target=self.target_mask(k, h, w), queries=queries,
            meta={"image_path": str(self.image_dir / info["file_name"]), "ref_id": r["ref_id"], "ann_ids": list(self.targets[k]),
                  "image_id": r["image_id"], "sent_id": r["sentences"][j]["sent_id"], "split": self.split,
                  "no_target": not self.targets[k], "num_targets": len(self.targets[k])},
        )

    def __repr__(self) -> str:
        nt = sum(self.is_no_target(i) for i in range(len(self)))
        return f"GRefCOCO({self.split}, {len(self)} expressions, {nt} without target, {self.num_images} images)"


@register_dataset("grefcoco")
def build_grefcoco(
    root: str | os.PathLike[str],
    split: str = "val",
    split_by: str = "unc",
    text: str = "raw",
    clean: bool = True,
    multi_target: str = "union",
    mask_rule: str = "union",
    no_target_rule: str = "never",
    no_target_threshold: float = 0.0,
    task: str = "referring",
) -> GRefCOCO:
    """gRefCOCO in ReLA's layout (see `GRefCOCO`)."""
    return GRefCOCO(root, split, split_by, text, clean, multi_target, mask_rule, no_target_rule,
                    no_target_threshold, task)
