"""The retrieval archive: an ordered list of image files, and its fingerprint.

An archive is a folder of images (searched recursively, sorted, so the order is the same on every
machine), a text file listing one image path per line (relative paths are read relative to the
list's folder), or `toy` / `toy:N`: the first N scenes of the toy world's train split, which
carbench writes itself. The file-list hash (relative paths, in order) is stored with the index so
an index built from another archive, or from an archive that changed since, is refused.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TOY_DEFAULT_N = 2000
TOY_SEED = 0
TOY_SIZE = 96


@dataclass(frozen=True)
class Archive:
    """`root` + `files` (paths relative to root, in index order); `spec` is what the user gave."""

    spec: str
    root: Path
    files: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.files)

    def path(self, i: int) -> Path:
        return self.root / self.files[i]

    @property
    def files_hash(self) -> str:
        return files_hash(self.files)

    def load(self, i: int) -> np.ndarray:
        """Image i as H×W×3 uint8 RGB; a file that cannot be read is named in the error."""
        path = self.path(i)
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as err:
            raise OSError(f"archive image {path} (#{i} of {self.spec}) cannot be read: {err}; "
                          "remove it from the archive and rebuild the index") from err


def files_hash(files: tuple[str, ...] | list[str]) -> str:
    """sha256 of the relative paths joined by newlines: changes when a file is added, removed or renamed."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def default_datasets_dir() -> Path:
    return Path(os.environ.get("CARBENCH_DATASETS", "datasets"))


def toy_archive(n: int = TOY_DEFAULT_N, root: Path | None = None) -> Archive:
    """The first `n` toy train scenes of the toy benchmark's world (`TOY_COLORS`), written (once) under
    `root` (default <datasets>/toy_reco_archive-N-<colours>; one folder per N and world, so archives of
    different sizes or worlds never rewrite each other)."""
    from carbench.toy.model import TOY_COLORS
    from carbench.toy.scenes import write_toy_split

    if n < 1:
        raise ValueError(f"archive 'toy:{n}': the toy archive needs at least one scene")
    root = Path(root) if root is not None else default_datasets_dir() / f"toy_reco_archive-{n}-{TOY_COLORS}"
    write_toy_split(root, "train", n, TOY_SEED, TOY_SIZE, TOY_COLORS)
    ids = (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    return Archive(f"toy:{n}", root.resolve(), tuple(f"JPEGImages/{i}.jpg" for i in ids))


def _parse_toy(spec: str) -> int | None:
    if spec == "toy":
        return TOY_DEFAULT_N
    if spec.startswith("toy:"):
        try:
            return int(spec[4:])
        except ValueError:
            raise ValueError(f"archive {spec!r}: write toy or toy:N with N an integer, e.g. toy:2000") from None
    return None


def open_archive(spec: str | os.PathLike[str]) -> Archive:
    """A folder, a file list, or `toy[:N]` → `Archive`. Missing or empty archives are errors, never skipped."""
    spec = str(spec)
    n_toy = _parse_toy(spec)
    if n_toy is not None:
        return toy_archive(n_toy)
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(
            p.relative_to(path).as_posix() for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not files:
            raise FileNotFoundError(f"archive folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                                    "point model.archive / the index command at the folder of archive images")
        return Archive(spec, path.resolve(), tuple(files))
    if path.is_file():
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        files = [ln for ln in lines if ln and not ln.startswith("#")]
        if not files:
            raise ValueError(f"archive file list {path} lists no images; write one image path per line")
        root = path.parent.resolve()
        missing = [f for f in files if not (root / f).is_file()]
        if missing:
            raise FileNotFoundError(f"archive file list {path}: {len(missing)} listed image(s) do not exist, "
                                    f"e.g. {root / missing[0]}; paths are read relative to {root}")
        return Archive(spec, root, tuple(files))
    raise FileNotFoundError(f"archive {path} does not exist; give a folder of images, a text file with one image "
                            "path per line, or 'toy' (the toy train split)")
