"""`python -m carbench.reco.index ARCHIVE --preset P --out DIR`: the archive's CLIP embedding index.

ReCo retrieves, per concept, the archive images whose CLIP image embedding is closest to the
concept's text embedding; this builds those image embeddings once. Layout of DIR:

- `manifest.json`: preset, weights (as named, and the sha256 of their content:
  `ClipBackbone.weights_sha256`), archive spec, image count, dimension, the file list's sha256
  and `complete`; a reader refuses an index whose preset, weights or file-list hash differs from
  what it is asked to use (stale), or that is not complete;
- `files.txt`: the archive's relative paths, in index order;
- `embeddings.f16`: N × D float16, L2-normalised rows, read as a `np.memmap` (knn.py);
- while building: `shard-R-of-W.f16` + `shard-R-of-W.json` per process (rank R of W takes every
  W-th file). Rows are encoded in chunks; after each chunk the shard is flushed and its progress
  file rewritten atomically, so an interrupted build continues from the last finished chunk when
  the same command is run again. Rank 0 merges the shards once every rank is done.

Images are resized (short side, bicubic) and centre-cropped to the preset's input size, as the
ReCo authors embed their ImageNet archive. `torchrun --nproc-per-node N -m carbench.reco.index …`
shards the work (gloo on CPU, nccl on CUDA for the barrier only).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from carbench.reco.archive import Archive, open_archive

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.f16"
FILES = "files.txt"
SHARD_GLOBS = ("shard-*-of-*.f16", "shard-*-of-*.json")


class StaleIndexError(ValueError):
    """The index on disk was built from another archive or CLIP than the one asked for."""


def build_command(archive: str, preset: str, out: Path | str) -> str:
    return f"python -m carbench.reco.index {archive} --preset {preset} --out {out}"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class EmbeddingIndex:
    """A finished index: memory-mapped embeddings + the file list + the manifest."""

    path: Path
    manifest: dict[str, Any]
    files: tuple[str, ...]
    embeddings: np.ndarray  # np.memmap N×D float16

    @property
    def fingerprint(self) -> str:
        """What identifies the index's content: preset, weights' sha256 and file-list hash."""
        m = self.manifest
        return f"{m['preset']}|{m.get('weights_sha256')}|{m['files_hash']}"


def open_index(
    path: Path | str, preset: str | None = None, archive: Archive | None = None, weights_sha256: str | None = None
) -> EmbeddingIndex:
    """Open a complete index; refuse a missing, unfinished or stale one with the command that fixes it.

    `preset`, `archive` and `weights_sha256` (the retrieval CLIP's `ClipBackbone.weights_sha256()`)
    are what the caller will use; each one given must match what the index was built from.
    """
    path = Path(path)
    mpath = path / MANIFEST
    spec = archive.spec if archive is not None else "ARCHIVE"
    if not mpath.is_file():
        raise FileNotFoundError(f"no ReCo index at {path} ({MANIFEST} missing); build it with: "
                                f"{build_command(spec, preset or 'PRESET', path)}")
    m = json.loads(mpath.read_text())
    if not m.get("complete"):
        raise RuntimeError(f"the ReCo index at {path} is unfinished (an interrupted build); run the same command "
                           f"again to resume it: {build_command(m.get('archive', spec), m.get('preset'), path)}")
    if preset is not None and m["preset"] != preset:
        raise StaleIndexError(f"the ReCo index at {path} was built with CLIP preset {m['preset']!r}, but retrieval "
                              f"uses {preset!r}; rebuild it ({build_command(spec, preset, path)}) or set "
                              f"model.retrieval_clip={m['preset']}")
    if archive is not None and m["files_hash"] != archive.files_hash:
        raise StaleIndexError(f"the ReCo index at {path} is stale: it was built from {m['n']} files of "
                              f"{m['archive']!r} (file-list sha256 {m['files_hash'][:12]}…) but archive {archive.spec!r} "
                              f"now lists {len(archive)} files (sha256 {archive.files_hash[:12]}…); rebuild it into a "
                              f"new folder: {build_command(spec, m['preset'], str(path) + '-new')}")
    if weights_sha256 is not None and m.get("weights_sha256") != weights_sha256:
        built = m.get("weights_sha256")
        built = f"weights with sha256 {built[:12]}…" if built else "weights it did not record (an older index)"
        raise StaleIndexError(f"the ReCo index at {path} is stale: it was built with {built} "
                              f"({m.get('preset')} {m.get('pretrained')}), but the retrieval CLIP now has weights with "
                              f"sha256 {weights_sha256[:12]}…; rebuild it into a new folder "
                              f"({build_command(spec, m['preset'], str(path) + '-new')}) and point model.index at it, "
                              f"or delete {path}")
    files = tuple((path / FILES).read_text().splitlines())
    emb = np.memmap(path / EMBEDDINGS, dtype=np.float16, mode="r", shape=(m["n"], m["dim"]))
    return EmbeddingIndex(path, m, files, emb)


# ----------------------------------------------------------------------------------- encoding
def clip_input(images: list[np.ndarray], size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Short-side resize to `size` (bicubic) + centre crop + CLIP normalisation → [B, 3, size, size]."""
    out = []
    for image in images:
        x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255.0
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False).clamp_(0, 1)
        top, left = (nh - size) // 2, (nw - size) // 2
        out.append(x[..., top:top + size, left:left + size])
    x = torch.cat(out).to(mean.device)
    return (x - mean) / std


