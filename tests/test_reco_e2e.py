"""model=reco end to end on the toy world: index → references → segmentation, caching, config errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from carbench.models.factory import build_segmenter
from carbench.toy.model import TOY_COLORS
from carbench.toy.scenes import CLASS_NAMES, make_scene, scene_rng

QUERIES = ["ring", "cross"]
BACKGROUND = ["background", "stripes"]


@pytest.fixture(scope="module")
def reco(tmp_path_factory):
    root = tmp_path_factory.mktemp("reco")
    mp = pytest.MonkeyPatch()
    mp.setenv("CARBENCH_DATASETS", str(root))
    torch.manual_seed(0)
    cfg = {"name": "reco", "proposal": "toy", "archive": "toy:40", "k": 5, "templates": ["a photo of a {}."],
           "background_queries": BACKGROUND, "mask_threshold": 0.4}  # a CaR key the dataset configs set: ignored
    yield build_segmenter(cfg, None), root
    mp.undo()


def _label_ids(store, i: int) -> set[int]:
    from PIL import Image

    name = store.archive.files[i].split("/")[-1].rsplit(".", 1)[0]
    return set(np.unique(np.asarray(Image.open(store.archive.root / "SegmentationClass" / f"{name}.png"))).tolist())


def test_the_toy_archive_and_its_index_are_built_on_first_use(reco):
    seg, root = reco
    index = seg.references.index
    assert index.path == root / "reco_index" / "toy_40-toy"
    assert index.embeddings.shape[0] == 40 and index.manifest["preset"] == "toy"


def test_retrieval_finds_the_concept_in_the_archive(reco):
    store = reco[0].references
    ring = CLASS_NAMES.index("ring") + 1
    hits = [ring in _label_ids(store, i) for i in store.retrieve("ring")]
    base = np.mean([ring in _label_ids(store, i) for i in range(len(store.archive))])
    assert np.mean(hits) >= 0.6 > base


def test_segmentation_finds_the_object_and_references_are_computed_once(reco):
    seg, _ = reco
    store = seg.references
    scene = next(s for s in (make_scene(scene_rng(0, "val", i), 96, colors=TOY_COLORS) for i in range(50))
                 if [o.name for o in s.objects] == ["ring"])
    scans = store.index_scans
    pred = seg.segment(scene.image, QUERIES)
    assert pred.labels.shape == scene.label.shape and pred.masks.shape == (2, 96, 96)
    assert 0.0 <= pred.masks.min() and pred.masks.max() <= 1.0
    assert store.coseg_calls == len(QUERIES) + len(BACKGROUND)
    gt = scene.label == CLASS_NAMES.index("ring") + 1
    got = pred.labels == 0
    assert (got & gt).sum() / (got | gt).sum() > 0.2  # the ring's pixels are found
    assert pred.trace[0]["new_references"] == 4
    assert store.index_scans == scans + 1  # every concept of the image retrieved in one pass over the index
    again = seg.segment(scene.image, QUERIES)
    assert store.coseg_calls == 4 and again.trace[0]["new_references"] == 0
    np.testing.assert_array_equal(again.labels, pred.labels)
    seg.segment(scene.image, [*QUERIES, "star"])
    assert store.coseg_calls == 5 and store.index_scans == scans + 2


def test_background_queries_cannot_also_be_queries(reco):
    with pytest.raises(ValueError, match="background queries \\['stripes'\\] are also"):
        reco[0].segment(np.zeros((32, 32, 3), np.uint8), ["ring", "stripes"])


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="unknown model=reco key\\(s\\) \\['kk'\\]"):
        build_segmenter({"name": "reco", "proposal": "toy", "kk": 5}, None)
    with pytest.raises(ValueError, match="set model.archive=/path/to/ImageNet/train"):
        build_segmenter({"name": "reco", "proposal": "vitb16"}, None)
    with pytest.raises(FileNotFoundError, match="no ReCo index at .*python -m carbench.reco.index"):
        folder = tmp_path / "imgs"
        folder.mkdir()
        from PIL import Image

        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
        build_segmenter({"name": "reco", "proposal": "toy", "archive": str(folder), "index": str(tmp_path / "i")}, None)


def test_dino_weights_missing_offline_names_the_file_and_where_it_looked(tmp_path, monkeypatch):
    from carbench.reco.dense import TimmDense

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="model.safetensors.*timm/vit_small_patch16_224.dino.*"
                                                f"{tmp_path}.*model.dense_checkpoint"):
        TimmDense("vit_small_patch16_224.dino", cache_dir=str(tmp_path))


def test_dino_from_a_local_file_gives_a_patch_grid(tmp_path):
    import timm
    from safetensors.torch import save_file

    from carbench.reco.dense import TimmDense

    model = timm.create_model("vit_small_patch16_224.dino", pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "dino.safetensors")
    dense = TimmDense(checkpoint=str(tmp_path / "dino.safetensors"))
    assert torch.equal(dense.model.pos_embed, model.pos_embed)
    assert tuple(dense.image_features(np.zeros((40, 70, 3), np.uint8)).shape) == (3, 5, 384)
    assert tuple(dense.reference_features([np.zeros((50, 60, 3), np.uint8)]).shape) == (1, 14, 14, 384)
    with pytest.raises(FileNotFoundError, match="model.dense_checkpoint=.*no such file"):
        TimmDense(checkpoint=str(tmp_path / "missing.safetensors"))


def test_peers_view_flags_the_published_reco_rows_for_a_reco_run():
    from carbench.peers import peers_table

    results = {"metrics": {"mIoU": 20.0}, "dataset": {"name": "voc21"}, "num_images": {"evaluated": 1, "split_size": 1},
               "config": {"model": {"name": "reco"}, "postprocess": {"name": "crf"}, "dataset": {"name": "voc"}}}
    table = peers_table(results)
    assert "this run (model=reco, crf)" in table
    rows = [ln for ln in table.splitlines() if "same method as this run (model=reco)" in ln]
    assert len(rows) == 1 and rows[0].startswith("| ReCo (TCL re-eval) | 25.1 |")
    coco = dict(results, dataset={"name": "coco_object"}, config=dict(results["config"], dataset={"name": "coco_object"}))
    assert "| ReCo (TCL re-eval) | 15.7 |" in peers_table(coco)


@pytest.mark.parametrize("dataset", ["toy", "voc", "coco_object", "context"])
def test_model_reco_composes_and_passes_the_strict_key_check(dataset):
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from carbench.engine.config_check import check_keys
    from carbench.reco.build import RECO_KEYS, SHARED_KEYS

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", overrides=["model=reco", f"dataset={dataset}"]), resolve=True)
    check_keys(cfg)
    assert set(cfg["model"]) <= RECO_KEYS | SHARED_KEYS | {"protocol"}  # what build_reco accepts


def test_refined_masks_are_painted_with_background_texts_as_background():
    from carbench.reco.segmenter import _paint
    from carbench.types import BACKGROUND

    masks = np.zeros((3, 2, 3), np.float32)  # texts: 2 queries + 1 background text
    masks[0, 0, :2] = 1  # query 0 holds (0,0) (0,1)
    masks[1, 0, 1:] = 1  # query 1 holds (0,1) (0,2): (0,1) overlaps, the higher relative score wins
    masks[2, 1, 0] = 1  # the background text holds (1,0); (1,1) (1,2) are held by nothing
    rel = np.ones((3, 2, 3), np.float32)
    rel[0, 0, 1], rel[1, 0, 1] = 0.6, 1.0
    pred = _paint(masks, rel, 2, [])
    assert pred.labels.tolist() == [[0, 1, 1], [BACKGROUND] * 3]
    assert pred.kept == [0, 1] and pred.masks.shape == (2, 2, 3)


def test_the_crf_refines_every_text_and_keeps_the_object(reco):
    from carbench.models.postprocess.crf import CRFParams, DenseCRF

    seg, _ = reco
    scene = next(s for s in (make_scene(scene_rng(0, "val", i), 96, colors=TOY_COLORS) for i in range(50))
                 if [o.name for o in s.objects] == ["ring"])
    seg.postprocess = DenseCRF(CRFParams())
    try:
        pred = seg.segment(scene.image, QUERIES)
    finally:
        seg.postprocess = None
    gt = scene.label == CLASS_NAMES.index("ring") + 1
    got = pred.labels == 0
    assert (got & gt).sum() / (got | gt).sum() > 0.2
    assert set(np.unique(pred.labels).tolist()) <= {-1, 0, 1}
