"""`carbench.reco.index`: build, resume after an interruption, shard by rank, refuse a stale index."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from carbench.models.backbones.registry import load_clip
from carbench.reco.archive import open_archive
from carbench.reco.build import toy_index
from carbench.reco.index import StaleIndexError, build_index, encode_archive_images, open_index


class FakeClip:
    """Stands in for a ClipBackbone: a fixed random projection of the mean colour of 4 quadrants."""

    def __init__(self, name: str = "fake", seed: int = 0) -> None:
        self.preset = SimpleNamespace(name=name, pretrained=None, image_size=16)
        self.mean = torch.zeros(1, 3, 1, 1)
        self.std = torch.ones(1, 3, 1, 1)
        self.proj = torch.randn(12, 8, generator=torch.Generator().manual_seed(seed))
        self.encoded = 0

    def weights_sha256(self) -> str:
        return hashlib.sha256(self.proj.numpy().tobytes()).hexdigest()

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        self.encoded += len(x)
        pooled = F.adaptive_avg_pool2d(x, 2).flatten(1)
        return F.normalize(pooled @ self.proj, dim=-1)


def _folder(tmp_path, n: int = 11):
    root = tmp_path / "archive"
    (root / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)).save(root / "a" / f"{i:03d}.png")
    return root


def test_index_rows_are_the_normalised_embeddings_in_file_order(tmp_path):
    archive = open_archive(_folder(tmp_path))
    clip = FakeClip()
    out = build_index(archive, clip, tmp_path / "idx", chunk=4, batch=3, progress=False)
    index = open_index(out, "fake", archive)
    assert index.files == archive.files and index.embeddings.shape == (11, 8)
    want = encode_archive_images(clip, [archive.load(i) for i in range(11)])
    np.testing.assert_allclose(np.asarray(index.embeddings, np.float32), want, atol=2e-3)
    assert isinstance(index.embeddings, np.memmap)
    assert not list(out.glob("shard-*"))


def test_an_interrupted_build_resumes_and_ends_like_an_uninterrupted_one(tmp_path):
    archive = open_archive(_folder(tmp_path))
    clip = FakeClip()
    out = tmp_path / "idx"
    assert build_index(archive, clip, out, chunk=3, progress=False, stop_after_chunks=2) is None
    assert json.loads((out / "shard-0-of-1.json").read_text())["rows"] == 6
    with pytest.raises(RuntimeError, match="unfinished.*resume"):
        open_index(out, "fake", archive)
    clip.encoded = 0
    build_index(archive, clip, out, chunk=3, progress=False)
    assert clip.encoded == 5 + 1  # the 5 rows left, plus the one probe that reads the dimension
    straight = build_index(archive, FakeClip(), tmp_path / "idx2", chunk=3, progress=False)
    np.testing.assert_array_equal(np.asarray(open_index(out).embeddings), np.asarray(open_index(straight).embeddings))


def test_shards_by_rank_are_merged_in_archive_order(tmp_path):
    archive = open_archive(_folder(tmp_path))
    out = tmp_path / "idx"
    with pytest.raises(RuntimeError, match="shard 1 of 2 has 0"):
        build_index(archive, FakeClip(), out, chunk=2, rank=0, world=2, progress=False)
    assert build_index(archive, FakeClip(), out, chunk=2, rank=1, world=2, progress=False) is None
    build_index(archive, FakeClip(), out, chunk=2, rank=0, world=2, progress=False)
    single = build_index(archive, FakeClip(), tmp_path / "one", chunk=5, progress=False)
    np.testing.assert_array_equal(np.asarray(open_index(out).embeddings), np.asarray(open_index(single).embeddings))


def test_a_stale_index_is_refused(tmp_path):
    root = _folder(tmp_path)
    archive = open_archive(root)
    out = build_index(archive, FakeClip(), tmp_path / "idx", progress=False)
    with pytest.raises(StaleIndexError, match="preset 'fake'.*model.retrieval_clip=fake"):
        open_index(out, "vitl14_336", archive)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "a" / "new.png")
    grown = open_archive(root)
    with pytest.raises(StaleIndexError, match="stale.*11 files.*now lists 12 files.*python -m carbench.reco.index"):
        open_index(out, "fake", grown)
    with pytest.raises(StaleIndexError, match="files_hash"):  # and no build mixes two archives in one folder
        build_index(grown, FakeClip(), out, progress=False)


def test_an_index_of_other_weights_is_refused(tmp_path):
    archive = open_archive(_folder(tmp_path))
    out = build_index(archive, FakeClip(), tmp_path / "idx", progress=False)
    open_index(out, "fake", archive, FakeClip().weights_sha256())  # the same weights: accepted
    other = FakeClip(seed=1).weights_sha256()
    with pytest.raises(StaleIndexError, match=rf"stale.*sha256 {FakeClip().weights_sha256()[:12]}.*now has weights "
                                              rf"with sha256 {other[:12]}.*python -m carbench.reco.index"):
        open_index(out, "fake", archive, other)
    with pytest.raises(StaleIndexError, match="weights_sha256"):  # and no build mixes two CLIPs in one folder
        build_index(archive, FakeClip(seed=1), out, progress=False)


def test_the_toy_index_is_rebuilt_when_its_weights_change_and_only_then(tmp_path):
    archive = open_archive(_folder(tmp_path))
    out = tmp_path / "idx"
    (tmp_path / "keep.txt").write_text("not an index file")
    first = FakeClip()
    toy_index(archive, first, out)
    assert first.encoded == 11 + 1  # the rows, plus the probe that reads the dimension
    toy_index(archive, first, out)
    assert first.encoded == 12  # up to date: nothing re-encoded
    retrained = FakeClip(seed=1)
    index = toy_index(archive, retrained, out)
    assert index.manifest["weights_sha256"] == retrained.weights_sha256()
    want = encode_archive_images(FakeClip(seed=1), [archive.load(i) for i in range(11)])
    np.testing.assert_allclose(np.asarray(index.embeddings, np.float32), want, atol=2e-3)
    assert (tmp_path / "keep.txt").is_file()


def test_a_toy_index_interrupted_under_other_weights_is_built_again(tmp_path):
    archive = open_archive(_folder(tmp_path))
    out = tmp_path / "idx"
    assert build_index(archive, FakeClip(), out, chunk=3, progress=False, stop_after_chunks=1) is None
    retrained = FakeClip(seed=1)
    index = toy_index(archive, retrained, out)
    want = encode_archive_images(FakeClip(seed=1), [archive.load(i) for i in range(11)])
    np.testing.assert_allclose(np.asarray(index.embeddings, np.float32), want, atol=2e-3)


def test_the_weights_digest_follows_the_content_not_the_object():
    a, b = load_clip("toy"), load_clip("toy")
    assert a.weights_sha256() == b.weights_sha256()
    assert a.weights_sha256() != load_clip("toy_classifier").weights_sha256()
    with torch.no_grad():
        b.model.visual.proj[0, 0] += 1e-3
    b._weights_sha256 = None  # the digest is cached; this test changes frozen weights on purpose
    assert a.weights_sha256() != b.weights_sha256()


def test_a_missing_index_names_the_build_command(tmp_path):
    archive = open_archive(_folder(tmp_path))
    with pytest.raises(FileNotFoundError, match="python -m carbench.reco.index .* --preset vitl14_336 --out"):
        open_index(tmp_path / "nothing", "vitl14_336", archive)


def test_file_list_archives_and_their_errors(tmp_path):
    root = _folder(tmp_path, n=3)
    lst = tmp_path / "list.txt"
    lst.write_text("# archive\narchive/a/000.png\narchive/a/002.png\n")
    archive = open_archive(lst)
    assert archive.files == ("archive/a/000.png", "archive/a/002.png")
    assert archive.load(1).shape == (22, 24, 3)
    lst.write_text("archive/a/000.png\narchive/a/missing.png\n")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        open_archive(lst)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_archive(tmp_path / "nope")
    (root / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images"):
        open_archive(root / "empty")
