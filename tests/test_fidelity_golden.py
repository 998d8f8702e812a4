"""End-to-end golden pins for `model.fidelity=official` and `clean` on a fixture image.

The full CaR pipeline (tiny random CLIPs, the VOC configuration with 3 of its templates, a θ that
makes the recurrence drop queries, dense CRF) runs on a generated VOC image whose size is not a
multiple of the patch size, so every switch of docs/method.md §5.2 is on the path. The kept
queries of every step and a SHA-256 of the label map are pinned for both settings: a change to
any official-code behaviour, or to what the clean setting does, changes one of them. If a pin
moves on purpose, print the new values with `python tests/test_fidelity_golden.py` and explain
the change in the commit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from carbench.data.fixtures import write_voc_fixture
from carbench.data.voc import VOCSegmentation
from carbench.models.factory import build_segmenter

ROOT = Path(__file__).resolve().parents[1]
Q = 6  # the first 6 VOC queries keep the run to a few seconds

#: fidelity → (alive queries at every step, final kept queries, sha256 of the int64 label map)
GOLDEN: dict[str, tuple[list[list[int]], list[int], str]] = {
    "official": ([[0, 1, 2, 3, 4, 5], [2, 3]], [2, 3],
                 "baa999e3fb584ff444f932228be181cbf6f3bd8b5dc9ff9e711369d435904eee"),
    "clean": ([[0, 1, 2, 3, 4, 5], [2, 3]], [2, 3],
              "d8362860caaf1f6339000d717e3e6346e31a8db348a8a52c60370adf33648095"),
}


def run(fidelity: str, image_dir: Path):
    sample = VOCSegmentation(str(image_dir))[0]
    cfg = OmegaConf.merge(OmegaConf.load(ROOT / "conf/model/car.yaml"), OmegaConf.load(ROOT / "conf/dataset_text/voc.yaml").model,
                          OmegaConf.load(ROOT / "conf/dataset_model/voc_car.yaml").model)
    cfg.proposal = cfg.classifier = "tiny_random"
    cfg.templates = cfg.templates[:3]
    cfg.update({"fidelity": fidelity, "confidence_threshold": 0.17})
    seg = build_segmenter(OmegaConf.to_container(cfg), {"name": "crf"}, seed=0)
    pred = seg.segment(sample.image, sample.queries[:Q])
    digest = hashlib.sha256(np.ascontiguousarray(pred.labels, dtype=np.int64).tobytes()).hexdigest()
    return [t["alive"] for t in pred.trace], list(pred.kept), digest, pred


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    image_dir = write_voc_fixture(tmp_path_factory.mktemp("golden"), num_val=1, seed=11, sizes=[(150, 115)])
    return {f: run(f, image_dir) for f in ("official", "clean")}


@pytest.mark.parametrize("fidelity", ["official", "clean"])
def test_kept_queries_and_label_hash_are_pinned(fidelity, runs):
    steps, kept, digest, _ = runs[fidelity]
    assert (steps, kept, digest) == GOLDEN[fidelity]


def test_the_two_settings_differ_on_the_fixture(runs):
    official, clean = runs["official"][3], runs["clean"][3]
    assert not np.array_equal(official.labels, clean.labels)
    assert (official.labels != clean.labels).mean() > 1e-3


if __name__ == "__main__":  # print the values to pin
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        d = write_voc_fixture(tmp, num_val=1, seed=11, sizes=[(150, 115)])
        for f in ("official", "clean"):
            steps, kept, digest, pred = run(f, d)
            print(f, (steps, kept, digest), [t["scores"] for t in pred.trace])
