"""The referring engine end to end: hand-computed metrics, resume, on_error, and evaluate.py runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from carbench.data.fixtures_more import write_refer_fixture
from carbench.engine import loop as engine
from carbench.engine.evaluate import run_evaluation
from carbench.engine.interrupts import RunInterrupted
from carbench.models.referring import ReferringCaR
from carbench.types import BACKGROUND, Prediction

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.proposal=tiny_random", "model.classifier=tiny_random", "device=cpu", "num_workers=0"]

# Predicted rectangles (x0, y0, x1, y1) per expression of the refcoco val split. GT (fixture):
#   "the man on the left", "guy in redblue" → ann 101 = rows 2..9 × cols 2..11 (80 px)
#   "the car" → ann 102: 150 px covered once by its two squares (175 px in their union), all inside (0,0)-(15,15)
ORACLE = {"the man on the left": (2, 2, 12, 10),  # = GT: I 80, U 80, IoU 1
          "guy in redblue": (2, 2, 12, 6),        # top half of GT: I 40, U 80, IoU 0.5
          "the car": (0, 0, 15, 15)}              # 225 px ⊇ GT: I 150, U 225, IoU 2/3


class Oracle:
    """Predicts a fixed rectangle per expression; optionally fails or interrupts on chosen ones, or sends
    this process signals (`signal_on`: {call number: [signal, ...]}) in the middle of a call."""

    def __init__(self, fail_on: str | None = None, interrupt_after: int | None = None,
                 signal_on: dict[int, list[int]] | None = None) -> None:
        self.fail_on, self.interrupt_after, self.calls = fail_on, interrupt_after, 0
        self.signal_on = signal_on or {}

    def segment(self, image: np.ndarray, queries: list[str]) -> Prediction:
        self.calls += 1
        if self.interrupt_after is not None and self.calls > self.interrupt_after:
            raise KeyboardInterrupt("simulated Ctrl-C")
        for sig in self.signal_on.get(self.calls, []):
            os.kill(os.getpid(), sig)  # the handler runs at the next bytecode
        if queries[0] == self.fail_on:
            raise ValueError("simulated model failure")
        x0, y0, x1, y1 = ORACLE[queries[0]]
        labels = np.full(image.shape[:2], BACKGROUND, np.int64)
        labels[y0:y1, x0:x1] = 0
        mask = (labels == 0).astype(np.float32)[None]
        trace = [{"step": 1, "alive": [0], "kept": [0], "scores": [1.0], "time": {"cam": 0.0}}]
        return Prediction(labels=labels, masks=mask, scores=np.ones(1, np.float32), kept=[0], trace=trace)


@pytest.fixture(scope="module")
def refer(tmp_path_factory) -> Path:
    return write_refer_fixture(tmp_path_factory.mktemp("refer"))


def make_cfg(refer: Path, *extra: str, dataset: str = "refcoco"):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"dataset={dataset}", f"dataset.root={refer}", *TINY, *extra])


def use(monkeypatch, oracle: Oracle) -> None:
    monkeypatch.setattr(engine, "build_model", lambda *a, **k: oracle)


def test_metrics_match_hand_computation(tmp_path, refer, monkeypatch) -> None:
    use(monkeypatch, Oracle())
    res = run_evaluation(make_cfg(refer, "save_predictions=true"), tmp_path / "run")
    m = res["metrics"]
    assert m["mIoU"] == pytest.approx((1 + 0.5 + 2 / 3) / 3 * 100)   # 72.22
    assert m["oIoU"] == pytest.approx(270 / 385 * 100) == m["cIoU"]  # (80+40+150)/(80+80+225) = 70.13
    precs = [m[f"prec@{t}"] for t in (0.5, 0.6, 0.7, 0.8, 0.9)]
    assert precs == pytest.approx([100, 200 / 3, 100 / 3, 100 / 3, 100 / 3])
    assert res["num_samples"] == {"expected": 3, "evaluated": 3, "failed": 0, "split_size": 3}
    assert [(s["id"], s["I"], s["U"]) for s in res["per_sample"]] == [
        ("ref10_sent100", 80, 80), ("ref10_sent101", 40, 80), ("ref11_sent102", 150, 225)]
    on_disk = json.loads((Path(res["run_dir"]) / "results.json").read_text())
    assert on_disk["metrics"] == m and on_disk["task"] == "referring" and len(on_disk["queries_hash"]) == 16
    assert sorted(p.name for p in (Path(res["run_dir"]) / "predictions").glob("*.png")) == [
        "ref10_sent100.png", "ref10_sent101.png", "ref11_sent102.png"]


def test_union_mask_rule_changes_only_the_overlap_sample(tmp_path, refer, monkeypatch) -> None:
    use(monkeypatch, Oracle())
    res = run_evaluation(make_cfg(refer, "dataset.mask_rule=union"), tmp_path / "run")
    assert res["per_sample"][2]["I"] == 175 and res["per_sample"][2]["U"] == 225
    assert res["metrics"]["oIoU"] == pytest.approx(295 / 385 * 100)


def test_interrupted_run_resumes_to_identical_metrics(tmp_path, refer, monkeypatch) -> None:
    use(monkeypatch, Oracle())
    full = run_evaluation(make_cfg(refer), tmp_path / "full")
    use(monkeypatch, Oracle(interrupt_after=1))
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(make_cfg(refer), tmp_path / "cut")
    lines = (tmp_path / "cut" / "progress.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["intersection"] == 80  # header + one finished sample
    second = Oracle()
    use(monkeypatch, second)
    resumed = run_evaluation(make_cfg(refer), tmp_path / "cut")
    assert second.calls == 2 and resumed["metrics"] == full["metrics"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_inside_the_model_keeps_that_sample_and_stops_before_the_next(tmp_path, refer, monkeypatch, capfd,
                                                                              sig) -> None:
    use(monkeypatch, Oracle())
    full = run_evaluation(make_cfg(refer), tmp_path / "full")
    cut = tmp_path / "cut"
    use(monkeypatch, Oracle(signal_on={2: [sig]}))
    with pytest.raises(RunInterrupted) as info:
        run_evaluation(make_cfg(refer), cut)
    # the sample being segmented when the signal came is finished and recorded; the third is not started
    assert info.value.message == f"2 of 3 images kept in {cut}; rerun with resume=true"
    assert info.value.exit_code == 128 + sig
    name, again = ("Ctrl-C", "press Ctrl-C again") if sig == signal.SIGINT else ("SIGTERM", "send it again")
    assert f"{name}: stopping once the current sample is kept; {again} to stop at once" in capfd.readouterr().err
    assert len((cut / "progress.jsonl").read_text().splitlines()) == 3  # header + two samples
    rest = Oracle()
    use(monkeypatch, rest)
    assert run_evaluation(make_cfg(refer), cut)["metrics"] == full["metrics"] and rest.calls == 1


def test_a_second_signal_inside_the_model_stops_at_once(tmp_path, refer, monkeypatch) -> None:
    cut = tmp_path / "cut"
    use(monkeypatch, Oracle(signal_on={2: [signal.SIGINT, signal.SIGINT]}))
    with pytest.raises(RunInterrupted) as info:
        run_evaluation(make_cfg(refer), cut)
    # the second Ctrl-C raised inside call 2: sample 1 (pipelined behind it) is kept, sample 2 is not
    assert info.value.message == f"1 of 3 images kept in {cut}; rerun with resume=true"
    assert len((cut / "progress.jsonl").read_text().splitlines()) == 2


def test_on_error_skip_counts_the_failure_and_excludes_it(tmp_path, refer, monkeypatch) -> None:
    use(monkeypatch, Oracle(fail_on="guy in redblue"))
    res = run_evaluation(make_cfg(refer, "on_error=skip"), tmp_path / "run")
    assert res["num_samples"] == {"expected": 3, "evaluated": 2, "failed": 1, "split_size": 3}
    assert res["failed_samples"][0]["id"] == "ref10_sent101"
    assert res["metrics"]["mIoU"] == pytest.approx((1 + 2 / 3) / 2 * 100)
    assert res["metrics"]["oIoU"] == pytest.approx(230 / 305 * 100)
    use(monkeypatch, Oracle(fail_on="guy in redblue"))
    with pytest.raises(RuntimeError, match="sample ref10_sent101 .* failed"):
        run_evaluation(make_cfg(refer), tmp_path / "raise")


class Stub:
    """A semantic segmenter returning fixed soft masks and scores (what CaR returns without a CRF)."""

    def __init__(self, masks: np.ndarray, scores: list[float]) -> None:
        self.masks, self.scores = masks.astype(np.float32), np.asarray(scores, np.float32)

    def segment(self, image, queries):
        return Prediction(labels=np.zeros(image.shape[:2], np.int64), masks=self.masks, scores=self.scores,
                          kept=[k for k, s in enumerate(self.scores) if s > 0], trace=[{"time": {}}])


def test_ref_mode_merge_is_score_weighted_with_the_union_fallback() -> None:
    image = np.zeros((20, 10, 3), np.uint8)
    a, b = np.zeros((20, 10)), np.zeros((20, 10))
    a[0:10], b[5:15] = 1, 1
    # weights .8/.2: rows 0..4 → .8, rows 5..9 → 1, rows 10..14 → .2: foreground = rows 0..9
    fg = ReferringCaR(Stub(np.stack([a, b]), [0.8, 0.2])).segment(image, ["x", "y"]).labels == 0
    assert fg[:10].all() and not fg[10:].any()
    # a merge covering ≤ 5 % of the image falls back to the union of the masks
    c, d = np.zeros((20, 10)), np.zeros((20, 10))
    c[0, 0:5], d[19, 0:5] = 1, 1
    fg = ReferringCaR(Stub(np.stack([c, d]), [0.5, 0.5])).segment(image, ["x", "y"]).labels == 0
    assert fg.sum() == 10 and fg[0, :5].all() and fg[19, :5].all()


def test_evaluate_refcoco_end_to_end(tmp_path, refer) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", CARBENCH_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), f"hydra.run.dir={tmp_path / 'run'}", "dataset=refcoco",
         f"dataset.root={refer}", "dataset.split=testA", "overlays=1", *TINY],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "exprs: expected 2, evaluated 2, failed 0 (1 images)" in proc.stdout
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["dataset"]["split"] == "testA" and res["dataset"]["mode"] == "expression"
    assert set(res["metrics"]) == {"mIoU", "oIoU", "cIoU", "prec@0.5", "prec@0.6", "prec@0.7", "prec@0.8", "prec@0.9"}
    assert all(0.0 <= v <= 100.0 for v in res["metrics"].values())
    m = res["config"]["model"]
    assert (m["mask_threshold"], m["confidence_threshold"], m["clipes_threshold"]) == (0.5, 0.3, 0.5)
    assert m["double_softmax"] is False and m["templates"] == ["a clean origami {}."]
    assert res["steps_histogram"] == {"2": 2}  # one query: score 1, two steps (docs/method.md §3)
    assert (tmp_path / "run" / "overlays" / "ref12_sent103.png").is_file()


@pytest.mark.parametrize(("dataset", "extra", "n", "thresholds"), [
    ("refcoco+", ["dataset.mode=ref"], 2, (0.2, 0.1, 0.5)),
    ("refcocog", ["dataset.split=test"], 3, (0.5, 0.1, 0.6)),
])
def test_refcoco_plus_and_g_in_process(tmp_path, refer, dataset, extra, n, thresholds) -> None:
    res = run_evaluation(make_cfg(refer, *extra, "postprocess=none", dataset=dataset), tmp_path / "run")
    assert res["dataset"]["name"] == dataset and res["num_samples"]["evaluated"] == n
    m = res["config"]["model"]
    assert (m["mask_threshold"], m["confidence_threshold"], m["clipes_threshold"]) == thresholds
    assert res["config"]["dataset"]["split_by"] == ("umd" if dataset == "refcocog" else "unc")
