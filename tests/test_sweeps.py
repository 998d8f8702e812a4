"""Named sweeps: Hydra multirun grids (conf/sweep/), their W&B twins (sweeps/wandb/), launchers.

One real multirun per launcher (basic and joblib) on the VOC fixture proves the grids run end to
end and that `carbench.report` sees the swept axis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from carbench import report

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SWEEPS = sorted(p.stem for p in (CONF / "sweep").glob("*.yaml"))

#: what each named sweep must vary (the paper's table, docs/method.md §4)
EXPECTED_GRIDS = {
    "thresholds": {"model.mask_threshold": [0.3, 0.4, 0.5], "model.confidence_threshold": [0.5, 0.6, 0.7],
                   "model.clipes_threshold": [0.3, 0.4, 0.5]},
    "thresholds_coco": {"model.mask_threshold": [0.4, 0.5, 0.6], "model.confidence_threshold": [0.3, 0.4, 0.5],
                        "model.clipes_threshold": [0.4, 0.5, 0.6]},
    "backbones": {"model.proposal": ["vitb16", "vitl14"], "model.classifier": ["vitb16", "vitl14"]},
    "bg_queries": {"+bg_queries": ["none", "T", "A", "M", "TA", "AM", "TM", "TAM"]},
    "cam": {"model.cam": ["clip_es", "gradcam"], "model.max_steps": [1, None]},
}


def hydra_grid(name: str) -> dict[str, list]:
    """The sweep's `hydra.sweeper.params`, parsed by Hydra's own override parser into value lists."""
    params = yaml.safe_load((CONF / "sweep" / f"{name}.yaml").read_text())["hydra"]["sweeper"]["params"]
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return {o.get_key_element(): list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()] for o in parsed}


def wandb_grid(name: str) -> dict[str, list]:
    doc = yaml.safe_load((ROOT / "sweeps" / "wandb" / f"{name}.yaml").read_text())
    parser = OverridesParser.create()
    grid = {}
    for key, spec in doc["parameters"].items():  # the agent passes KEY=VALUE to Hydra: parse it the same way
        grid[key] = [parser.parse_override(f"{key}={v}").value() for v in spec["values"]]
    return grid


def compose_with(*overrides: str, hydra_cfg: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_cfg)


def test_the_issue_sweeps_exist():
    assert {"thresholds", "backbones", "bg_queries", "prompts", "cam"} <= set(SWEEPS)


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_composes_as_multirun_with_its_grid(name):
    cfg = compose_with(f"+sweep={name}", "dataset=voc_fixture", hydra_cfg=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and cfg.sweep.name == name
    grid = hydra_grid(name)
    if name in EXPECTED_GRIDS:
        assert grid == EXPECTED_GRIDS[name]


@pytest.mark.parametrize("name", SWEEPS)
def test_wandb_sweep_file_has_the_same_grid_and_a_hydra_command(name):
    doc = yaml.safe_load((ROOT / "sweeps" / "wandb" / f"{name}.yaml").read_text())
    assert doc["program"] == "evaluate.py" and doc["method"] == "grid" and doc["metric"]["name"] == "mIoU"
    assert doc["command"][:3] == ["${env}", "${interpreter}", "${program}"]
    assert doc["command"][-1] == "${args_no_hyphens}"
    assert "logger=wandb" in doc["command"] and f"logger.group={name}" in doc["command"]
    assert wandb_grid(name) == hydra_grid(name)
    # the first and last grid point, as the agent would pass them, compose into a valid config
    fixed = [c for c in doc["command"] if not c.startswith("${")]
    for pick in (0, -1):
        args = [f"{k}={spec['values'][pick]}" for k, spec in doc["parameters"].items()]
        cfg = compose_with(*fixed, *args, "dataset=voc_fixture")
        assert cfg.logger.name == "wandb" and cfg.sweep.name == name


def test_prompt_sweep_has_every_single_prompt_and_every_pair():
    grid = hydra_grid("prompts")["model.visual_prompts"]
    prompts = ["circle", "contour", "blur", "gray", "black"]
    assert {frozenset(g) for g in grid} == {frozenset([p]) for p in prompts} | {
        frozenset([a, b]) for a in prompts for b in prompts if a != b
    }
    assert len(grid) == 15 and ["circle", "blur"] in grid


def test_background_groups_are_the_papers_112_words_and_exact_unions():
    words = {p.stem: yaml.safe_load(p.read_text())["model"]["background_queries"]
             for p in (CONF / "bg_queries").glob("*.yaml")}
    assert (len(words["T"]), len(words["A"]), len(words["M"])) == (32, 44, 36)
    assert len(set(words["TAM"])) == len(words["TAM"]) == 112
    for union in ("TA", "AM", "TM", "TAM"):
        assert words[union] == [w for g in union for w in words[g]]  # T, A, M order, no word lost or added
    assert words["none"] == ["None"]  # Table 6's "None" row: the literal word
    assert len(words["released"]) == 23 and set(words["released"]) - set(words["TAM"]) == {"helmet"}
    cfg = compose_with("+bg_queries=TA", "dataset=voc")
    assert list(cfg.model.background_queries) == words["TA"]  # the group overrides the dataset's list


def test_slurm_example_launcher_is_submitit():
    cfg = compose_with("hydra/launcher=slurm_example", "dataset=voc_fixture", hydra_cfg=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1 and launcher.timeout_min > 0


def run_multirun(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", CARBENCH_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(ROOT / "evaluate.py"), "dataset=voc_fixture", f"dataset.root={tmp_path / 'voc'}",
           "limit=2", "postprocess=none", "device=cpu", "num_workers=0", "threads=1",
           f"hydra.sweep.dir={tmp_path / 'mr'}", *overrides]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_thresholds_sweep_runs_and_the_report_shows_its_axis(tmp_path):
    """A reduced Table-5 grid (command-line values win over the sweep's): 3 jobs, one varying axis."""
    proc = run_multirun(tmp_path, "+sweep=thresholds", "model.mask_threshold=0.3,0.4,0.5",
                        "model.confidence_threshold=0.6", "model.clipes_threshold=0.4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted((tmp_path / "mr").glob("*/results.json"))
    assert len(jobs) == 3
    etas = [json.loads(j.read_text())["config"]["model"]["mask_threshold"] for j in jobs]
    assert etas == [0.3, 0.4, 0.5]
    out = report.report(tmp_path / "mr")
    assert out["axes"] == ["model.mask_threshold"]
    assert [r["model.mask_threshold"] for r in out["rows"]] == [0.3, 0.4, 0.5]
    miou = [json.loads(j.read_text())["metrics"]["mIoU"] for j in jobs]
    assert [r["mIoU"] for r in out["rows"]] == miou
    assert out["png"] is not None and out["png"].stat().st_size > 1000
    assert "| η (mask_threshold) | mIoU |" in out["markdown"]


def test_joblib_launcher_runs_a_sweep_in_parallel(tmp_path):
    proc = run_multirun(tmp_path, "+sweep=cam", "model.cam=clip_es", "hydra/launcher=joblib",
                        "hydra.launcher.n_jobs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel" in proc.stderr + proc.stdout
    res = [json.loads(p.read_text()) for p in sorted((tmp_path / "mr").glob("*/results.json"))]
    assert [r["config"]["model"]["max_steps"] for r in res] == [1, None]
    assert all(r["config"]["sweep"]["name"] == "cam" for r in res)


def test_proposer_group_multirun_runs_each_proposer(tmp_path):
    """`python evaluate.py -m model/proposer=clip_es,gradcam,dense_sclip` as typed: 3 runs, 3 proposers."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", CARBENCH_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(ROOT / "evaluate.py"), "-m", "model/proposer=clip_es,gradcam,dense_sclip",
           "dataset=voc_fixture", f"dataset.root={tmp_path / 'voc'}", "limit=2", "postprocess=none", "device=cpu",
           "num_workers=0", "threads=1", f"hydra.sweep.dir={tmp_path / 'mr'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = [json.loads(p.read_text()) for p in sorted((tmp_path / "mr").glob("*/results.json"))]
    props = [r["config"]["model"]["proposer"] for r in res]
    assert [p["_target_"].rsplit(".", 1)[1] for p in props] == ["ClipESProposer", "ClipESProposer", "DenseProposer"]
    assert [p.get("refine") for p in props] == [True, False, None] and props[2]["attention"] == "sclip"
    assert all(r["num_items"]["evaluated"] == 2 if "num_items" in r else r["num_images"]["evaluated"] == 2
               for r in res)