def encode_archive_images(backbone, images: list[np.ndarray]) -> np.ndarray:
    """L2-normalised CLIP image embeddings [B, D] (float32) of archive images."""
    x = clip_input(images, backbone.preset.image_size, backbone.mean, backbone.std)
    return backbone.encode_images(x).cpu().numpy()


# ----------------------------------------------------------------------------------- building
def _dist() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(hours=6))
    return rank, world


def _barrier(world: int) -> None:
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _check_resumable(out: Path, want: dict[str, Any]) -> None:
    mpath = out / MANIFEST
    if not mpath.is_file():
        return
    have = json.loads(mpath.read_text())
    for key in ("preset", "pretrained", "weights_sha256", "files_hash", "format"):
        if have.get(key) != want.get(key):
            raise StaleIndexError(
                f"{out} already holds a ReCo index with {key}={have.get(key)!r}, this build has {want.get(key)!r}; "
                "give another --out folder (or delete that one) instead of mixing two indexes")


def build_index(
    archive: Archive,
    backbone,
    out: Path | str,
    chunk: int = 256,
    batch: int = 64,
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
    stop_after_chunks: int | None = None,
    weights: str | None = None,
) -> Path | None:
    """Encode this rank's share of `archive` into `out`; rank 0 merges when all are done.

    Returns the index folder once complete (rank 0), else None. `stop_after_chunks` stops after
    that many newly written chunks (how the tests interrupt a build).
    """
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    preset = backbone.preset
    manifest = {
        "format": FORMAT_VERSION, "preset": preset.name, "pretrained": str(weights if weights is not None else preset.pretrained),
        "weights_sha256": backbone.weights_sha256(),
        "archive": archive.spec, "root": str(archive.root), "n": len(archive), "files_hash": archive.files_hash,
        "image_size": preset.image_size, "complete": False,
    }
    _check_resumable(out, manifest)
    if (out / MANIFEST).is_file() and json.loads((out / MANIFEST).read_text()).get("complete"):
        return out if rank == 0 else None
    dim = int(encode_archive_images(backbone, [np.zeros((8, 8, 3), np.uint8)]).shape[1])
    manifest["dim"] = dim
    if rank == 0:
        _write_json(out / MANIFEST, manifest)
        (out / FILES).write_text("\n".join(archive.files) + "\n")
    mine = list(range(rank, len(archive), world))
    shard = out / f"shard-{rank}-of-{world}.f16"
    state_path = out / f"shard-{rank}-of-{world}.json"
    done = json.loads(state_path.read_text())["rows"] if state_path.is_file() else 0
    mode = "r+" if shard.is_file() else "w+"
    mm = np.memmap(shard, dtype=np.float16, mode=mode, shape=(max(len(mine), 1), dim))
    bar = tqdm(total=len(mine), initial=done, desc=f"ReCo index [{rank}/{world}]", disable=not progress,
               unit="img", file=sys.stderr)
    written = 0
    while done < len(mine):
        if stop_after_chunks is not None and written >= stop_after_chunks:
            bar.close()
            return None
        rows = mine[done:done + chunk]
        embs = [encode_archive_images(backbone, [archive.load(i) for i in rows[b:b + batch]])
                for b in range(0, len(rows), batch)]
        mm[done:done + len(rows)] = np.concatenate(embs).astype(np.float16)
        mm.flush()
        done += len(rows)
        written += 1
        _write_json(state_path, {"rows": done, "of": len(mine)})
        bar.update(len(rows))
    bar.close()
    del mm
    _barrier(world)
    if rank != 0:
        return None
    for r in range(world):
        st = out / f"shard-{r}-of-{world}.json"
        rows = json.loads(st.read_text())["rows"] if st.is_file() else 0
        if rows < len(range(r, len(archive), world)):
            raise RuntimeError(f"ReCo index {out}: shard {r} of {world} has {rows} of "
                               f"{len(range(r, len(archive), world))} rows; run every rank to the end before merging")
    final = np.memmap(out / EMBEDDINGS, dtype=np.float16, mode="w+", shape=(len(archive), dim))
    for r in range(world):
        part = np.memmap(out / f"shard-{r}-of-{world}.f16", dtype=np.float16, mode="r",
                         shape=(max(len(range(r, len(archive), world)), 1), dim))
        final[r::world] = part[:len(range(r, len(archive), world))]
        del part
    final.flush()
    del final
    manifest["complete"] = True
    _write_json(out / MANIFEST, manifest)
    for r in range(world):
        (out / f"shard-{r}-of-{world}.f16").unlink(missing_ok=True)
        (out / f"shard-{r}-of-{world}.json").unlink(missing_ok=True)
    return out


