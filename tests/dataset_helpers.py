"""Shared by the new-benchmark tests: run evaluate.py in-process on a fixture with the tiny random CLIPs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir

from carbench.engine.evaluate import run_evaluation

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.proposal=tiny_random", "model.classifier=tiny_random", "device=cpu", "threads=1", "num_workers=0"]


def evaluate_fixture(dataset: str, root: Path, run_dir: Path, *extra: str, limit: int = 2) -> dict[str, Any]:
    """`python evaluate.py dataset=<dataset> dataset.root=<root> limit=<limit> …` in this process; its results."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"dataset={dataset}", f"dataset.root={root}", f"limit={limit}", *TINY, *extra])
    return run_evaluation(cfg, run_dir)
