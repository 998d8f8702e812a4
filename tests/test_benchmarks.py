"""Smoke runs of the throughput benchmarks on CPU with tiny random models: they run end to end,
write the figures they promise, and their built-in checks (batched = unbatched, bf16 = fp32 where no
autocast applies, transport round trip) hold."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"carbench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_bench_gpu_tiny_cpu_run_writes_every_measurement(tmp_path, keep_threads):
    report = _load("bench_gpu").main(["--device", "cpu", "--tiny", "--threads", "1", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert saved["runs"].keys() == report["runs"].keys()
    best = saved["best_batch"]  # the faster of batch 1 and 2 for the CLIP work
    assert best == min((1, 2), key=lambda b: saved["runs"][f"clip b{b}"]["ms_per_image"])
    assert set(saved["runs"]) == {"clip b1", "clip b2", "end to end b1 w1", f"end to end b{best} w1"}
    for run in saved["runs"].values():
        assert run["images"] == 2 and run["ms_per_image"] > 0
        assert run["stage_ms_per_image"]["cam"] > 0 and run["stage_ms_per_image"]["classifier"] > 0
        assert run["steps"] == [2, 2]  # θ = 0 pins the work: every query kept, the second step confirms it
        assert run["gpu_util"]["mean_pct"] is None and "CPU" in run["gpu_util"]["note"]
    wide = saved["runs"]["end to end b1 w1"]
    assert wide["workers"] == 1 and wide["stage_ms_per_image"]["postprocess"] > 0  # the CRF ran in the worker
    assert saved["crf_in_process_ms_per_image"] > 0
    flops = saved["flops"]  # the FLOP bound follows from the count and the peak given
    assert flops["per_image_gflop"] > 0 and flops["peak_tflops"] == 989.0
    assert flops["flop_bound_ms_per_image"] == pytest.approx(flops["per_image_gflop"] / 989.0)
    agree = saved["bf16_vs_fp32"]  # on CPU both runs are fp32: the comparison must find them identical
    assert agree["kept_set_equal"] == agree["images"] == 2
    assert agree["label_agreement_min"] == 1.0 and agree["miou_diff"] == 0.0
    table = (tmp_path / "bench_gpu.md").read_text()
    assert "| clip b2 | 2 |" in table and "bf16 vs fp32" in table


def test_bench_gpu_budget_guard_skips_what_would_overrun(tmp_path, keep_threads):
    report = _load("bench_gpu").main(["--device", "cpu", "--tiny", "--threads", "1", "--budget-s", "0.5",
                                      "--out", str(tmp_path)])
    assert list(report["runs"]) == ["clip b1"]  # the first measurement sets the estimate; nothing else fits
    assert any(s.startswith("skipped batch 2") for s in report["skipped"])
    assert any(s.startswith("skipped bf16 vs fp32") for s in report["skipped"])
    assert "bf16_vs_fp32" not in report and "flops" not in report and "skipped batch 2" in (tmp_path / "bench_gpu.md").read_text()


def test_bench_car_batched_fast_mode_matches_reference_and_reports_ratios(tmp_path, keep_threads):
    torch.set_num_threads(1)
    out = tmp_path / "car.json"
    report = _load("bench_car").main(["--proposal", "tiny_random", "--classifier", "tiny_random", "--images", "2",
                                      "--ref-images", "2", "--queries", "3", "--batch", "2", "--out", str(out)])
    assert json.loads(out.read_text())["ratio_as_run"] == report["ratio_as_run"] > 0
    assert report["ratio_steady"] > 0 and report["fast"]["batch"] == 2 and report["reference"]["batch"] == 1
    # batched fast mode against the one-at-a-time reference: same kept queries; the label maps may differ
    # on a handful of pixels where float summation order tips a CRF decision (tiny random weights)
    assert report["kept_sets_equal_on_common_images"] and report["label_agreement_min"] > 0.999


def test_bench_crf_measures_workers_and_transport(tmp_path):
    """Run as a script: its workers are spawned processes that must find the script's own functions."""
    out = tmp_path / "crf.json"
    proc = subprocess.run([sys.executable, str(BENCH / "bench_crf.py"), "--images", "2", "--size", "60", "45",
                           "--maps", "3", "--workers", "0", "1", "--transport-repeats", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert set(report["throughput"]) == {"0", "1"} and report["crf_labels"] == 4
    assert report["throughput"]["1"]["workers"] == 1 and report["throughput"]["1"]["submit_ms_per_image"] >= 0
    assert all(r["images_per_s"] > 0 and r["compute_s_per_image"] > 0 for r in report["throughput"].values())
    assert report["transport"]["bytes_per_job"] == 60 * 45 * 3 + 2 * 3 * 60 * 45 * 4
    for way in ("pickle", "shared_memory"):
        assert report["transport"][way]["round_trip_ms"] > 0
    assert "workers" in proc.stdout and "transport per job" in proc.stdout


def test_bench_crf_rejects_a_bad_worker_value(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "bench_crf.py"), "--workers", "two", "--out",
                           str(tmp_path / "x.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--workers takes integers ≥ 0 or 'auto', got 'two'" in proc.stderr
