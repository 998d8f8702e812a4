"""`python -m carbench.regress`: the paper's tables as data, row matching by settings, exit codes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from reported_helpers import CONF, paper_voc_results, write_results

from carbench import regress
from carbench.engine import evaluate as engine


@pytest.fixture(scope="module")
def paper() -> dict:
    return regress.load_reported("car_paper")


def rows(hits: list[dict]) -> set[tuple[str, str]]:
    return {(h["table"], h["row"] + (f" [{h['column']}]" if h.get("column") else "")) for h in hits}


def test_car_paper_holds_tables_1_to_7_with_provenance(paper):
    per_table = Counter(e["table"] for e in paper["entries"])
    assert per_table == {"Table 1": 11, "Table 2": 3, "Table 3": 8, "Table 4": 10, "Table 5": 14, "Table 6": 8,
                         "Table 7": 10}
    values = {(e["table"], e["row"], e.get("column")): e["value"] for e in paper["entries"]}
    assert values[("Table 1", "CaR (w/o SAM)", "VOC21")] == 67.6
    assert values[("Table 1", "CaR (w/o SAM)", "COCO-Object")] == 36.6
    assert values[("Table 6", "None", None)] == 64.3 and values[("Table 6", "T+A+M", None)] == 67.6
    assert values[("Table 7", "CaR", "RefCOCO+ testA")] == 36.03
    assert all(e["table"] and e["row"] and e["dataset"] for e in paper["entries"])


def test_paper_setting_matches_every_row_that_describes_it(paper):
    hits = regress.match_entries(paper_voc_results(67.6), paper)  # 23 released background words
    assert rows(hits) == {("Table 1", "CaR (w/o SAM) [VOC21]"), ("Table 2", "recurrence, CLIP-ES"),
                          ("Table 3", "B/16 + L/14 [VOC]"), ("Table 4", "circle + blur"),
                          ("Table 5", "η=0.4 θ=0.6 λ=0.4")}
    tam = yaml.safe_load((CONF / "bg_queries" / "TAM.yaml").read_text())["model"]["background_queries"]
    assert ("Table 6", "T+A+M") in rows(regress.match_entries(paper_voc_results(67.6, background_queries=tam), paper))


@pytest.mark.parametrize(("change", "row"), [
    ({"mask_threshold": 0.3}, ("Table 5", "η=0.3 θ=0.6 λ=0.4")),
    ({"clipes_threshold": 0.5}, ("Table 5", "η=0.4 θ=0.6 λ=0.5")),
    ({"cam": "gradcam"}, ("Table 2", "recurrence, gradCAM")),
    ({"max_steps": 1}, ("Table 2", "no recurrence (T=1), CLIP-ES")),
    ({"classifier": "vitb16"}, ("Table 3", "B/16 + B/16 [VOC]")),
    ({"visual_prompts": ["black"]}, ("Table 4", "mask (black)")),
    ({"background_queries": ["None"]}, ("Table 6", "None")),
])
def test_an_ablated_setting_matches_only_its_row(paper, change, row):
    assert rows(regress.match_entries(paper_voc_results(60.0, **change), paper)) == {row}


def test_voc20_matches_table_1_voc20_column(paper):
    res = paper_voc_results(91.0)
    res["dataset"]["name"] = "voc20"
    assert rows(regress.match_entries(res, paper)) == {("Table 1", "CaR (w/o SAM) [VOC20]")}


def test_cli_pass_fail_tolerance_and_no_match(tmp_path, capsys):
    ok = write_results(tmp_path / "ok", paper_voc_results(67.3))
    assert regress.main([str(ok)]) == 0
    out = capsys.readouterr().out
    assert "| Table 1 | CaR (w/o SAM) [VOC21] | mIoU | 67.30 | 67.60 | -0.30 | ±0.5 | ok |" in out and "PASS" in out

    low = write_results(tmp_path / "low", paper_voc_results(66.0))
    assert regress.main([str(low)]) == 1
    out = capsys.readouterr().out
    assert "| -1.60 | ±0.5 | MISS |" in out and "FAIL" in out
    assert regress.main([str(low), "--tol", "2"]) == 0

    other = write_results(tmp_path / "other", paper_voc_results(50.0, classifier="vitb32"))
    assert regress.main([str(other)]) == 1
    out = capsys.readouterr().out
    assert "no row of car_paper matches" in out and "classifier: run vitb32 vs row vitl14" in out


def test_partial_runs_are_refused_unless_allowed(tmp_path, capsys):
    part = write_results(tmp_path / "p", paper_voc_results(67.6, evaluated=50))
    assert regress.main([str(part)]) == 2
    assert "REFUSED: scored 50 of 1449 images" in capsys.readouterr().out
    assert regress.main([str(part), "--allow-partial"]) == 0


def test_bad_inputs_exit_2(tmp_path, capsys):
    assert regress.main([str(tmp_path), "--against", "car_paper"]) == 2  # no results.json
    assert regress.main([str(tmp_path), "--against", "no_such_table"]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("entries:\n  - {table: T, row: r, dataset: voc, value: 1, colour: red}\n")
    write_results(tmp_path / "r", paper_voc_results(1.0))
    assert regress.main([str(tmp_path / "r"), "--against", str(bad)]) == 2
    assert "unknown keys ['colour']" in capsys.readouterr().err


@pytest.fixture(scope="module")
def fixture_run(tmp_path_factory) -> dict:
    """A real run: the VOC fixture, random tiny CLIPs, no CRF."""
    root = tmp_path_factory.mktemp("voc") / "VOC2012"  # voc_fixture writes itself there on first use
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["dataset=voc_fixture", f"dataset.root={root}", "postprocess=none",
                                           "device=cpu", "num_workers=0", "dataset.num_val=3"])
    return engine.run_evaluation(cfg, tmp_path_factory.mktemp("run") / "run")


def test_own_schema_file_gates_a_real_run(fixture_run, tmp_path, capsys):
    """The schema of conf/reported/README.md (what toy.yaml uses), on a real results.json."""
    miou = fixture_run["metrics"]["mIoU"]
    doc = {"name": "fixture", "metric": "mIoU", "tol": 0.5,
           "bases": {"tiny": {"proposal": "tiny_random", "classifier": "tiny_random", "postprocess": "none"}},
           "entries": [{"table": "golden", "row": "car", "dataset": "voc_fixture", "base": "tiny",
                        "value": round(miou, 2)},
                       {"table": "golden", "row": "gradcam", "dataset": "voc_fixture", "base": "tiny",
                        "settings": {"cam": "gradcam"}, "value": 1.0}]}
    path = tmp_path / "fixture.yaml"
    path.write_text(yaml.safe_dump(doc))
    results = str(Path(fixture_run["run_dir"]) / "results.json")
    assert regress.main([results, "--against", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| golden | car |" in out and "gradcam" not in out.split("PASS")[0].split("| golden | car |")[1]
    doc["entries"][0]["value"] = miou + 3
    path.write_text(yaml.safe_dump(doc))
    assert regress.main([results, "--against", str(path)]) == 1


def test_golden_rows_format_is_read_one_sided(fixture_run, tmp_path, capsys):
    """conf/reported/toy.yaml as `carbench.toy.golden` writes it: rows with commands, a drop tolerance."""
    miou = fixture_run["metrics"]["mIoU"]
    doc = {"benchmark": "voc_fixture", "split": "val", "tolerance_mIoU": 1.0, "rows": {
        "car": {"command": "python evaluate.py", "mIoU": miou - 5},  # we are better: fine for a one-sided gate
        "gradcam": {"command": "python evaluate.py model.cam=gradcam", "mIoU": 99.0},
    }}
    path = tmp_path / "golden.yaml"
    path.write_text(yaml.safe_dump(doc))
    reported = regress.load_reported(str(path))
    hits = regress.match_entries(fixture_run, reported)
    assert [h["row"] for h in hits] == ["car"]  # model.cam is pinned to the default clip_es for the car row
    results = str(Path(fixture_run["run_dir"]) / "results.json")
    assert regress.main([results, "--against", str(path)]) == 0
    doc["rows"]["car"]["mIoU"] = miou + 1.5
    path.write_text(yaml.safe_dump(doc))
    assert regress.main([results, "--against", str(path)]) == 1
    assert "−1 | MISS" in capsys.readouterr().out


def test_a_run_under_another_protocol_matches_no_car_row(paper):
    assert regress.match_entries(paper_voc_results(67.6, protocol={"name": "sclip"}), paper) == []
