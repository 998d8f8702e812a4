"""The browser demo driven through its HTTP API with Gradio's own client, plus its input parsing.

The app runs in this process on a free localhost port with the bundled toy CLIP; every answer is
compared with what `segment()` returns for the same image, queries and settings.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from carbench.demo.app import NO_SCENE, SegmenterCache, build_app
from carbench.demo.config import CONFIG_BACKGROUND, NO_BACKGROUND, compose_demo
from carbench.demo.inputs import InputError, parse_queries, toy_scenes
from carbench.models.factory import build_segmenter

MAX_SIDE = 128
ALL_SHAPES = "circle, square, triangle, star, ring, cross, heart, hexagon"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cfg():
    return compose_demo([])


@pytest.fixture(scope="module")
def client(cfg):
    cache = SegmenterCache(lambda m, p: build_segmenter(m, p, device="cpu", seed=cfg.seed))
    app = build_app(cfg, cache, max_side=MAX_SIDE)
    app.queue(default_concurrency_limit=2)
    app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield Client(app.local_url, verbose=False)
    finally:
        app.close()


def settings(cfg, **changes):
    """The page's default settings as the positional inputs after (upload, scene, queries)."""
    m = cfg.model
    s = {"background": CONFIG_BACKGROUND, "custom": "", "eta": m["mask_threshold"], "theta": m["confidence_threshold"],
         "lam": m["clipes_threshold"], "prompts": list(m["visual_prompts"]), "cam": m["cam"],
         "post": cfg.postprocess["name"]}
    s.update(changes)
    return list(s.values())


def ask(client, cfg, upload, queries, scene=NO_SCENE, **changes):
    args = [handle_file(str(upload)) if upload is not None else None, scene, queries, *settings(cfg, **changes)]
    shown, overlay, steps, kept, times, status = client.predict(*args, api_name="/segment")
    return {"shown": shown, "overlay": overlay, "steps": steps, "kept": kept, "times": times, "status": status}


def reference_kept(cfg, image: np.ndarray, queries: list[str], **model_changes) -> list[str]:
    """What segment() keeps for the same input, built independently of the app's cache."""
    segmenter = build_segmenter({**cfg.model, **model_changes}, cfg.postprocess, device="cpu", seed=cfg.seed)
    pred = segmenter.segment(image, queries)
    return [queries[k] for k in pred.kept], len(pred.trace)


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory) -> tuple[Path, np.ndarray]:
    name, image = next(iter(toy_scenes().items()))
    path = tmp_path_factory.mktemp("demo") / "scene.png"
    Image.fromarray(image).save(path)
    return path, image


def test_uploaded_scene_answers_like_segment(client, cfg, scene_png):
    path, image = scene_png
    out = ask(client, cfg, path, ALL_SHAPES)
    want, steps = reference_kept(cfg, image, [q.strip() for q in ALL_SHAPES.split(",")])
    assert out["status"].startswith("Done"), out["status"]
    assert out["kept"] == ", ".join(want)
    assert len(out["steps"]) == steps  # one panel per recurrent step
    assert Image.open(out["overlay"]).size[0] > image.shape[1]  # overlay row + legend
    assert np.array_equal(np.asarray(Image.open(out["shown"]).convert("RGB")), image)  # what was segmented
    for stage in ("cam", "classifier", "postprocess", "total"):
        assert f"| {stage} |" in out["times"]


def test_settings_reach_the_model(client, cfg, scene_png):
    """θ = 1 keeps nothing above it, so only the never-empty fallback survives: one query kept."""
    path, image = scene_png
    out = ask(client, cfg, path, ALL_SHAPES, theta=1.0, cam="gradcam", post="none", background=NO_BACKGROUND)
    want, _ = reference_kept(cfg, image, [q.strip() for q in ALL_SHAPES.split(",")], confidence_threshold=1.0,
                             cam="gradcam", background_queries=[])
    assert out["kept"] == ", ".join(want) and len(want) == 1


def test_picked_toy_scene_is_segmented(client, cfg):
    name, image = list(toy_scenes().items())[2]
    out = ask(client, cfg, None, ALL_SHAPES, scene=name)
    want, _ = reference_kept(cfg, image, [q.strip() for q in ALL_SHAPES.split(",")])
    assert out["kept"] == ", ".join(want)


