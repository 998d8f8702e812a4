"""The procedural toy world: determinism, exact masks, captions and the VOC layout on disk."""

from __future__ import annotations

import hashlib
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from carbench.toy.scenes import (
    BACKGROUND_KINDS,
    CLASS_COLORS,
    CLASS_NAMES,
    COLOR_NAMES,
    COLORS,
    MIN_VISIBLE,
    SPLIT_OFFSETS,
    make_scene,
    scene_rng,
    shape_mask,
    split_is_complete,
    write_toy_split,
)

SIZE = 64


def _scenes(n=40, split="val", seed=0, size=SIZE):
    return [make_scene(scene_rng(seed, split, i), size) for i in range(n)]


def test_class_names_are_eight_distinct_words():
    assert len(CLASS_NAMES) == 8 and len(set(CLASS_NAMES)) == 8
    assert all(re.fullmatch(r"[a-z]+", c) for c in CLASS_NAMES)


def test_same_seed_same_scene_and_different_index_different_scene():
    a = make_scene(scene_rng(3, "tune", 5), SIZE)
    b = make_scene(scene_rng(3, "tune", 5), SIZE)
    c = make_scene(scene_rng(3, "tune", 6), SIZE)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label) and a.caption == b.caption
    assert not np.array_equal(a.image, c.image)


def test_scene_types_and_label_values():
    for s in _scenes():
        assert s.image.shape == (SIZE, SIZE, 3) and s.image.dtype == np.uint8
        assert s.label.shape == (SIZE, SIZE) and s.label.dtype == np.uint8
        assert set(np.unique(s.label)) <= set(range(len(CLASS_NAMES) + 1))
        assert s.background in BACKGROUND_KINDS
        assert 1 <= len(s.objects) <= 3
        ids = [o.class_id for o in s.objects]
        assert len(set(ids)) == len(ids)  # distinct classes per scene


def test_label_is_exactly_the_visible_part_of_each_drawn_shape():
    for s in _scenes(60):
        masks = [shape_mask(o.name, SIZE, o.center, o.radius, o.angle) > 0 for o in s.objects]
        rebuilt = np.zeros_like(s.label)
        for o, m in zip(s.objects, masks, strict=True):  # drawing order: later objects on top
            rebuilt[m] = o.class_id
        assert np.array_equal(rebuilt, s.label)
        for o, m in zip(s.objects, masks, strict=True):
            visible = s.label == o.class_id
            assert o.visible_pixels == int(visible.sum()) > 0
            assert visible.sum() >= MIN_VISIBLE * m.sum() - 1  # never hidden by more than half
            # the visible pixels carry the object's colour (robust to noise, shading and blur)
            med = np.median(s.image[visible].astype(float), axis=0)
            assert np.abs(med - np.array(COLORS[o.color])).max() < 60, (o, med)


def test_ring_has_a_background_hole():
    m = shape_mask("ring", 64, (32.0, 32.0), 20.0, 0.0)
    assert m[32, 32] == 0 and m[32, 32 + 15] == 1


def test_caption_names_exactly_the_classes_present():
    for s in _scenes(60):
        words = set(re.findall(r"[a-z]+", s.caption.lower()))
        present = {o.name for o in s.objects}
        assert present <= words, (s.caption, present)
        assert not (set(CLASS_NAMES) - present) & words, s.caption


def test_background_only_scene():
    s = make_scene(np.random.default_rng(1), SIZE, n_objects=0)
    assert not s.objects and not s.label.any() and s.background in s.caption


def test_images_are_not_trivially_flat():
    # background is textured/noisy, not a constant colour
    for s in _scenes(10):
        bg = s.image[s.label == 0].astype(float)
        assert bg.std(0).max() > 3


def test_splits_use_disjoint_streams():
    assert len(set(SPLIT_OFFSETS.values())) == len(SPLIT_OFFSETS)
    hashes = {}
    for split in SPLIT_OFFSETS:
        hashes[split] = {hashlib.sha1(s.image.tobytes()).hexdigest() for s in _scenes(20, split)}
    assert not hashes["train"] & hashes["val"]
    assert not hashes["train"] & hashes["tune"]
    assert not hashes["tune"] & hashes["val"]


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="unknown split"):
        scene_rng(0, "test", 0)


