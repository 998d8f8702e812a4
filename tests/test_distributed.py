"""`torchrun --nproc-per-node 2` on CPU (gloo) gives exactly the single-process run's metrics.

The fixture has an odd number of images so the shards are uneven (the official code's chunking
drops such a remainder). Per-rank progress files let a run interrupted under torchrun be finished
by a single process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from carbench.data.fixtures import write_voc_fixture
from carbench.engine import distributed as dist_util
from carbench.engine import evaluate as engine
from carbench.engine.results import json_safe

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
N_IMAGES = 5


def overrides(voc_root: Path) -> list[str]:
    return ["dataset=voc", f"dataset.root={voc_root}", "model.proposal=tiny_random", "model.classifier=tiny_random",
            "postprocess=none", "device=cpu", "num_workers=0", "threads=1"]


def make_cfg(voc_root: Path):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=overrides(voc_root))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(run_dir: Path, voc_root: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
           f"--master-port={free_port()}", str(ROOT / "evaluate.py"), f"hydra.run.dir={run_dir}", *overrides(voc_root)]
    return subprocess.run(cmd, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    return write_voc_fixture(tmp_path_factory.mktemp("voc"), num_val=N_IMAGES, seed=4)


@pytest.fixture(scope="module")
def single(voc_root, tmp_path_factory) -> dict:
    return engine.run_evaluation(make_cfg(voc_root), tmp_path_factory.mktemp("single") / "run")


@pytest.fixture(scope="module")
def two_proc(voc_root, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("dist") / "run"
    proc = torchrun(run_dir, voc_root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run_dir


def test_two_gloo_processes_match_one_process_exactly(single, two_proc):
    res = json.loads((two_proc / "results.json").read_text())
    assert res["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert res["num_images"] == {"expected": N_IMAGES, "evaluated": N_IMAGES, "failed": 0, "split_size": N_IMAGES}
    assert res["confusion"] == single["confusion"]  # torchmetrics summed the ranks' states
    assert res["metrics"] == single["metrics"]
    # NaN (class absent in both) is written as null: results.json is strict JSON
    assert res["per_class_iou"] == json_safe(single["per_class_iou"])
    assert res["per_image"] == single["per_image"]  # same kept queries, in dataset order


def test_every_image_is_evaluated_exactly_once_by_one_rank(two_proc):
    seen: list[int] = []
    per_rank = {}
    for f in dist_util.progress_files(two_proc):
        recs = [json.loads(line) for line in f.read_text().splitlines()[1:]]
        per_rank[f.name] = sorted(r["index"] for r in recs)
        seen += per_rank[f.name]
    assert sorted(seen) == list(range(N_IMAGES))  # no image twice, none dropped (5 = 3 + 2)
    assert per_rank == {"progress.jsonl": [0, 2, 4], "progress.rank1.jsonl": [1, 3]}
    assert len(list(two_proc.glob("results.json"))) == 1


def test_a_torchrun_run_interrupted_on_one_rank_is_finished_by_one_process(single, two_proc, tmp_path, voc_root):
    """Simulate rank 1 dying after its first image: one process resumes, evaluates only what is missing."""
    run = tmp_path / "run"
    run.mkdir()
    for f in dist_util.progress_files(two_proc):
        lines = f.read_text().splitlines()
        keep = lines[:2] if f.name != "progress.jsonl" else lines  # rank 1 kept its header + one image
        (run / f.name).write_text("\n".join(keep) + "\n" + ('{"index": 3, "id": "torn' if keep is not lines else ""))
    resumed = engine.run_evaluation(make_cfg(voc_root), run)
    assert resumed["metrics"] == single["metrics"] and resumed["confusion"] == single["confusion"]
    new = [json.loads(line)["index"] for line in (run / "progress.jsonl").read_text().splitlines()[1:]]
    assert sorted(new) == [0, 2, 3, 4]  # rank 0's three + the one rank 1 never finished


def test_a_failing_rank_stops_both_instead_of_hanging(voc_root, tmp_path):
    bad = tmp_path / "voc"
    import shutil

    shutil.copytree(voc_root, bad)
    ids = (bad / "ImageSets/Segmentation/val.txt").read_text().split()
    (bad / "JPEGImages" / f"{ids[1]}.jpg").write_bytes(b"not a jpeg")  # index 1 → rank 1
    proc = torchrun(tmp_path / "run", bad)
    assert proc.returncode != 0
    assert ids[1] in proc.stderr and "another rank failed" in proc.stderr
    assert not (tmp_path / "run" / "results.json").exists()


def test_strided_shards_cover_the_remainder():
    todo = list(range(7))
    shards = [dist_util.shard(todo, dist_util.DistContext(rank=r, world_size=3)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert dist_util.shard(todo, dist_util.DistContext()) == todo


def test_ranks_started_at_skewed_times_share_one_run_dir_without_a_race(single, voc_root, tmp_path):
    """Rank 1 starts first and rank 0 two seconds later (torchrun under load): only rank 0 creates and
    probes the run dir, the others wait at a barrier, so rank 1 never checks a dir that is not there yet."""
    import time

    run_dir = tmp_path / "run"
    port = free_port()
    procs = {}
    for rank in (1, 0):
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", RANK=str(rank), LOCAL_RANK=str(rank),
                   WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs[rank] = subprocess.Popen(
            [sys.executable, str(ROOT / "evaluate.py"), f"hydra.run.dir={run_dir}", *overrides(voc_root)],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if rank == 1:
            time.sleep(2.0)
    outs = {r: p.communicate(timeout=300) for r, p in procs.items()}
    for r, p in procs.items():
        assert p.returncode == 0, f"rank {r}: {outs[r][1][-3000:]}"
    res = json.loads((run_dir / "results.json").read_text())
    assert res["distributed"]["world_size"] == 2
    assert res["confusion"] == single["confusion"] and res["metrics"] == single["metrics"]
    assert not list(run_dir.glob(".write_test*")) and not (run_dir / "run.lock").exists()
