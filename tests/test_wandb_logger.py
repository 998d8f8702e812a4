"""`logger=wandb` in offline mode: the files W&B wrote hold the config, metrics, per-class table, overlays.

W&B's offline run is a LevelDB-log file of protobuf records (`run-*.wandb`); `read_wandb_records`
decodes it the way `wandb sync` would, so the test checks what would be uploaded, not our intent.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from carbench.engine import loggers

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 32768
FILE_HEADER = 7  # b":W&B" + magic (2 bytes) + version (1 byte)


def read_wandb_records(path: Path) -> list:
    """Every protobuf Record of a .wandb file (LevelDB log format: 32 KiB blocks, 7-byte record headers)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    out, pos, pending = [], FILE_HEADER, b""
    while pos + 7 <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < 7:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL/FIRST start; MIDDLE/LAST continue
        if kind in (1, 4):  # FULL or LAST: a whole record
            rec = pb.Record()
            rec.ParseFromString(pending)
            out.append(rec)
            pending = b""
    return out


def wandb_view(run_dir: Path) -> dict:
    """Config, summary, history keys and run group from the single offline run under run_dir/wandb."""
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    view: dict = {"config": {}, "summary": {}, "history": {}, "group": None, "dir": files[0].parent}
    for rec in read_wandb_records(files[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            view["group"] = rec.run.run_group
            for item in rec.run.config.update:
                view["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                view["config"][item.key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in rec.summary.update:
                key = item.key or "/".join(item.nested_key)
                view["summary"][key] = json.loads(item.value_json)
        elif kind == "history":  # media items are nested: (key, field) → value
            for item in rec.history.item:
                path = [item.key] if item.key else list(item.nested_key)
                node = view["history"]
                for part in path[:-1]:
                    node = node.setdefault(part, {})
                node[path[-1]] = json.loads(item.value_json)
    return view


def run_evaluate(tmp_path: Path, *overrides: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HF_HUB_OFFLINE="1", CARBENCH_OFFLINE="1", OMP_NUM_THREADS="1", HOME=str(tmp_path / "home"),
               WANDB_CONFIG_DIR=str(tmp_path / "wbconfig"), WANDB_CACHE_DIR=str(tmp_path / "wbcache"))
    env.update(env_extra or {})
    cmd = [sys.executable, str(ROOT / "evaluate.py"), "dataset=voc_fixture", f"dataset.root={tmp_path / 'voc'}",
           "limit=2", "postprocess=none", "device=cpu", "num_workers=0", *overrides]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_offline_run_files_hold_config_metrics_table_and_overlays(tmp_path):
    proc = run_evaluate(tmp_path, "logger=wandb", "+sweep=cam", "model.cam=clip_es", "model.max_steps=null",
                        f"hydra.sweep.dir={tmp_path / 'mr'}", env_extra={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "mr" / "0"
    res = json.loads((run_dir / "results.json").read_text())
    view = wandb_view(run_dir)
    assert f"W&B offline (WANDB_MODE): run files in {view['dir']}" in proc.stdout
    assert view["group"] == "cam"  # run group = the sweep's name
    assert view["config"]["model"]["confidence_threshold"] == res["config"]["model"]["confidence_threshold"]
    assert view["config"]["model"]["cam"] == "clip_es" and view["config"]["dataset"]["name"] == "voc_fixture"
    assert view["summary"]["mIoU"] == pytest.approx(res["metrics"]["mIoU"])
    assert view["summary"]["images/evaluated"] == 2
    history, files = view["history"], view["dir"] / "files"
    assert history["mIoU"] == pytest.approx(res["metrics"]["mIoU"])
    assert history["per_class_iou"]["_type"] == "table-file" and history["per_class_iou"]["nrows"] == 21
    table = json.loads((files / history["per_class_iou"]["path"]).read_text())
    assert table["columns"] == ["class", "IoU"] and len(table["data"]) == 21
    by_class = dict(table["data"])
    for name, iou in res["per_class_iou"].items():  # NaN (class absent) is logged as null
        assert by_class[name] == (None if iou != iou else pytest.approx(iou))
    for image_id in ("2007_000033", "2007_000042"):  # the overlay PNGs the run wrote, uploaded as images
        item = history[f"overlays/{image_id}"]
        assert item["_type"] == "image-file" and image_id in item["caption"]
        assert (files / item["path"]).read_bytes() == (run_dir / "overlays" / f"{image_id}.png").read_bytes()


def test_no_api_key_means_offline_and_the_run_says_where(tmp_path):
    proc = run_evaluate(tmp_path, "logger=wandb", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    view = wandb_view(tmp_path / "run")
    assert "no W&B API key" in proc.stdout and f"wandb sync {view['dir']}" in proc.stdout
    assert view["group"] == ""  # no sweep → ungrouped


def test_a_crashing_wandb_never_stops_the_run(tmp_path, monkeypatch, caplog):
    """wandb.init raising (bad install, server error) leaves a warning, the run finishes normally."""
    import wandb

    def boom(*args, **kwargs):
        raise RuntimeError("wandb exploded")

    monkeypatch.setattr(wandb, "init", boom)
    logger = loggers.build_logger({"logger": {"name": "wandb", "mode": "offline"}})
    logger.start({"model": {}}, tmp_path)
    logger.finish({"metrics": {"mIoU": 1.0}}, tmp_path)
    assert "wandb exploded" in caplog.text


def test_auto_mode_choice(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert loggers.choose_wandb_mode("auto")[0] == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert loggers.choose_wandb_mode("auto") == ("disabled", "WANDB_MODE")
    assert loggers.choose_wandb_mode("offline") == ("offline", "logger.mode")
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password k123\n")
    assert loggers.has_wandb_api_key("https://api.wandb.ai")
    with pytest.raises(ValueError, match="logger.mode"):
        loggers.choose_wandb_mode("sometimes")


def test_overlays_follow_the_logger():
    assert loggers.overlay_count({"overlays": 0, "logger": {"name": "none"}}) == 0
    assert loggers.overlay_count({"overlays": 0, "logger": {"name": "wandb", "max_overlays": 4}}) == 4
    assert loggers.overlay_count({"overlays": 9, "logger": {"name": "wandb", "max_overlays": 4}}) == 9


def test_referring_runs_are_logged_once(tmp_path, monkeypatch):
    """A real referring run (REFER fixture, random tiny CLIP) is logged by its engine: one W&B run whose
    summary holds the referring metrics of results.json (wandb_view asserts there is exactly one run)."""
    from hydra import compose, initialize_config_dir

    from carbench.data.fixtures_more import write_refer_fixture
    from carbench.engine import evaluate as engine

    refer = write_refer_fixture(tmp_path / "refer")
    run_dir = tmp_path / "run"
    monkeypatch.setenv("WANDB_MODE", "offline")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[
            "dataset=refcoco", f"dataset.root={refer}", "model.proposal=tiny_random", "model.classifier=tiny_random",
            "device=cpu", "num_workers=0", "postprocess=none", "logger=wandb",
        ])
    results = engine.run_evaluation(cfg, run_dir)
    view = wandb_view(run_dir)
    assert view["summary"]["mIoU"] == pytest.approx(results["metrics"]["mIoU"])
    assert view["summary"]["oIoU"] == pytest.approx(results["metrics"]["oIoU"])
    assert view["config"]["dataset"]["task"] == "referring"