def test_write_split_voc_layout_and_idempotence(tmp_path):
    from carbench.data.voc_format import read_palette_png

    root = tmp_path / "toy"
    write_toy_split(root, "val", n=5, seed=0, size=SIZE)
    ids = (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    assert ids == [f"val_{i:05d}" for i in range(5)]
    caps = json.loads((root / "captions_val.json").read_text())
    assert sorted(caps) == ids
    for i, sid in enumerate(ids):
        scene = make_scene(scene_rng(0, "val", i), SIZE)
        img = Image.open(root / "JPEGImages" / f"{sid}.jpg")
        assert img.format == "JPEG" and img.size == (SIZE, SIZE)
        ref = io.BytesIO()
        Image.fromarray(scene.image).save(ref, format="JPEG", quality=95)
        assert (root / "JPEGImages" / f"{sid}.jpg").read_bytes() == ref.getvalue()  # the scene, quality 95
        png = Image.open(root / "SegmentationClass" / f"{sid}.png")
        assert png.mode == "P"
        assert np.array_equal(read_palette_png(root / "SegmentationClass" / f"{sid}.png"), scene.label)
        assert caps[sid] == scene.caption
    assert split_is_complete(root, "val", 5, 0, SIZE)
    assert not split_is_complete(root, "val", 6, 0, SIZE)
    assert not split_is_complete(root, "val", 5, 1, SIZE)

    # idempotent: a complete split is not rewritten
    jpg = root / "JPEGImages" / "val_00000.jpg"
    mtime = jpg.stat().st_mtime_ns
    write_toy_split(root, "val", n=5, seed=0, size=SIZE)
    assert jpg.stat().st_mtime_ns == mtime

    # a missing file makes the split incomplete and it is regenerated
    (root / "SegmentationClass" / "val_00003.png").unlink()
    assert not split_is_complete(root, "val", 5, 0, SIZE)
    write_toy_split(root, "val", n=5, seed=0, size=SIZE)
    assert split_is_complete(root, "val", 5, 0, SIZE)

    # another split next to it does not disturb the first
    write_toy_split(root, "tune", n=3, seed=0, size=SIZE)
    assert split_is_complete(root, "val", 5, 0, SIZE) and split_is_complete(root, "tune", 3, 0, SIZE)


def test_by_class_colours_paint_each_object_from_its_own_pair_and_any_mode_uses_every_colour():
    by_class = [o for i in range(80) for o in make_scene(scene_rng(0, "val", i), SIZE, colors="by_class").objects]
    assert all(o.color in CLASS_COLORS[o.name] for o in by_class)
    assert {(o.name, o.color) for o in by_class} == {(n, c) for n, pair in CLASS_COLORS.items() for c in pair}
    free = [o for i in range(80) for o in make_scene(scene_rng(0, "val", i), SIZE).objects]
    assert any(o.color not in CLASS_COLORS[o.name] for o in free)  # "any" is not restricted


def test_class_colour_pairs_form_a_ring_so_colour_alone_never_names_the_class():
    owners = {c: [n for n, pair in CLASS_COLORS.items() if c in pair] for c in COLOR_NAMES}
    assert all(len(v) == 2 for v in owners.values())  # every colour is shared by exactly two classes
    assert all(len(set(pair)) == 2 for pair in CLASS_COLORS.values())


def test_colour_mode_draws_the_background_and_the_first_class_as_any_does():
    a = make_scene(scene_rng(2, "val", 7), SIZE)
    b = make_scene(scene_rng(2, "val", 7), SIZE, colors="by_class")
    assert a.background == b.background and len(a.objects) >= 1
    assert [o.name for o in a.objects][:1] == [o.name for o in b.objects][:1]  # same first draw of classes


def test_unknown_colour_mode_is_rejected_with_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown toy colour mode 'rainbow'; valid: any, by_class"):
        make_scene(scene_rng(0, "val", 0), SIZE, colors="rainbow")
    with pytest.raises(ValueError, match="'rainbow'"):
        write_toy_split(tmp_path / "toy", "val", n=2, seed=0, size=SIZE, colors="rainbow")
    assert not (tmp_path / "toy" / "JPEGImages").exists()


def test_a_split_written_in_one_colour_mode_is_not_complete_in_the_other(tmp_path):
    root = tmp_path / "toy"
    write_toy_split(root, "val", n=3, seed=0, size=SIZE, colors="by_class")
    assert split_is_complete(root, "val", 3, 0, SIZE, "by_class")
    assert not split_is_complete(root, "val", 3, 0, SIZE)  # "any" must regenerate, never reuse
    meta = json.loads((root / "toy_val.json").read_text())
    assert meta["colors"] == "by_class"


def test_toy_dataset_keeps_each_colour_mode_in_its_own_folder(tmp_path):
    from carbench.data.toy import toy_dataset

    a = toy_dataset(tmp_path / "toy", n=2, size=32)
    b = toy_dataset(tmp_path / "toy", n=2, size=32, colors="by_class")
    assert (tmp_path / "toy" / "seed0-32px").is_dir() and (tmp_path / "toy" / "seed0-32px-by_class").is_dir()
    assert not np.array_equal(a[0].image, b[0].image) or not np.array_equal(a[1].image, b[1].image)


@pytest.mark.parametrize("key,value", [("n", 0), ("n", 2.5), ("n", "3"), ("n", True), ("seed", -1), ("seed", 1.7),
                                       ("size", 8), ("size", "96")])
def test_a_bad_count_seed_or_size_names_its_key_and_writes_nothing(tmp_path, key, value):
    from carbench.data.toy import toy_dataset

    with pytest.raises(ValueError, match=rf"dataset\.{key} must be an integer ≥ \d+, got {re.escape(repr(value))}"):
        toy_dataset(tmp_path / "toy", **{"n": 2, "size": 32, key: value})
    assert not (tmp_path / "toy").exists()
