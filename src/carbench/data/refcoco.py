"""RefCOCO, RefCOCO+ and RefCOCOg referring segmentation in the REFER layout (docs/datasets.md §10).

Two sample protocols, chosen by ``dataset.mode``:

- ``expression`` (default, the standard RIS protocol of LAVT / GL-CLIP): one sample per expression;
  ``queries = [that expression]``; metrics average over expressions.
- ``ref`` (the released CaR loader): one sample per referred object; ``queries`` = all its expressions
  (cleaned, duplicates removed), segmented together and merged by score (docs/method.md §3).

GT = the referent's instance mask decoded with pycocotools as REFER does (`refer_format`). Texts are
the ``raw`` sentences with the official CaR cleaning (lower-case, '"' and '/' removed) by default.
Registered as ``refcoco``, ``refcoco+`` and ``refcocog``; ``dataset.split_by`` picks the partition
(unc / umd / google) and ``dataset.split`` the split (val, testA, testB, test).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from carbench.data.layout import report_missing
from carbench.data.refer_format import (
    IMAGE_SUBDIR,
    MASK_RULES,
    SPLITS_BY,
    clean_expression,
    decode_ann_mask,
    load_refer,
    read_coco_image,
    select_refs,
)
from carbench.data.registry import register_dataset
from carbench.types import Sample

__all__ = ["MODES", "TEXT_FIELDS", "ReferringDataset"]

MODES = ("expression", "ref")
TEXT_FIELDS = ("raw", "sent")
DATASETS = ("refcoco", "refcoco+", "refcocog")


def _hint(dataset: str, split_by: str) -> str:
    return (
        f"Expected <root>/{dataset}/refs({split_by}).p, <root>/{dataset}/instances.json and "
        f"<root>/{IMAGE_SUBDIR}/COCO_train2014_*.jpg; follow datasets/README.md, section 'RefCOCO, RefCOCO+, "
        "RefCOCOg' (REFER annotations + COCO train2014 images, no conversion); set dataset.root=<root> "
        "(default $CARBENCH_DATASETS/refer)."
    )


class ReferringDataset:
    """Samples of one REFER dataset/partition/split; a ``Sample`` per expression (or per ref).

    Args:
        root: the REFER data root (holds ``images/`` and the dataset folders).
        dataset: ``refcoco`` | ``refcoco+`` | ``refcocog``.
        split_by: ``unc`` (RefCOCO, RefCOCO+), ``umd`` or ``google`` (RefCOCOg).
        split: ``val``, ``testA``, ``testB`` (unc), ``test`` (umd) — see `refer_format.SPLITS_BY`.
        mode: ``expression`` (one sample per expression) or ``ref`` (all expressions of a ref together).
        text: ``raw`` (the original sentence, official CaR) or ``sent`` (REFER's tokenised, lower-cased text).
        clean: apply the official CaR cleaning (lower-case, drop '"' and '/').
        mask_rule: ``exclusive`` (polygon sum == 1, REFER + LAVT/CaR) or ``union`` (sum > 0).
        task: must be ``referring``; the engine reads it to pick the referring loop.
    """

    task = "referring"

    def __init__(
        self,
        root: str | os.PathLike[str],
        dataset: str = "refcoco",
        split_by: str = "unc",
        split: str = "val",
        mode: str = "expression",
        text: str = "raw",
        clean: bool = True,
        mask_rule: str = "exclusive",
        task: str = "referring",
    ) -> None:
        if task != "referring":
            raise ValueError(f"{dataset} is a referring dataset; dataset.task must be 'referring', got {task!r}")
        if dataset not in DATASETS:
            raise ValueError(f"unknown REFER dataset {dataset!r}; valid: {', '.join(DATASETS)}")
        if split_by not in SPLITS_BY:
            raise ValueError(f"unknown split_by {split_by!r}; valid: {', '.join(SPLITS_BY)}")
        if split not in SPLITS_BY[split_by]:
            raise ValueError(
                f"{dataset} split_by={split_by} has splits {list(SPLITS_BY[split_by])}, not {split!r} "
                "(RefCOCO/RefCOCO+: unc val/testA/testB; RefCOCOg: umd val/test, google val)"
            )
        checks = (("mode", mode, MODES), ("text", text, TEXT_FIELDS), ("mask_rule", mask_rule, MASK_RULES))
        for key, value, valid in checks:
            if value not in valid:
                raise ValueError(f"unknown dataset.{key} {value!r}; valid: {', '.join(valid)}")
        self.root = Path(root).expanduser()
        self.dataset, self.split_by, self.split = dataset, split_by, split
        self.mode, self.text, self.clean, self.mask_rule = mode, text, bool(clean), mask_rule
        self.name = dataset
        hint = _hint(dataset, split_by)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{dataset}: REFER root {self.root} does not exist. {hint}")
        refs, instances = load_refer(self.root, dataset, split_by, hint)
        chosen = select_refs(refs, split)
        if not chosen:
            present = sorted({str(r.get("split")) for r in refs})
            raise ValueError(f"{dataset} refs({split_by}).p has no ref in split {split!r}; splits present: {present}")
        anns = {a["id"]: a for a in instances["annotations"]}
        imgs = {i["id"]: i for i in instances["images"]}
        self.anns: dict[int, dict] = {}
        self.imgs: dict[int, dict] = {}
        for r in chosen:  # every ref must resolve, as in REFER createIndex (a KeyError there)
            if r["ann_id"] not in anns or r["image_id"] not in imgs:
                raise ValueError(f"{dataset}: ref {r['ref_id']} names ann {r['ann_id']} / image {r['image_id']} "
                                 f"absent from instances.json; the annotation files do not belong together. {hint}")
            self.anns[r["ann_id"]] = anns[r["ann_id"]]
            self.imgs[r["image_id"]] = imgs[r["image_id"]]
        self.refs = chosen
        self.items: list[tuple[int, list[int]]] = []  # (index into refs, sentence positions)
        for k, r in enumerate(chosen):
            if not r["sentences"]:
                raise ValueError(f"{dataset}: ref {r['ref_id']} has no sentences")
            if mode == "expression":
                self.items.extend((k, [j]) for j in range(len(r["sentences"])))
            else:
                self.items.append((k, list(range(len(r["sentences"])))))
        self.ids = [self._sample_id(k, pos) for k, pos in self.items]
        self.image_dir = self.root / IMAGE_SUBDIR
        report_missing((self.image_dir / self.imgs[i]["file_name"] for i in sorted(self.imgs)), dataset, hint)

    def _sample_id(self, k: int, positions: list[int]) -> str:
        r = self.refs[k]
        if self.mode == "ref":
            return f"ref{r['ref_id']}"
        return f"ref{r['ref_id']}_sent{r['sentences'][positions[0]]['sent_id']}"

    def _text(self, sentence: dict[str, Any]) -> str:
        t = str(sentence[self.text])
        return clean_expression(t) if self.clean else t

    def queries_of(self, index: int) -> list[str]:
        """The query strings of sample `index` without decoding anything (unique, in sentence order)."""
        k, positions = self.items[index]
        texts = [self._text(self.refs[k]["sentences"][j]) for j in positions]
        return list(dict.fromkeys(texts))  # ref mode: identical expressions would be one query twice

    @property
    def num_images(self) -> int:
        return len(self.imgs)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        n = len(self.items)
        if not -n <= index < n:
            raise IndexError(f"{self.name}: index {index} out of range for {n} samples")
        index %= n
        k, positions = self.items[index]
        r = self.refs[k]
        info = self.imgs[r["image_id"]]
        image = read_coco_image(self.image_dir, info)
        h, w = int(info["height"]), int(info["width"])
        target = decode_ann_mask(self.anns[r["ann_id"]]["segmentation"], h, w, self.mask_rule)
        queries = self.queries_of(index)
        if not all(q.strip() for q in queries):
            raise ValueError(f"{self.ids[index]}: an expression is empty after cleaning: {queries!r}")
        return Sample(
            id=self.ids[index], image=image, target=target, queries=queries,
            meta={"image_path": str(self.image_dir / info["file_name"]), "ref_id": r["ref_id"], "ann_id": r["ann_id"], "image_id": r["image_id"],
                  "sent_ids": [r["sentences"][j]["sent_id"] for j in positions], "split": self.split,
                  "split_by": self.split_by, "category_id": r.get("category_id")},
        )

    def __repr__(self) -> str:
        return (f"ReferringDataset({self.dataset}, {self.split_by}/{self.split}, mode={self.mode}, "
                f"{len(self)} samples, {self.num_images} images)")


def _register(name: str) -> None:
    def build(
        root: str | os.PathLike[str],
        split_by: str = "unc",
        split: str = "val",
        mode: str = "expression",
        text: str = "raw",
        clean: bool = True,
        mask_rule: str = "exclusive",
        task: str = "referring",
    ) -> ReferringDataset:
        return ReferringDataset(root, name, split_by, split, mode, text, clean, mask_rule, task)

    build.__name__ = build.__qualname__ = f"build_{name.replace('+', '_plus')}"
    build.__doc__ = f"{name} in the REFER layout (see `ReferringDataset`)."
    register_dataset(name)(build)  # type: ignore[arg-type]


for _name in DATASETS:
    _register(_name)