def remove_index(path: Path | str) -> None:
    """Delete the files an index build writes in `path` (and nothing else), then `path` if it is left empty."""
    path = Path(path)
    for name in (MANIFEST, FILES, EMBEDDINGS):
        (path / name).unlink(missing_ok=True)
    for pattern in SHARD_GLOBS:
        for f in path.glob(pattern):
            f.unlink()
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()


def default_index_dir(archive_spec: str, preset: str) -> Path:
    """Where `model=reco` looks for an index when `model.index` is null: <datasets>/reco_index/<archive>-<preset>."""
    from carbench.reco.archive import default_datasets_dir

    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(archive_spec).name or archive_spec)
    return default_datasets_dir() / "reco_index" / f"{name}-{preset}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m carbench.reco.index", description=__doc__.split("\n")[0])
    p.add_argument("archive", help="folder of images, text file of image paths, or toy / toy:N")
    p.add_argument("--preset", default="vitl14_336", help="retrieval CLIP preset (ReCo: ViT-L/14@336px)")
    p.add_argument("--pretrained", default=None, help="weights override: open_clip tag or local checkpoint")
    p.add_argument("--out", type=Path, default=None, help="index folder (default <datasets>/reco_index/<archive>-<preset>)")
    p.add_argument("--chunk", type=int, default=1024, help="rows per resumable chunk")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    from carbench.models.backbones.device import resolve_device
    from carbench.models.backbones.registry import load_clip

    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world = _dist()
    device = resolve_device(args.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    archive = open_archive(args.archive)
    out = args.out or default_index_dir(args.archive, args.preset)
    backbone = load_clip(args.preset, device, args.pretrained)
    done = build_index(archive, backbone, out, chunk=args.chunk, batch=args.batch, rank=rank, world=world,
                       weights=args.pretrained)
    if done is not None:
        print(f"ReCo index of {len(archive)} images ({args.preset}) at {done}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
