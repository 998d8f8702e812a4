"""Runs killed at random points (SIGKILL, SIGTERM, SIGINT) resume to the metrics of an uninterrupted run,
and no process (DataLoader worker included) is left behind.

Each run is a forked child of this process (everything is imported once, so a run costs a few
seconds of CPU on 6 small fixture images), decoding in one background DataLoader worker. A trial's
seed draws its kill point: during start-up (model building, before any image), or within 0.2 s
after the k-th of the 6 images is recorded (so always mid-run, whatever the machine's load). It checks what the child said (SIGTERM /
SIGINT: "N of M images kept in DIR; rerun with resume=true", exit 128+signal), checks that every
process the child had started is gone, then resumes in the same run dir until it finishes and
compares metrics, confusion and per-image records with the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import signal
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from carbench.data.fixtures import write_voc_fixture

CONF = str(Path(__file__).resolve().parents[1] / "conf")
N_IMAGES = 6
#: (signal, seed): the seed draws the kill point (seeds chosen so start-up and images 0-3 are all hit)
TRIALS = [(signal.SIGKILL, 2), (signal.SIGKILL, 5), (signal.SIGTERM, 7), (signal.SIGTERM, 9), (signal.SIGINT, 6),
          (signal.SIGINT, 1)]


def make_cfg(voc_root: Path):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[
            "dataset=voc", f"dataset.root={voc_root}", "model.proposal=tiny_random", "model.classifier=tiny_random",
            "device=cpu", "num_workers=1", "postprocess=none", "threads=1", 'model.templates=["a photo of a {}."]',
        ])


def _child(cfg, run_dir: Path, log: Path) -> None:
    """Body of a forked run: what evaluate.py's entry point does, with the exit code as the only output."""
    import sys

    code = 0
    with open(log, "w") as err:
        os.dup2(err.fileno(), 2)
        sys.stderr = err
        try:
            from carbench.engine.evaluate import run_evaluation
            from carbench.engine.interrupts import RunInterrupted

            run_evaluation(cfg, run_dir)
        except RunInterrupted as stop:
            print(f"\n{stop.message}", file=err, flush=True)
            code = stop.exit_code
        except BaseException as e:  # noqa: BLE001 - reported through the log and exit code
            print(f"{type(e).__name__}: {e}", file=err, flush=True)
            code = 1
    os._exit(code)


def start(cfg, run_dir: Path, log: Path) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            _child(cfg, run_dir, log)
        except KeyboardInterrupt:  # Ctrl-C before the run installed its handlers: Python's default behaviour
            os._exit(128 + signal.SIGINT)
        finally:
            os._exit(99)
    return pid


def wait(pid: int, timeout: float = 240.0) -> int:
    """The child's exit code (128+signal when killed by one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"run {pid} did not finish in {timeout} s")


def children_of(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie has exited; only its entry is left)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("kill")
    voc_root = write_voc_fixture(tmp / "data", num_val=N_IMAGES, seed=5, sizes=[(48, 40), (40, 48)])
    cfg = make_cfg(voc_root)
    ref_dir = tmp / "reference"
    pid = start(cfg, ref_dir, tmp / "reference.log")
    while not (ref_dir / "progress.jsonl").exists() and not os.waitpid(pid, os.WNOHANG)[0]:
        time.sleep(0.02)
    t0 = time.monotonic()  # the loop starts once the progress log exists
    code = wait(pid)
    assert code == 0, (tmp / "reference.log").read_text()[-3000:]
    per_image_s = (time.monotonic() - t0) / N_IMAGES
    return cfg, json.loads((ref_dir / "results.json").read_text()), per_image_s, tmp


def records(run_dir: Path) -> int:
    try:
        return max(0, len((run_dir / "progress.jsonl").read_text().splitlines()) - 1)
    except OSError:
        return 0


def kill_point(pid: int, run_dir: Path, seed: int, per_image_s: float) -> str:
    """Wait for the trial's kill point (drawn from `seed`); returns it in words."""
    rng = random.Random(seed)
    k = rng.randrange(-1, N_IMAGES - 1)
    if k < 0:
        delay = rng.uniform(0.2, 2.0)
        time.sleep(delay)
        return f"start-up +{delay:.2f} s"
    deadline = time.monotonic() + 240
    while (not (run_dir / "progress.jsonl").exists() or records(run_dir) < k) and time.monotonic() < deadline \
            and not os.waitpid(pid, os.WNOHANG)[0]:  # k = 0: the loop has started (its log exists)
        time.sleep(0.02)
    delay = rng.uniform(0.0, min(0.2, per_image_s / 2))
    time.sleep(delay)
    return f"after {k} image(s) +{delay:.2f} s"


@pytest.mark.parametrize("sig,seed", TRIALS, ids=[f"{signal.Signals(s).name}-seed{n}" for s, n in TRIALS])
def test_killed_run_resumes_to_the_uninterrupted_metrics(setup, sig, seed):
    cfg, reference, per_image_s, tmp = setup
    run_dir = tmp / f"run-{signal.Signals(sig).name}-{seed}"
    log = tmp / f"kill-{seed}.log"
    pid = start(cfg, run_dir, log)
    point = kill_point(pid, run_dir, seed, per_image_s)
    descendants = children_of(pid)
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    code = wait(pid)
    kept_at_kill = records(run_dir)
    time.sleep(0.5)
    left = [p for p in descendants if running(p)]
    assert not left, f"processes left behind after {signal.Signals(sig).name}: {left}"

    text = log.read_text() if log.exists() else ""
    kept = None
    assert point.startswith("start-up") or code != 0, f"the run finished before its kill point ({point})"
    if sig != signal.SIGKILL and code != 0:
        assert code == 128 + sig, text[-2000:]
        m = re.search(rf"(\d+) of {N_IMAGES} images kept in (\S+); rerun with resume=true", text)
        if m:
            kept = int(m.group(1))
            assert Path(m.group(2)) == run_dir
        else:
            # start-up: interrupted while building, or killed before the run installed its handler
            assert "interrupted while starting" in text or point.startswith("start-up"), text[-2000:]
    elif sig == signal.SIGKILL and code != 0:
        assert code == 128 + signal.SIGKILL
    if kept is not None:
        progress = (run_dir / "progress.jsonl").read_text().splitlines()
        assert len(progress) - 1 == kept  # header + one line per kept image

    if code != 0:  # resume in the same run dir (a SIGKILL left its lock behind: taken over)
        resumed = wait(start(cfg, run_dir, tmp / f"resume-{seed}.log"))
        assert resumed == 0, (tmp / f"resume-{seed}.log").read_text()[-3000:]
    res = json.loads((run_dir / "results.json").read_text())
    assert res["metrics"] == reference["metrics"]
    assert res["confusion"] == reference["confusion"]
    assert res["per_image"] == reference["per_image"]
    assert res["num_images"] == reference["num_images"]
    assert not (run_dir / "run.lock").exists()
    print(f"{signal.Signals(sig).name} seed {seed}: killed {point} ({per_image_s:.2f} s/image), exit {code}, "
          f"kept {kept_at_kill}; resumed to identical metrics; children's CPU so far "
          f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime:.1f} s")
