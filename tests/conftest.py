"""Shared fixtures. Everything is generated: no test touches the network or real weights."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test must never try to download weights
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_backbone():
    from carbench.models.backbones.registry import load_clip

    return load_clip("tiny_random")


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture()
def scene(rng) -> np.ndarray:
    """A 75×100 RGB image: noisy background with a red rectangle (not patch-aligned on purpose)."""
    img = (rng.random((75, 100, 3)) * 60 + 90).astype(np.uint8)
    img[20:50, 30:70] = (220, 30, 30)
    return img
