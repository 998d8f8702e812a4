"""End to end: `python evaluate.py` on a generated VOC fixture with random-init tiny CLIPs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carbench.data.fixtures import write_voc_fixture

ROOT = Path(__file__).resolve().parents[1]


def run_evaluate(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", CARBENCH_OFFLINE="1")
    cmd = [sys.executable, str(ROOT / "evaluate.py"), f"hydra.run.dir={tmp_path / 'run'}", *overrides]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    return write_voc_fixture(tmp_path_factory.mktemp("voc"), num_val=3, seed=1)


def test_evaluate_voc_fixture_writes_complete_results(tmp_path, voc_root):
    proc = run_evaluate(
        tmp_path, "dataset=voc", f"dataset.root={voc_root}", "model.proposal=tiny_random",
        "model.classifier=tiny_random", "save_predictions=true", "device=cpu", "overlays=1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["num_images"] == {"expected": 3, "evaluated": 3, "failed": 0, "split_size": 3}
    assert res["dataset"]["name"] == "voc21" and res["dataset"]["num_classes"] == 21
    assert 0.0 <= res["metrics"]["mIoU"] <= 100.0
    assert len(res["per_class_iou"]) == 21 and "background" in res["per_class_iou"]
    assert res["queries"][2] == "bird avian" and len(res["queries_hash"]) == 16
    assert res["config"]["model"]["mask_threshold"] == 0.4  # the VOC config's η
    assert res["config"]["model"]["confidence_threshold"] == 0.6
    assert len(res["config"]["model"]["templates"]) == 15
    assert {"cam", "prompts", "classifier", "postprocess", "text"} <= set(res["timing"]["stage_total_s"])
    assert sum(res["steps_histogram"].values()) == 3 and min(map(int, res["steps_histogram"])) >= 2
    assert res["versions"]["torch"] and "git_sha" in res
    ids = (voc_root / "ImageSets/Segmentation/val.txt").read_text().split()
    overlays = sorted((tmp_path / "run" / "overlays").glob("*.png"))
    assert [p.stem for p in overlays] == ids[:1]  # image | GT | CaR | trace, first image only
    for i in ids:  # one palette PNG per image, same stem, same size as the image
        pred = Image.open(tmp_path / "run" / "predictions" / f"{i}.png")
        assert pred.mode == "P"
        assert pred.size == Image.open(voc_root / "JPEGImages" / f"{i}.jpg").size
        assert set(np.unique(np.array(pred))) <= set(range(21))


def test_unknown_preset_fails_at_start_listing_presets(tmp_path, voc_root):
    proc = run_evaluate(tmp_path, "dataset=voc", f"dataset.root={voc_root}", "model.classifier=vitl15")
    assert proc.returncode != 0
    assert "vitl15" in proc.stderr and "vitl14" in proc.stderr


def test_paper_preset_without_weights_fails_offline_with_instructions(tmp_path, voc_root):
    proc = run_evaluate(tmp_path, "dataset=voc", f"dataset.root={voc_root}", "model.classifier=vitl14",
                        "model.proposal=tiny_random", "model.cache_dir=" + str(tmp_path / "hf"))
    assert proc.returncode != 0
    assert "'vitl14'" in proc.stderr and "openai" in proc.stderr and "Looked in" in proc.stderr


def test_missing_dataset_root_names_the_path(tmp_path):
    proc = run_evaluate(tmp_path, "dataset=voc", f"dataset.root={tmp_path / 'nowhere'}")
    assert proc.returncode != 0
    assert str(tmp_path / "nowhere") in proc.stderr


def test_sigterm_prints_what_is_kept_exits_cleanly_and_leaves_no_worker(tmp_path):
    """`python evaluate.py` stopped by SIGTERM mid-run: one line naming the kept images and the resume
    command, exit 128+15, and its DataLoader worker gone with it."""
    import signal
    import time

    voc = write_voc_fixture(tmp_path / "data", num_val=12, seed=3, sizes=[(64, 48)])
    env = dict(os.environ, HF_HUB_OFFLINE="1", CARBENCH_OFFLINE="1", OMP_NUM_THREADS="1")
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "evaluate.py"), f"hydra.run.dir={run}", "dataset=voc", f"dataset.root={voc}",
         "model.proposal=tiny_random", "model.classifier=tiny_random", "device=cpu", "num_workers=1", "threads=1",
         "postprocess=none"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress = run / "progress.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.exists() and len(progress.read_text().splitlines()) >= 2:  # header + one finished image
            break
        time.sleep(0.1)
    workers = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/stat")
               if p.exists() and _ppid(p) == proc.pid]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    kept = len(progress.read_text().splitlines()) - 1
    assert f"{kept} of 12 images kept in {run}; rerun with resume=true" in err
    assert "Traceback" not in err
    time.sleep(0.5)
    assert not [w for w in workers if Path(f"/proc/{w}").exists() and not _zombie(w)]
    assert not (run / "results.json").exists() and not (run / "run.lock").exists()


def _ppid(stat: Path) -> int:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
