"""Run a tiny toy-recipe stage into its own folder and return the exported file's sha256.

Shared by the stage-2 and stage-3 reproducibility tests: both stages take `--out` (checkpoints) and
`--weights` (the export), and their promise is the same, a deterministic export.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from carbench.toy.model import sha256_of


def export_sha256(main: Callable[[list[str]], int], tiny: Sequence[str], tmp: Path, name: str, *extra: str) -> str:
    """`main([*tiny, --out tmp/name, --weights tmp/name/w.safetensors, *extra])` must succeed; its export's sha256."""
    out = tmp / name
    assert main([*tiny, "--out", str(out), "--weights", str(out / "w.safetensors"), *extra]) == 0
    return sha256_of(out / "w.safetensors")
