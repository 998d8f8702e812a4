"""`python -m carbench.report`: ablation table (markdown + CSV), plot on numeric axes, peers view."""

from __future__ import annotations

import csv

import pytest
import yaml
from reported_helpers import CONF, paper_voc_results, write_results

from carbench import report

WORDS = {g: yaml.safe_load((CONF / "bg_queries" / f"{g}.yaml").read_text())["model"]["background_queries"]
         for g in ("T", "TAM")}


def multirun(tmp_path, variants: list[dict], mious: list[float]):
    """A multirun tree as Hydra lays it out (0/, 1/, … 10/) with one results.json per job."""
    for i, (change, miou) in enumerate(zip(variants, mious, strict=True)):
        res = paper_voc_results(miou, **change)
        res["config"]["dataset"]["root"] = f"/data/{i}"  # differs per job but is not an axis
        res["config"]["device"] = f"cuda:{i % 2}"
        write_results(tmp_path / str(i), res)
    return tmp_path


def test_numeric_sweep_table_csv_and_plot(tmp_path, capsys):
    etas = [0.3, 0.4, 0.5] * 4
    thetas = [0.5] * 3 + [0.6] * 3 + [0.7] * 3 + [0.8] * 3
    mious = [60.0 + i for i in range(12)]
    root = multirun(tmp_path, [{"mask_threshold": e, "confidence_threshold": t} for e, t in zip(etas, thetas,
                                                                                                strict=True)], mious)
    assert report.main([str(root), "--against", "car_paper"]) == 0
    out = capsys.readouterr().out
    assert "axes: model.mask_threshold, model.confidence_threshold" in out
    lines = [ln for ln in out.splitlines() if ln.startswith("| ")]
    assert lines[0] == ("| η (mask_threshold) | θ (confidence_threshold) | mIoU | mIoU_present_classes | aAcc | "
                        "images | paper | paper row | run |")
    assert lines[1] == "| 0.3 | 0.5 | 60.00 | 60.00 | 90.00 | 1449/1449 | – |  | 0 |"
    assert lines[5] == "| 0.4 | 0.6 | 64.00 | 64.00 | 90.00 | 1449/1449 | 67.60 | Table 1: CaR (w/o SAM) | 4 |"
    assert lines[-1].endswith("| 11 |")  # job 10 and 11 after 9: numeric, not lexical, order
    with open(root / "report.csv") as f:
        table = list(csv.DictReader(f))
    assert [float(r["mIoU"]) for r in table] == mious
    assert table[4]["paper"] == "67.6" and table[0]["model.mask_threshold"] == "0.3"
    assert (root / "report.md").read_text().startswith("| η (mask_threshold) |")
    png = (root / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_list_axes_get_names_and_no_plot_without_a_numeric_axis(tmp_path):
    root = multirun(tmp_path, [{"background_queries": WORDS["T"]}, {"background_queries": WORDS["TAM"]},
                               {"background_queries": ["None"]}, {"background_queries": ["sky", "road"]}],
                    [65.6, 67.6, 64.3, 60.0])
    out = report.report(root)
    assert out["axes"] == ["model.background_queries"]
    assert [r["model.background_queries"] for r in out["rows"]] == ["T", "TAM", "none", "custom(2 words)"]
    assert out["png"] is None and not (root / "report.png").exists()


def test_prompt_axis_is_order_free(tmp_path):
    root = multirun(tmp_path, [{"visual_prompts": ["circle", "blur"]}, {"visual_prompts": ["gray"]}], [67.6, 66.1])
    out = report.report(root, against="car_paper")
    assert [(r["model.visual_prompts"], r["paper"]) for r in out["rows"]] == [("blur+circle", 67.6), ("gray", 66.1)]


def test_no_results_is_an_error(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_an_unknown_plot_metric_is_an_error_before_anything_is_written(tmp_path, capsys):
    root = multirun(tmp_path, [{"mask_threshold": 0.3}, {"mask_threshold": 0.5}], [60.0, 62.0])
    assert report.main([str(root), "--metric", "miou"]) == 2
    assert "--metric 'miou' is not a column of the report; valid: mIoU," in capsys.readouterr().err
    assert not (root / "report.md").exists() and not (root / "report.png").exists()
    assert report.main([str(root), "--metric", "aAcc"]) == 0 and (root / "report.png").exists()


@pytest.fixture()
def peers_file(tmp_path):
    """A small file in the schema of conf/reported/peers.yaml."""
    doc = {"entries": [
        {"method": "SCLIP", "dataset": "voc", "mIoU": 59.1, "protocol": "sclip", "source": "SCLIP Table 1", "kind": "P"},
        {"method": "CaR (paper)", "dataset": "voc", "mIoU": 67.6, "protocol": "car", "source": "CaR Table 1",
         "kind": "P"},
        {"method": "NACLIP", "dataset": "context", "mIoU": 35.2, "protocol": "sclip", "source": "x", "kind": "S"},
    ]}
    path = tmp_path / "peers.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_peers_view_flags_protocol_differences(tmp_path, peers_file, capsys):
    write_results(tmp_path / "run", paper_voc_results(66.9))
    assert report.main([str(tmp_path / "run"), "--peers", "--peers-file", str(peers_file)]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("| ")]
    assert lines[1].startswith("| **this run** | 66.9 | car | S |")
    assert lines[2] == "| CaR (paper) | 67.6 | car | P | CaR Table 1 |  |"  # same protocol: no flag
    assert lines[3] == "| SCLIP | 59.1 | sclip | P | SCLIP Table 1 | ⚠ protocol differs: sclip (this run: car) |"
    assert "NACLIP" not in out  # other dataset


def test_peers_view_warns_about_partial_runs_and_lenient_rules(tmp_path, peers_file, capsys):
    res = paper_voc_results(70.0, evaluated=10)
    res["metric_rule"] = {"reduction": "present", "pred_ignore": "drop"}
    write_results(tmp_path / "run", res)
    report.main([str(tmp_path / "run"), "--peers", "--peers-file", str(peers_file)])
    out = capsys.readouterr().out
    assert "scored 10 of 1449 images: not comparable" in out
    assert "mIoU over present classes; 'no class' predictions dropped" in out


def test_malformed_peers_file_names_the_entry(tmp_path):
    from carbench.peers import load_peers

    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump({"entries": [{"method": "X", "dataset": "voc", "mIoU": 1.0}]}))
    with pytest.raises(ValueError, match="entry 0 .*'X'.* lacks protocol, source, kind"):
        load_peers(bad)


def test_a_sclip_protocol_run_is_flagged_against_car_numbers(tmp_path, peers_file, capsys):
    write_results(tmp_path / "run", paper_voc_results(60.0, protocol={"name": "sclip", "short_side": 336}))
    report.main([str(tmp_path / "run"), "--peers", "--peers-file", str(peers_file)])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ")]
    assert lines[1].startswith("| **this run** | 60.0 | sclip |")
    assert lines[2].endswith("| ⚠ protocol differs: car (this run: sclip) |")
    assert lines[3].endswith("| SCLIP Table 1 |  |")
