"""Reliability: resume checks what it resumes, generated data stays in its own folder,
one run per run dir, strict keys, background-query checks, and one-line messages for the unclear cases.

The engine runs here use a 4-image VOC fixture of 48×40 images with the random tiny CLIP, so each
costs a second or two; the kill/resume property over many random kill points is tests/test_kill_resume.py.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from carbench import runs
from carbench.data.fixtures import write_voc_fixture
from carbench.engine import evaluate as engine
from carbench.engine import run_lock
from carbench.engine.config_check import ConfigKeyError, check_bool_values, check_int_values, check_keys
from carbench.engine.progress import PROGRESS_FILE, Progress, ResumeError, check_record_ids
from carbench.engine.results import write_json_atomic
from carbench.engine.run_identity import header

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
SPLIT = "ImageSets/Segmentation/val.txt"


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def make_cfg(voc_root: Path, *extra: str):
    return compose_cfg("dataset=voc", f"dataset.root={voc_root}", "model.proposal=tiny_random",
                       "model.classifier=tiny_random", "device=cpu", "num_workers=0", "postprocess=none", "threads=1",
                       'model.templates=["a photo of a {}."]', *extra)


@pytest.fixture()
def voc_root(tmp_path) -> Path:
    return write_voc_fixture(tmp_path / "data", num_val=4, seed=7, sizes=[(48, 40), (40, 48)])


def stop_after(monkeypatch, n_ok: int) -> None:
    """Make the model raise KeyboardInterrupt on its (n_ok+1)-th image."""
    from carbench.models.recurrent import CaR

    real, calls = CaR.segment, {"n": 0}

    def segment(self, image, queries):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise KeyboardInterrupt
        return real(self, image, queries)

    monkeypatch.setattr(CaR, "segment", segment)


def interrupted_run(monkeypatch, voc_root: Path, run: Path, n_ok: int = 2) -> None:
    stop_after(monkeypatch, n_ok)
    with pytest.raises(KeyboardInterrupt, match=rf"{n_ok} of 4 images kept in {run}; rerun with resume=true"):
        engine.run_evaluation(make_cfg(voc_root), run)
    monkeypatch.undo()


# ------------------------------------------------------------------------------- 1. resume checks ids and data


def test_resume_after_the_split_was_resorted_is_refused_naming_the_reorder(tmp_path, voc_root, monkeypatch):
    run = tmp_path / "run"
    interrupted_run(monkeypatch, voc_root, run)
    split = voc_root / SPLIT
    ids = split.read_text().split()
    split.write_text("\n".join(reversed(ids)) + "\n")
    with pytest.raises(ResumeError, match=rf"re-ordered \(index 0: {ids[0]} → {ids[-1]}"):
        engine.run_evaluation(make_cfg(voc_root), run)
    assert len((run / PROGRESS_FILE).read_text().splitlines()) == 3  # nothing appended to the refused run


def test_resume_true_after_ids_were_removed_names_them_instead_of_starting_afresh(tmp_path, voc_root, monkeypatch):
    outputs = tmp_path / "outputs"
    interrupted_run(monkeypatch, voc_root, outputs / "a")
    split = voc_root / SPLIT
    ids = split.read_text().split()
    split.write_text("\n".join(ids[1:]) + "\n")
    with pytest.raises(ResumeError, match=rf"cannot resume {outputs / 'a'}: the dataset changed: 1 id\(s\) no longer "
                                          rf"in the split \({ids[0]}\)"):
        engine.run_evaluation(make_cfg(voc_root, "resume=true", f"resume_search_dir={outputs}"), outputs / "b")


def test_resume_after_a_label_was_rewritten_is_refused(tmp_path, voc_root, monkeypatch):
    run = tmp_path / "run"
    interrupted_run(monkeypatch, voc_root, run)
    label = next((voc_root / "SegmentationClass").glob("*.png"))
    os.utime(label, ns=(1, 1))
    with pytest.raises(ResumeError, match="image or label files were modified"):
        engine.run_evaluation(make_cfg(voc_root), run)


def test_records_are_checked_against_the_ids_at_their_index(tmp_path):
    records = {0: {"index": 0, "id": "a"}, 1: {"index": 1, "id": "b"}, 2: {"index": 2, "id": "c"}}
    check_record_ids(records, ["a", "b", "c", "d"], tmp_path)  # same ids: fine
    with pytest.raises(ResumeError, match=r"2 kept record\(s\).*index 0 was 'a', now 'b'; index 1 was 'b', now 'a'"):
        check_record_ids(records, ["b", "a", "c"], tmp_path)
    with pytest.raises(ResumeError, match=r"index 2 \('c'\) is past the end of the split \(2 ids\)"):
        check_record_ids(records, ["a", "b"], tmp_path)


def test_a_refused_resume_names_the_config_keys_that_differ(tmp_path):
    old = header({"seed": 0, "model": {"confidence_threshold": 0.6}}, {"ids": ["a"], "files": "x"}, "h1")
    Progress.open(tmp_path, "h1", header=old)
    new = header({"seed": 0, "model": {"confidence_threshold": 0.3}}, {"ids": ["a"], "files": "x"}, "h2")
    with pytest.raises(ResumeError, match=r"config keys differ: model\.confidence_threshold: 0\.6 → 0\.3\); resume"):
        Progress.open(tmp_path, "h2", header=new)


# ------------------------------------------------------------------------------- 2. generated data: own folder only


def test_toy_dataset_refuses_a_folder_it_did_not_create_and_touches_nothing(tmp_path):
    from carbench.data.generated import NotOurFolderError
    from carbench.data.toy import toy_dataset

    real = tmp_path / "VOC2012"
    (real / "ImageSets" / "Segmentation").mkdir(parents=True)
    (real / SPLIT).write_text("2007_000033\n")
    before = sorted(p.relative_to(real) for p in real.rglob("*"))
    with pytest.raises(NotOurFolderError, match=rf"{real} holds files .* refusing to write into it.*dataset=voc"):
        toy_dataset(real, n=2)
    assert (real / SPLIT).read_text() == "2007_000033\n"
    assert sorted(p.relative_to(real) for p in real.rglob("*")) == before


def test_toy_dataset_in_a_new_folder_is_marked_and_reused(tmp_path):
    from carbench.data.generated import MARKER
    from carbench.data.toy import toy_dataset

    ds = toy_dataset(tmp_path / "toy", n=2, size=32)
    assert (tmp_path / "toy" / MARKER).is_file() and len(ds) == 2
    assert len(toy_dataset(tmp_path / "toy", n=2, size=32)) == 2  # ours: read again without complaint


def test_toy_dataset_on_a_read_only_root_names_the_folder_and_the_fix(tmp_path, monkeypatch):
    from carbench.data.toy import toy_dataset

    def refuse(self, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_text", refuse)
    with pytest.raises(PermissionError, match=rf"cannot write the generated toy dataset into {tmp_path / 'ro'}.*"
                                              r"set dataset\.root=<a writable folder>"):
        toy_dataset(tmp_path / "ro", n=2, size=32)


# ------------------------------------------------------------------------------- 3. one run per run dir


def test_a_live_owner_locks_the_run_dir_and_a_dead_one_is_taken_over(tmp_path, caplog):
    owner = os.getppid()  # alive for the whole test
    (tmp_path / run_lock.LOCK_FILE).write_text(json.dumps(
        {"pid": owner, "host": os.uname().nodename, "start": run_lock._start_time(owner)}))
    with pytest.raises(run_lock.RunDirLockedError, match=rf"in use by another run \(pid {owner}\).*hydra\.run\.dir"):
        run_lock.acquire(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / run_lock.LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    with caplog.at_level(logging.WARNING):
        run_lock.acquire(tmp_path)
    assert json.loads((tmp_path / run_lock.LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"stale lock of {tmp_path} (its owner, pid {dead.pid}, is gone)" in caplog.text
    run_lock.release_held()
    assert not (tmp_path / run_lock.LOCK_FILE).exists()


def test_a_second_run_into_a_locked_dir_fails_naming_the_owner(tmp_path, voc_root):
    run = tmp_path / "run"
    run.mkdir()
    owner = os.getppid()
    (run / run_lock.LOCK_FILE).write_text(json.dumps(
        {"pid": owner, "host": os.uname().nodename, "start": run_lock._start_time(owner)}))
    with pytest.raises(run_lock.RunDirLockedError, match=f"pid {owner}"):
        engine.run_evaluation(make_cfg(voc_root, "limit=1"), run)
    assert not (run / PROGRESS_FILE).exists()  # nothing computed or written by the refused run


def test_default_run_dirs_of_runs_started_in_the_same_second_differ():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        a = compose("config", return_hydra_config=True).hydra.run.dir
        b = compose("config", return_hydra_config=True).hydra.run.dir
    assert a != b and len(Path(a).name.split("-")) == 4  # HH-MM-SS-microseconds


# ------------------------------------------------------------------------------- 4. strict keys


@pytest.mark.parametrize("override,key,nearest", [
    ("+limt=1", "limt", "limit"),
    ("+model.confidance_threshold=0.9", "model.confidance_threshold", "model.confidence_threshold"),
    ("+metric.reduciton=present", "metric.reduciton", "metric.reduction"),
    ("+dataset.split_by=umd", "dataset.split_by", "dataset.split"),  # a referring key on a semantic dataset
])
def test_unknown_keys_are_refused_naming_the_nearest_valid_one(override, key, nearest):
    cfg = OmegaConf.to_container(compose_cfg("dataset=voc", override), resolve=True)
    with pytest.raises(ConfigKeyError, match=rf"unknown config key '{key}'; did you mean '{nearest}'\?"):
        check_keys(cfg)


@pytest.mark.parametrize("overrides", [
    [], ["dataset=voc"], ["dataset=refcocog"], ["dataset=context59"], ["model=clip_es"], ["model=dense_clip"],
    ["model=ovseg"], ["model=precomputed", "model.root=/x", "postprocess=none"], ["+sweep=thresholds"],
    ["protocol=sclip"], ["postprocess=sam"], ["logger=wandb"], ["+bg_queries=TA"],
])
def test_every_shipped_config_combination_passes_the_key_check(overrides):
    cfg = OmegaConf.to_container(compose_cfg(*overrides), resolve=True)
    check_keys(cfg)
    check_int_values(cfg)
    check_bool_values(cfg)  # no shipped file sets a switch to anything but true / false


def test_a_typo_stops_the_run_before_any_work(tmp_path, voc_root):
    with pytest.raises(ConfigKeyError, match="'limt'; did you mean 'limit'"):
        engine.run_evaluation(make_cfg(voc_root, "+limt=1"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key,value", [("seed", 1.7), ("num_workers", "2"), ("threads", 0.5), ("seed", True),
                                       ("overlays", -1), ("overlays", "abc")])
def test_non_integer_seed_workers_threads_are_refused_naming_the_key(key, value):
    cfg = {"seed": 0, "num_workers": 0, "threads": None, "overlays": 0, key: value}
    with pytest.raises(ValueError, match=rf"^{key} must be an integer .* got {value!r}"):
        check_int_values(cfg)
    check_int_values({"seed": 3, "num_workers": 0, "threads": None})


@pytest.mark.parametrize("override,key", [("resume=maybe", "resume"), ("model.double_softmax=no", "model.double_softmax"),
                                          ("save_predictions=1", "save_predictions"),
                                          ("model.proposer.refine=off", "model.proposer.refine")])
def test_a_switch_set_to_anything_but_true_or_false_stops_the_run_before_any_work(tmp_path, voc_root, override, key):
    with pytest.raises(ValueError, match=rf"^{re.escape(key)} is a switch and must be true or false"):
        engine.run_evaluation(make_cfg(voc_root, override), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------- 5. background queries


def test_background_queries_get_the_foreground_checks():
    from carbench.models.queries import check_background_queries

    assert check_background_queries(["cat", "dog"], ["sky", "wall"]) == ["sky", "wall"]
    assert check_background_queries(["cat"], []) == []
    with pytest.raises(ValueError, match=r"background queries \['Cat'\] are also class queries"):
        check_background_queries(["cat", "dog"], ["sky", "Cat"])
    with pytest.raises(ValueError, match=r"background queries must be non-empty strings, got \[''\]"):
        check_background_queries(["cat"], ["sky", ""])
    with pytest.raises(ValueError, match=r"duplicate background queries \['sky'\]"):
        check_background_queries(["cat"], ["sky", "sky"])


def test_car_refuses_a_background_query_equal_to_a_class(scene):
    from carbench.models.factory import build_segmenter

    car = build_segmenter({"proposal": "tiny_random", "classifier": "tiny_random", "background_queries": ["car"],
                           "templates": ["a photo of a {}."]}, None, seed=0)
    with pytest.raises(ValueError, match=r"\['car'\] are also class queries.*model\.background_queries"):
        car.segment(scene, ["car", "tree"])


# ------------------------------------------------------------------------------- unclear cases: one-line messages


def test_huge_image_allocation_failure_names_the_size_and_the_cap():
    from carbench.engine.oom import ImageTooLargeError, explain_out_of_memory

    class S:
        image = np.zeros((12000, 20000, 3), np.uint8)

    err = RuntimeError("[enforce fail at alloc_cpu.cpp:83] DefaultCPUAllocator: can't allocate memory: you tried to "
                       "allocate 562000000000 bytes. Error code 12 (Cannot allocate memory)")
    out = explain_out_of_memory(err, S())
    assert isinstance(out, ImageTooLargeError)
    assert "20000×12000 pixels (240.0 MP), it asked for 562.0 GB" in str(out) and "protocol=sclip" in str(out)
    other = ValueError("bad label")
    assert explain_out_of_memory(other, S()) is other


def test_label_of_the_exif_rotated_view_names_exif_orientation(tmp_path):
    from carbench.data import VOCSegmentation

    root = write_voc_fixture(tmp_path / "d", num_val=1, seed=0, sizes=[(48, 40)])
    sid = (root / SPLIT).read_text().split()[0]
    jpg = root / "JPEGImages" / f"{sid}.jpg"
    im = Image.open(jpg)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(jpg, exif=exif)
    lab = Image.open(root / "SegmentationClass" / f"{sid}.png")
    lab.transpose(Image.Transpose.TRANSPOSE).save(root / "SegmentationClass" / f"{sid}.png")
    with pytest.raises(ValueError, match=r"transpose of its image .* EXIF orientation is 6 \(rotated 90° clockwise\)"
                                         r".*never EXIF-rotated"):
        VOCSegmentation(root)[0]


def test_split_file_with_a_bom_is_read_and_utf16_is_refused_with_the_fix(tmp_path):
    from carbench.data import VOCSegmentation

    root = write_voc_fixture(tmp_path / "d", num_val=2, seed=0, sizes=[(48, 40)])
    ids = (root / SPLIT).read_text().split()
    (root / SPLIT).write_bytes(("\n".join(ids) + "\n").encode("utf-8-sig"))
    assert VOCSegmentation(root).ids == ids
    (root / SPLIT).write_bytes(("\n".join(ids) + "\n").encode("utf-16"))
    with pytest.raises(ValueError, match=r"is UTF-16 encoded.*iconv -f UTF-16 -t UTF-8"):
        VOCSegmentation(root)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_results_json_is_strict_json_and_honours_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "results.json", {"mIoU": float("nan"), "iou": [1.0, np.float32("nan")]})
    finally:
        os.umask(old)
    text = (tmp_path / "results.json").read_text()
    assert "NaN" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON token {c}")) == {
        "mIoU": None, "iou": [1.0, None]}
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == mode


def test_every_image_failed_with_skip_writes_null_and_fails(tmp_path, voc_root):
    for jpg in (voc_root / "JPEGImages").glob("*.jpg"):
        jpg.write_bytes(b"not a jpeg")
    with pytest.raises(RuntimeError, match=r"all 4 images failed \(on_error=skip\), so there is no metric"):
        engine.run_evaluation(make_cfg(voc_root, "on_error=skip"), tmp_path / "run")
    res = json.loads((tmp_path / "run" / "results.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert res["metrics"]["mIoU"] is None and res["num_images"]["failed"] == 4


def test_a_full_disk_is_blamed_not_the_image(tmp_path, voc_root, monkeypatch):
    from carbench.engine.disk import OutputWriteError

    real = Progress._append

    def append(self, rec):
        if not rec.get("header"):
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        real(self, rec)

    monkeypatch.setattr(Progress, "_append", append)
    with pytest.raises(OutputWriteError) as info:
        engine.run_evaluation(make_cfg(voc_root, "on_error=skip"), tmp_path / "run")
    msg = str(info.value)
    assert f"cannot write to run dir {tmp_path / 'run'}: the disk is full" in msg and "failed:" not in msg
    assert "hydra.run.dir=<another disk>" in msg


def test_sigterm_in_the_loop_says_what_is_kept(tmp_path):
    from carbench.engine import distributed as dist_util
    from carbench.engine.interrupts import RunInterrupted, Terminated
    from carbench.engine.loop import run_guarded

    prog = Progress.open(tmp_path, "h")
    prog.add({"index": 0, "id": "a", "status": "failed", "error": "E"})

    class NoLog:
        def finish(self, *_a):
            pass

    def loop():
        raise Terminated("signal 15")

    with pytest.raises(RunInterrupted) as info:
        run_guarded(loop, NoLog(), tmp_path, prog, dist_util.DistContext(), 7)
    assert info.value.message == f"1 of 7 images kept in {tmp_path}; rerun with resume=true"
    assert info.value.exit_code == 143


@pytest.mark.parametrize("content,what", [("", "is empty"), ('{"metrics": {"mIoU": 1', "is not valid JSON"),
                                          ('{"metrics": {}}', "lacks num_images, config"), ("[1]", "holds a JSON list")])
def test_regress_and_report_name_an_unreadable_results_file(tmp_path, capsys, content, what):
    from carbench import regress, report

    path = tmp_path / "results.json"
    path.write_text(content)
    assert regress.main([str(path), "--against", "toy"]) == 2
    err = capsys.readouterr().err
    assert f"{path} {what}" in err
    assert report.main([str(path)]) == 2
    assert str(path) in capsys.readouterr().err


def test_report_lists_the_failed_jobs_of_a_multirun(tmp_path):
    from carbench import report

    good = json.loads((ROOT / "tests" / "data" / "results_min.json").read_text()) if (
        ROOT / "tests" / "data" / "results_min.json").exists() else {
        "metrics": {"mIoU": 50.0}, "num_images": {"evaluated": 1, "split_size": 1, "failed": 0},
        "config": {"model": {"confidence_threshold": 0.5}}, "dataset": {"name": "voc21"}}
    for i in range(3):
        (tmp_path / str(i) / ".hydra").mkdir(parents=True)
        (tmp_path / str(i) / ".hydra" / "overrides.yaml").write_text(f"- model.confidence_threshold=0.{i + 5}\n")
    (tmp_path / "0" / "results.json").write_text(json.dumps(good))
    (tmp_path / "1" / "progress.jsonl").write_text('{"header": true}\n{"index": 0}\n')
    (tmp_path / "2" / "results.json").write_text("{")  # cut short
    out = report.report(tmp_path)
    assert len(out["rows"]) == 1 and len(out["failed"]) == 2
    assert "**2 failed job(s)**" in out["markdown"]
    assert "model.confidence_threshold=0.6): stopped after 1 image(s)" in out["markdown"]
    assert f"{tmp_path / '2' / 'results.json'} is not valid JSON" in out["markdown"]
    assert report.main([str(tmp_path)]) == 1


def test_toy_model_build_logs_no_random_init_warning(caplog):
    from carbench.toy.model import build_toy_clip

    with caplog.at_level(logging.INFO):
        build_toy_clip(seed=0)
    assert "No pretrained weights loaded" not in caplog.text


def test_third_party_info_noise_is_silenced_in_run_logs():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        hydra_cfg = compose("config", return_hydra_config=True).hydra
    assert hydra_cfg.job_logging.loggers.matplotlib.level == "WARNING"


def test_nan_metric_reads_as_absent():
    assert runs.metric_value({"metrics": {"mIoU": None}}, "mIoU") is None
    assert math.isclose(runs.metric_value({"metrics": {"mIoU": 1.5}}, "mIoU"), 1.5)


def test_toy_worlds_of_different_seeds_live_side_by_side_and_never_overwrite_each_other(tmp_path):
    """Generating seed 1 into the same root must leave seed 0's files (and any run reading them) untouched."""
    import hashlib

    from carbench.data.toy import toy_dataset

    def digest(ds) -> str:
        h = hashlib.sha256()
        for sid in ds.ids:
            h.update(ds[ds.ids.index(sid)].image.tobytes())
        return h.hexdigest()

    zero = toy_dataset(tmp_path / "toy", n=3, seed=0, size=32)
    before = digest(zero)
    one = toy_dataset(tmp_path / "toy", n=3, seed=1, size=32)
    assert digest(one) != before  # a different world...
    assert digest(toy_dataset(tmp_path / "toy", n=3, seed=0, size=32)) == before  # ...that left seed 0 as it was
    assert {p.name for p in (tmp_path / "toy").iterdir() if p.is_dir()} == {"seed0-32px", "seed1-32px"}
