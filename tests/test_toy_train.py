"""The toy trainer's recipe is a deterministic function of its arguments.

Two tiny stage-2 runs from the shipped weights must export byte-identical files (same sha256),
and a run stopped after one step and resumed must export the same file as an uninterrupted one:
that is what lets `make toy-model` rebuild the shipped weights to their recorded sha256.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from recipe_helpers import export_sha256

from carbench.toy import train
from carbench.toy.model import TOY_WEIGHTS

TINY = ["--stage", "2", "--init", str(TOY_WEIGHTS), "--steps", "2", "--warmup", "1", "--scenes", "4",
        "--prompts", "2", "--cam-replicas", "3", "--workers", "0", "--eval-every", "0", "--threads", "1"]


def _run(tmp: Path, name: str, *extra: str) -> str:
    return export_sha256(train.main, TINY, tmp, name, *extra)


def test_two_runs_export_the_same_sha256_and_resume_matches(tmp_path):
    first = _run(tmp_path, "a")
    assert _run(tmp_path, "b") == first
    _run(tmp_path, "c", "--minutes", "0")  # stops (checkpoint + export) right after step 1
    assert _run(tmp_path, "c", "--resume") == first


def test_weights_change_with_the_recipe(tmp_path):
    """The sha256 check above could pass if training did nothing: a different lr must change the file."""
    assert _run(tmp_path, "a") != _run(tmp_path, "b", "--lr", "1e-3")


def test_stage_defaults_and_explicit_flags():
    two = train.parse_args(["--stage", "2"])
    assert two.init == train.STAGE1_WEIGHTS and two.weights == TOY_WEIGHTS and two.w_cam > 0
    one = train.parse_args([])
    assert one.init is None and one.w_cam == 0 and one.w_attn == 0 and one.weights == train.STAGE1_WEIGHTS
    assert train.parse_args(["--stage", "2", "--lr", "0.5"]).lr == 0.5


def test_missing_init_weights_name_the_file_and_the_fix(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors.*make toy-model"):
        train.main([*TINY, "--init", str(missing), "--out", str(tmp_path / "o")])