@pytest.mark.parametrize(
    ("queries", "message"),
    [
        ("", "The query list is empty"),
        ("  ,  ", "Entry 1, 2 of the query list is blank"),
        ("star, , ring", "Entry 2 of the query list is blank"),
        ("star, ring, star", "Duplicate query: 'star'"),
    ],
)
def test_bad_queries_give_a_message_in_the_page(client, cfg, scene_png, queries, message):
    out = ask(client, cfg, scene_png[0], queries)
    assert out["status"].startswith("**Input problem:**") and message in out["status"]
    assert out["overlay"] is None and out["kept"] == ""


def test_a_file_that_is_not_an_image_gives_a_message(client, cfg, tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("this is not a picture")
    out = ask(client, cfg, fake, "star")
    assert "`notes.png` is not an image this demo can read" in out["status"]
    assert out["overlay"] is None


def test_no_image_gives_a_message(client, cfg):
    out = ask(client, cfg, None, "star")
    assert "No image" in out["status"]


def test_a_huge_image_is_downscaled_with_a_note(client, cfg, tmp_path, scene_png):
    big = tmp_path / "big.png"
    Image.fromarray(scene_png[1]).resize((600, 450), Image.NEAREST).save(big)
    out = ask(client, cfg, big, "star, ring")
    assert "was 600×450; it was downscaled to 128×96" in out["status"]
    assert Image.open(out["shown"]).size == (128, 96)


def test_one_hundred_queries_still_answer(client, cfg, scene_png):
    queries = ALL_SHAPES.split(", ") + [f"thing number {i}" for i in range(92)]
    out = ask(client, cfg, scene_png[0], ", ".join(queries), post="none")
    assert out["status"].startswith("Done") and "of 100 queries" in out["status"]
    want, _ = reference_kept(cfg, scene_png[1], queries)
    assert out["kept"] == ", ".join(want)


def test_two_sessions_at_once_get_their_own_results(client, cfg):
    """Two clients (two tabs) ask at the same time with different scenes and queries."""
    scenes = list(toy_scenes().items())
    jobs = [(scenes[0], "star, ring, cross"), (scenes[4], "circle, square, triangle, hexagon")]
    results: dict[int, dict] = {}

    def tab(i: int) -> None:
        (name, _), queries = jobs[i]
        results[i] = ask(Client(client.src, verbose=False), cfg, None, queries, scene=name)

    threads = [threading.Thread(target=tab, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, ((_, image), queries) in enumerate(jobs):
        want, _ = reference_kept(cfg, image, queries.split(", "))
        assert results[i]["kept"] == ", ".join(want)
        assert np.array_equal(np.asarray(Image.open(results[i]["shown"]).convert("RGB")), image)


def test_missing_weights_show_the_evaluate_error_in_the_page(monkeypatch, tmp_path):
    monkeypatch.setenv("CARBENCH_OFFLINE", "1")
    cfg = compose_demo(["model.classifier=vitl14", f"model.cache_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError) as expected:  # what evaluate.py's builder raises
        build_segmenter(cfg.model, cfg.postprocess, device="cpu")
    from carbench.demo.app import run_once

    cache = SegmenterCache(lambda m, p: build_segmenter(m, p, device="cpu"))
    out = run_once(cache, cfg, toy_scenes(), None, next(iter(toy_scenes())), "star", *settings(cfg))
    status = out[-1]
    assert status == f"**The model could not run:** {type(expected.value).__name__}: {expected.value}"
    assert "vitl14" in status and "Looked in" in status


def test_parse_queries_strips_and_keeps_order():
    assert parse_queries(" star,ring ,  red heart") == ["star", "ring", "red heart"]
    with pytest.raises(InputError, match="background query list is empty"):
        parse_queries(" ", "background query")


def test_compose_refuses_keys_the_demo_does_not_read():
    with pytest.raises(ValueError, match="the demo does not read 'limit'"):
        compose_demo(["limit=5"])
    with pytest.raises(ValueError, match="model=car"):
        compose_demo(["model=dense_clip"])
    assert compose_demo(["model.confidence_threshold=0.5"]).model["confidence_threshold"] == 0.5


@pytest.mark.parametrize("argv,said", [(["--port", "99999"], "--port must be between 0 and 65535"),
                                       (["--max-side", "8"], "--max-side must be at least 16 pixels")])
def test_a_bad_port_or_size_stops_the_demo_before_it_builds_anything(argv, said, capsys):
    from carbench.demo.__main__ import parse_args

    with pytest.raises(SystemExit) as stop:
        parse_args(argv)
    assert stop.value.code == 2 and said in capsys.readouterr().err
