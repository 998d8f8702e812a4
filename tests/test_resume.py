"""Interrupted runs resume to identical metrics; failures are counted, never silently dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from carbench.data.fixtures import write_voc_fixture
from carbench.engine import evaluate as engine
from carbench.engine.progress import PROGRESS_FILE, ResumeError

CONF = str(Path(__file__).resolve().parents[1] / "conf")


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    return write_voc_fixture(tmp_path_factory.mktemp("voc"), num_val=5, seed=3)


def make_cfg(voc_root: Path, *extra: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(
            "config",
            overrides=[
                "dataset=voc", f"dataset.root={voc_root}", "model.proposal=tiny_random",
                "model.classifier=tiny_random", "device=cpu", "num_workers=0", "postprocess=none", *extra,
            ],
        )


class Boom(Exception):
    pass


def interrupt_after(monkeypatch, n_ok: int, exc: type[BaseException] = KeyboardInterrupt):
    """Make the model raise on its (n_ok+1)-th image, as a Ctrl-C or crash would."""
    from carbench.models.recurrent import CaR

    real = CaR.segment
    calls = {"n": 0}

    def segment(self, image, queries):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise exc("interrupted")
        return real(self, image, queries)

    monkeypatch.setattr(CaR, "segment", segment)


def test_interrupted_run_resumes_to_identical_metrics(tmp_path, voc_root, monkeypatch):
    full = engine.run_evaluation(make_cfg(voc_root), tmp_path / "full")

    run = tmp_path / "interrupted"
    interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        engine.run_evaluation(make_cfg(voc_root), run)
    assert not (run / "results.json").exists()  # never a half result
    lines = (run / PROGRESS_FILE).read_text().splitlines()
    assert len(lines) == 1 + 2  # header + two finished images
    monkeypatch.undo()

    resumed = engine.run_evaluation(make_cfg(voc_root, "resume=true"), run)
    assert resumed["metrics"] == full["metrics"]
    assert resumed["confusion"] == full["confusion"]
    assert resumed["num_images"] == {"expected": 5, "evaluated": 5, "failed": 0, "split_size": 5}


def test_resume_true_finds_the_unfinished_run_of_the_same_config(tmp_path, voc_root, monkeypatch):
    interrupt_after(monkeypatch, 1)
    first = tmp_path / "outputs" / "a"
    with pytest.raises(KeyboardInterrupt):
        engine.run_evaluation(make_cfg(voc_root, f"resume_search_dir={tmp_path / 'outputs'}"), first)
    monkeypatch.undo()
    res = engine.run_evaluation(
        make_cfg(voc_root, "resume=true", f"resume_search_dir={tmp_path / 'outputs'}"), tmp_path / "outputs" / "b"
    )
    assert Path(res["run_dir"]) == first and (first / "results.json").exists()
    assert res["num_images"]["evaluated"] == 5


def test_torn_last_line_is_dropped_and_redone(tmp_path, voc_root, monkeypatch):
    full = engine.run_evaluation(make_cfg(voc_root), tmp_path / "full")
    run = tmp_path / "torn"
    interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        engine.run_evaluation(make_cfg(voc_root), run)
    monkeypatch.undo()
    p = run / PROGRESS_FILE
    p.write_bytes(p.read_bytes()[:-40])  # crash in the middle of writing image 3's record
    res = engine.run_evaluation(make_cfg(voc_root), run)
    assert res["metrics"] == full["metrics"]


def test_corrupted_state_and_changed_config_are_refused(tmp_path, voc_root, monkeypatch):
    run = tmp_path / "run"
    interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        engine.run_evaluation(make_cfg(voc_root), run)
    monkeypatch.undo()
    with pytest.raises(ResumeError, match="different config"):
        engine.run_evaluation(make_cfg(voc_root, "model.confidence_threshold=0.3"), run)
    p = run / PROGRESS_FILE
    lines = p.read_text().splitlines()
    lines[1] = "{not json"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(ResumeError, match="corrupted"):
        engine.run_evaluation(make_cfg(voc_root), run)


def test_failed_image_is_fatal_by_default_and_recorded_with_skip(tmp_path, voc_root, monkeypatch):
    import shutil

    bad_root = tmp_path / "bad" / "VOC2012"
    shutil.copytree(voc_root, bad_root)
    ids = (bad_root / "ImageSets/Segmentation/val.txt").read_text().split()
    jpg = bad_root / "JPEGImages" / f"{ids[1]}.jpg"
    jpg.write_bytes(jpg.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(RuntimeError, match=rf"{ids[1]}.*on_error=skip"):
        engine.run_evaluation(make_cfg(bad_root), tmp_path / "fatal")
    res = engine.run_evaluation(make_cfg(bad_root, "on_error=skip"), tmp_path / "skip")
    assert res["num_images"] == {"expected": 5, "evaluated": 4, "failed": 1, "split_size": 5}
    assert res["failed_images"][0]["id"] == ids[1]
    assert f"{ids[1]}.jpg" in res["failed_images"][0]["error"]  # the message names the file
    saved = json.loads((tmp_path / "skip" / "results.json").read_text())
    assert saved["failed_images"] == res["failed_images"]


def test_finished_run_dir_is_not_overwritten(tmp_path, voc_root):
    engine.run_evaluation(make_cfg(voc_root, "limit=1"), tmp_path / "done")
    with pytest.raises(ResumeError, match="finished run"):
        engine.run_evaluation(make_cfg(voc_root, "limit=1"), tmp_path / "done")


def test_unwritable_results_dir(tmp_path, voc_root):
    target = tmp_path / "file_not_dir"
    target.write_text("x")
    with pytest.raises(PermissionError, match="not writable"):
        engine.run_evaluation(make_cfg(voc_root), target / "run")


def test_background_workers_give_the_same_result(tmp_path, voc_root):
    a = engine.run_evaluation(make_cfg(voc_root, "limit=3"), tmp_path / "w0")
    b = engine.run_evaluation(make_cfg(voc_root, "limit=3", "num_workers=2"), tmp_path / "w2")
    assert a["metrics"] == b["metrics"] and [r["id"] for r in a["per_image"]] == [r["id"] for r in b["per_image"]]
