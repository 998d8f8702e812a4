"""The shared plotting (`carbench.viz`) and the run overlays built on it (`engine/overlays.py`)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from carbench import viz
from carbench.engine.overlays import label_names, write_overlay
from carbench.types import BACKGROUND, IGNORE_INDEX, Prediction, Sample

TILE = 40


def two_query_step(kept: list[int]) -> tuple[np.ndarray, dict]:
    image = np.full((20, 20, 3), 100, np.uint8)
    maps = np.zeros((2, 20, 20), np.float32)
    maps[0, 5:15, 5:15] = 1.0
    step = {"step": 1, "alive": [0, 1], "kept": kept, "scores": [0.9, 0.1], "maps": maps,
            "prompted": [image.copy(), image.copy()], "time": {}}
    return image, step


def test_query_palette_ids_shift_queries_and_blank_the_background():
    labels = np.array([[BACKGROUND, 0], [1, 2]])
    assert viz.query_palette_ids(labels).tolist() == [[0, 1], [2, 3]]


def test_blend_paints_labelled_pixels_only():
    image = np.full((2, 2, 3), 50, np.uint8)
    out = viz.blend(image, np.array([[0, IGNORE_INDEX], [1, 2]]))
    assert (out[0] == 50).all()  # background and ignore stay as they were
    assert not np.array_equal(out[1, 0], out[1, 1]) and (out[1] != 50).any(axis=-1).all()


def test_dropped_queries_get_a_red_frame_and_kept_ones_do_not():
    image, step = two_query_step(kept=[0])
    panel = np.asarray(viz.step_panel(image, step, ["star", "ring"], 0.5, {}, tile=TILE))
    cell_w, head = 2 * TILE + 12, 26
    assert tuple(panel[head + TILE // 2, 4 + cell_w]) == viz.DROPPED  # ring's frame (left edge)
    assert tuple(panel[head + TILE // 2, 4]) != viz.DROPPED  # star's tile has no frame


def test_theta_draws_a_line_across_each_score_bar():
    image, step = two_query_step(kept=[0])
    with_line = np.asarray(viz.step_panel(image, step, ["star", "ring"], 0.25, {}, tile=TILE))
    without = np.asarray(viz.step_panel(image, step, ["star", "ring"], None, {}, tile=TILE))
    bar_y = 26 + TILE + 3 + 25  # middle of the first cell's score bar
    bar_w = 2 * TILE + 12 - 64
    x_theta = 4 + round(bar_w * 0.25)
    assert tuple(with_line[bar_y, x_theta]) == viz.TEXT and tuple(without[bar_y, x_theta]) != viz.TEXT


def test_a_step_with_one_small_cell_still_shows_its_whole_title():
    image, step = two_query_step(kept=[0])
    step = {**step, "alive": [0], "scores": [0.9], "maps": step["maps"][:1], "prompted": step["prompted"][:1]}
    panel = viz.step_panel(image, step, ["star"], 0.5, {}, tile=TILE)
    title = "step 1: 1 queries in, kept 1, dropped 0, threshold theta = 0.50 (black line on the bars)"
    assert panel.width >= viz.font(14).getlength(title) + 4
    head = np.asarray(panel)[:26]
    inked = np.flatnonzero((head != 255).any(axis=(0, 2)))
    assert inked.max() < panel.width - 2  # the last letter is drawn inside the canvas, not cut at its edge


def test_one_panel_per_step_and_text_only_cells_without_maps():
    image, step = two_query_step(kept=[0, 1])
    peer_step = {"step": 2, "alive": [0], "kept": [0], "time": {}}  # a peer's trace: no maps, no scores
    panels = viz.step_panels(image, [step, peer_step], ["star", "ring"], 0.5, {}, tile=TILE)
    assert len(panels) == 2 and panels[1].height < panels[0].height


def test_overlay_names_every_class_and_colours_queries_by_their_label_id(tmp_path):
    image = np.full((24, 24, 3), 90, np.uint8)
    target = np.zeros((24, 24), np.int64)
    target[:8] = 3  # a GT class the prediction missed
    pred_labels = np.full((24, 24), BACKGROUND)
    pred_labels[10:20, 10:20] = 1
    labels = np.where(pred_labels == 1, 5, 0)
    masks = np.zeros((2, 24, 24), np.float32)
    pred = Prediction(labels=pred_labels, masks=masks, scores=np.array([0.0, 0.8], np.float32), kept=[1],
                      trace=[{"step": 1, "alive": [0, 1], "kept": [1], "scores": [0.1, 0.8], "time": {}}])
    sample = Sample("img0", image, target, ["cat", "dog"])
    names, colors = label_names(sample, labels, pred, class_names=["bg", "a", "b", "cat", "x", "dog"],
                                label_of_query={"cat": 3, "dog": 5})
    assert names[3] == "cat" and names[5] == "dog" and colors == {0: viz.palette_color(3), 1: viz.palette_color(5)}
    names, colors = label_names(sample, labels, pred)  # without the dataset's names: what was painted
    assert names == {5: "dog"} and colors == {1: viz.palette_color(5)}
    path = write_overlay(tmp_path / "o.png", sample, labels, pred, theta=0.5)
    drawn = Image.open(path)
    assert drawn.width > 3 * 192 and drawn.height > 192  # image | GT | CaR row, legend, step panel below
