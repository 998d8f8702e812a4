"""Check a dataset that needs no conversion by carbench (ADE-150 as distributed, ADE-847 after detectron2's
converter): it opens with the adapter, has the official number of samples, and every label decodes.

Reading every label once (with a progress bar) catches truncated files, 8-bit re-saves of 16-bit
labels and foreign values before a multi-hour run does.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from carbench.data.base import read_label
from carbench.data.folder_semantic import FolderSemantic, read_label_u16
from carbench.data.registry import build_dataset

__all__ = ["EXPECTED_COUNTS", "check", "main"]

EXPECTED_COUNTS: dict[tuple[str, str], int] = {
    ("ade150", "validation"): 2000, ("ade150", "training"): 20210,
    ("ade847", "validation"): 2000, ("ade847", "training"): 25574,
}


def check(name: str, root: Path, split: str = "validation", expected: int | None = None) -> int:
    """Open `name` at `root`, decode every label, compare the count with `expected`; return the count.

    (The adapters are registered: importing this module imports the `carbench.data` package first.)
    """
    expected = EXPECTED_COUNTS.get((name, split)) if expected is None else expected
    ds = build_dataset({"name": name, "root": str(root), "split": split})
    if not isinstance(ds, FolderSemantic):
        raise TypeError(f"{name} is not a folder-layout dataset; this check covers ade150 and ade847")
    for sid in tqdm(ds.ids, desc=f"{name} {split} labels", unit="label"):
        path = ds.label_path(sid)
        stored = read_label_u16(path) if ds.sixteen_bit else read_label(path, expected_mode=ds.label_mode)
        ds.decode(stored, path)
    print(f"{name} {split}: {len(ds)} images with labels under {root}")
    if expected is not None and len(ds) != expected:
        raise RuntimeError(f"{name} {split}: expected {expected} images, found {len(ds)} under {root}; the download "
                           "is incomplete or mixes splits (pass --expected-count for a deliberate subset)")
    return len(ds)


def main(name: str, argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python datasets/prepare_{name}.py",
                                     description=f"Check the {name} folder (no conversion needed).")
    parser.add_argument("root", type=Path, help="dataset root (dataset.root)")
    parser.add_argument("--split", default="validation", choices=["validation", "training"])
    parser.add_argument("--expected-count", type=int, default=None, help="images to expect (default: official)")
    args = parser.parse_args(argv)
    return check(name, args.root, args.split, args.expected_count)
