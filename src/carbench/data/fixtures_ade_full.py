"""A tiny ADE20K full release (``ADE20K_2021_17_01``) in its raw bytes-on-disk format, for the ADE-847
converter's tests: ``index_ade20k.pkl`` (``folder`` / ``filename`` lists) and, per image, a JPEG plus
its RGB ``_seg.png`` object map ((R // 10) * 256 + G = object class; R's last digit and B carry instance
data, which the class must ignore).

Three images: two validation (one 30×40 with object classes that become label ids 0, 268 and 846 plus
an object class outside the benchmark, one 520×600 that the converter must shrink to a 512-px short
side) and one training image, so split filtering is visible.

    python -m carbench.data.fixtures_ade_full /tmp/adefull
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["OBJECTS", "RELEASE", "write_ade_full_fixture"]

RELEASE = "ADE20K_2021_17_01"
#: object classes used, with the ADE-847 label id each must become (65,535: not a benchmark class)
OBJECTS: dict[str, tuple[int, int]] = {
    "unlabeled": (0, 65535), "wall": (2978, 0), "heater": (1223, 268), "adding machine": (3148, 846),
    "outside the 847": (5, 65535),
}


def _encode(objects: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Object classes → the release's RGB encoding, with noise where only instance data lives."""
    rgb = np.zeros((*objects.shape, 3), dtype=np.uint8)
    rgb[..., 0] = (objects // 256) * 10 + rng.integers(0, 10, objects.shape)  # R's last digit: not the class
    rgb[..., 1] = objects % 256
    rgb[..., 2] = rng.integers(0, 256, objects.shape)  # B: instance ids
    return rgb


def _write(release: Path, folder: str, name: str, objects: np.ndarray, rng: np.random.Generator) -> None:
    d = release.parent / folder
    d.mkdir(parents=True, exist_ok=True)
    h, w = objects.shape
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / name, format="JPEG")
    Image.fromarray(_encode(objects, rng), mode="RGB").save(d / name.replace(".jpg", "_seg.png"), format="PNG")


def write_ade_full_fixture(root: str | Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Write ``<root>/ADE20K_2021_17_01``; return each image's expected ADE-847 label map (before resizing).

    Returns a dict keyed by file stem: the uint16 label ids the converter must store (the 520×600 one at
    its original size; the converter's resize is checked against it with a nearest-neighbour resize).
    """
    rng = np.random.default_rng(seed)
    release = Path(root) / RELEASE
    release.mkdir(parents=True, exist_ok=True)
    obj = {k: v[0] for k, v in OBJECTS.items()}
    lab = {v[0]: v[1] for v in OBJECTS.values()}

    small = np.full((30, 40), obj["wall"], dtype=np.int64)
    small[:6] = obj["unlabeled"]
    small[10:20, 5:15] = obj["heater"]
    small[12:25, 22:35] = obj["adding machine"]
    small[26:, 36:] = obj["outside the 847"]
    large = np.full((520, 600), obj["wall"], dtype=np.int64)
    large[100:300, 150:450] = obj["adding machine"]
    train = np.full((40, 30), obj["heater"], dtype=np.int64)
    train[5:15, 5:15] = obj["wall"]

    entries = [
        (f"{RELEASE}/images/ADE/validation/home_or_hotel/bedroom", "ADE_val_00000001.jpg", small),
        (f"{RELEASE}/images/ADE/validation/urban/street", "ADE_val_00000002.jpg", large),
        (f"{RELEASE}/images/ADE/training/urban/street", "ADE_train_00000001.jpg", train),
    ]
    for folder, name, objects in entries:
        _write(release, folder, name, objects, rng)
    index = {"folder": [e[0] for e in entries], "filename": [e[1] for e in entries],
             "objectnames": ["-", "unused here"],
             "objectPresence": np.zeros((2, len(entries)), np.int32)}  # the real index holds numpy arrays too
    with (release / "index_ade20k.pkl").open("wb") as f:
        pickle.dump(index, f)
    to_label = np.vectorize(lambda o: lab[int(o)], otypes=[np.uint16])
    return {name[:-4]: to_label(objects) for _, name, objects in entries}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m carbench.data.fixtures_ade_full <root>")
    write_ade_full_fixture(sys.argv[1])
    print(f"wrote {Path(sys.argv[1]) / RELEASE}")
