"""Compatibility alias for user code written against the former single `carbench.models.clip` module.

The code now lives in `carbench.models.backbones` (one module per job: `checkpoint_io`, `weights`,
`vit`, `device`, `registry`). This module only re-exports the public names so scripts that did
`from carbench.models.clip import load_clip` keep working. carbench's own modules never import it
(tests/test_import_cycles.py checks that), so it can be removed without touching the package.
"""

from __future__ import annotations

from carbench.models.backbones.checkpoint_io import UnsafeCheckpointError, read_checkpoint, safe_torch_load
from carbench.models.backbones.device import resolve_device
from carbench.models.backbones.registry import load_clip
from carbench.models.backbones.vit import ClipBackbone
from carbench.models.backbones.weights import PretrainedWeightsError

__all__ = [
    "ClipBackbone",
    "PretrainedWeightsError",
    "UnsafeCheckpointError",
    "load_clip",
    "read_checkpoint",
    "resolve_device",
    "safe_torch_load",
]
