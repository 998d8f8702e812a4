"""`dataset=voc_fixture`: the bundled default dataset, a VOC fixture generated on first use.

It lives apart from both `voc.py` (the adapter) and `fixtures.py` (the writer) because it needs
both, and the writer needs the adapter's folder layout: keeping it in either would make the two
import each other.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from carbench.data.registry import register_dataset
from carbench.data.voc import VOCSegmentation

__all__ = ["voc_fixture_dataset"]


@register_dataset("voc_fixture")
def voc_fixture_dataset(
    root: str | os.PathLike[str],
    split: str = "val",
    variant: str = "voc21",
    queries: Sequence[str] | None = None,
    num_val: int = 3,
    seed: int = 0,
    sizes: Sequence[Sequence[int]] | None = None,
) -> VOCSegmentation:
    """A VOC fixture generated on first use into `root` (the VOC2012 folder; see
    `carbench.data.fixtures`), then read by the real VOC adapter.

    Named ``voc_fixture_<variant>`` in results so it is never mistaken for, or regressed against,
    real VOC numbers.
    """
    # Imported here, not at the top: `carbench.data` registers this module on import, and a
    # top-level import would load `carbench.data.fixtures` before `python -m carbench.data.fixtures`
    # runs it as __main__ (runpy then warns about the module being imported twice).
    from carbench.data.fixtures import DEFAULT_SIZES, ensure_voc_fixture

    size_list = [(int(s[0]), int(s[1])) for s in sizes] if sizes is not None else list(DEFAULT_SIZES)
    voc_dir = ensure_voc_fixture(Path(root).expanduser(), int(num_val), int(seed), size_list)
    ds = VOCSegmentation(voc_dir, split=split, variant=variant, queries=queries)
    ds.name = f"voc_fixture_{variant}"
    return ds
