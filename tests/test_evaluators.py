"""The per-task evaluators, the oracle-query mode and the results.json schema, on hand-made predictions.

Every figure is counted by hand in the comments; nothing here loads a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from reported_helpers import paper_voc_results, write_results

from carbench import regress, report, runs
from carbench.engine.distributed import DistContext
from carbench.engine.evaluators import GRESEvaluator, Outputs, SemanticEvaluator
from carbench.engine.evaluators.query_sets import kept_label_steps
from carbench.engine.loop import start_segment
from carbench.engine.oracle import lift_prediction
from carbench.engine.schema import ALIASES, assemble_results
from carbench.types import BACKGROUND, Prediction, Sample

# classes: 0 background, 1 cat, 2 dog, 3 car; the queries stand for 1, 2, 3
DATASET = SimpleNamespace(name="mini", num_classes=4, ignore_index=255, class_names=["background", "cat", "dog", "car"],
                          queries=["cat", "dog", "car"], query_label_ids=[1, 2, 3], background_label=0)


def semantic(tmp_path: Path) -> SemanticEvaluator:
    return SemanticEvaluator(DATASET, reduction="mmseg", pred_ignore="miss", outputs=Outputs(tmp_path), split="val")


def pred(labels: np.ndarray, kept_per_step: list[list[int]], kept: list[int] | None = None) -> Prediction:
    trace = [{"step": s + 1, "alive": [], "kept": k, "time": {"cam": 0.5}} for s, k in enumerate(kept_per_step)]
    final = kept if kept is not None else kept_per_step[-1]
    return Prediction(labels=labels, masks=np.zeros((3, *labels.shape), np.float32), scores=np.ones(3, np.float32),
                      kept=final, trace=trace)


def two_images() -> list[tuple[Sample, Prediction]]:
    # image a: GT left half cat (1), right half background; steps keep {cat, car} then {cat}
    ta = np.zeros((2, 4), np.int64)
    ta[:, :2] = 1
    la = np.full((2, 4), BACKGROUND, np.int64)
    la[:, :3] = 0  # cat painted on 3 of 4 columns: 4 px right, 2 px of background called cat
    # image b: GT all dog (2) except one ignore pixel; one step keeps {car}: every dog pixel called car
    tb = np.full((2, 4), 2, np.int64)
    tb[0, 0] = 255
    lb = np.full((2, 4), 2, np.int64)
    return [(Sample("a", np.zeros((2, 4, 3), np.uint8), ta, list(DATASET.queries)), pred(la, [[0, 2], [0]])),
            (Sample("b", np.zeros((2, 4, 3), np.uint8), tb, list(DATASET.queries)), pred(lb, [[2]]))]


def test_semantic_metric_and_filter_diagnostics_counted_by_hand(tmp_path) -> None:
    ev = semantic(tmp_path)
    records = [ev.process(s, p) for s, p in two_images()]
    assert records[0]["filter"] == {"steps": [[1, 3], [1]], "final": [1], "present": [1]}
    assert records[1]["filter"] == {"steps": [[3]], "final": [3], "present": [2]}
    m = ev.evaluate()
    # IoU: background 2/(4+2)... bg GT 4 px, 2 called cat → I 2, U 4; cat I 4, U 6; dog I 0 U 7; car I 0 U 7
    assert m["mIoU"] == pytest.approx((2 / 4 + 4 / 6 + 0 + 0) / 4 * 100)
    f = ev.summarise([])["filter"]
    # step 1: a keeps {1,3} vs {1}: tk1 wk1; b keeps {3} vs {2}: wk1 wd1 → P 1/3, R 1/2, exact 0
    s1, s2 = f["per_step"]
    assert (s1["precision"], s1["recall"], s1["exact"]) == pytest.approx((1 / 3, 1 / 2, 0.0))
    assert (s1["wrongly_kept"], s1["wrongly_dropped"]) == (2, 1)
    # step 2: a {1} exact; b carried {3} → P 1/2, R 1/2, exact 1/2
    assert (s2["precision"], s2["recall"], s2["exact"]) == pytest.approx((1 / 2, 1 / 2, 1 / 2))
    assert f["final"]["wrongly_dropped"] == 1 and f["final"]["wrongly_kept"] == 1 and f["final"]["images"] == 2


def test_replayed_records_rebuild_the_same_state(tmp_path) -> None:
    first = semantic(tmp_path)
    records = [first.process(s, p) for s, p in two_images()]
    again = semantic(tmp_path)
    for r in records:
        again.replay(json.loads(json.dumps(r)))  # as read back from progress.jsonl
    assert again.evaluate() == pytest.approx(first.evaluate(), nan_ok=True)
    assert again.summarise([])["filter"] == first.summarise([])["filter"]
    assert (again.summarise([])["confusion"] == first.summarise([])["confusion"])


def test_a_cut_recurrence_outputs_its_unfiltered_last_input(tmp_path) -> None:
    ev = semantic(tmp_path)
    sample, _ = two_images()[0]
    # max_steps=1: the step kept {cat}, but the model painted from its input {cat, dog, car}
    rec = ev.process(sample, pred(np.zeros((2, 4), np.int64), [[0]], kept=[0, 1, 2]))
    assert rec["filter"]["steps"] == [[1]] and rec["filter"]["final"] == [1, 2, 3]


def test_two_pass_steps_are_mapped_and_combined() -> None:
    # stuff pass over queries [2] (car) for 1 step, thing pass over [0, 1] (cat, dog) for 2 steps
    trace = [{"pass": "stuff", "query_ids": [2], "kept": [0]},
             {"pass": "thing", "query_ids": [0, 1], "kept": [0, 1]},
             {"pass": "thing", "query_ids": [0, 1], "kept": [1]}]
    p = Prediction(np.zeros((1, 1), np.int64), np.zeros((3, 1, 1)), np.ones(3), kept=[1, 2], trace=trace)
    assert kept_label_steps(p, [1, 2, 3]) == [[1, 2, 3], [2, 3]]
    with pytest.raises(ValueError, match="query_ids"):
        kept_label_steps(Prediction(p.labels, p.masks, p.scores, [0], [{"pass": "x", "kept": [0]}]), [1, 2, 3])


class Recorder:
    """A model that records the queries it is asked about and paints query 0 everywhere."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    def segment(self, image: np.ndarray, queries: list[str]) -> Prediction:
        self.asked.append(list(queries))
        k = len(queries)
        trace = [{"step": 1, "alive": list(range(k)), "kept": list(range(k)), "time": {}}]
        return Prediction(np.zeros(image.shape[:2], np.int64), np.ones((k, *image.shape[:2]), np.float32),
                          np.arange(1, k + 1, dtype=np.float32), kept=list(range(k)), trace=trace)


def test_oracle_queries_are_the_gt_classes_and_map_back() -> None:
    model = Recorder()
    target = np.array([[0, 3], [1, 255]], np.int64)  # cat and car present, dog absent
    sample = Sample("x", np.zeros((2, 2, 3), np.uint8), target, list(DATASET.queries))
    p = start_segment(model, sample, DATASET.query_label_ids)()
    assert model.asked == [["cat", "car"]]
    assert (p.labels == 0).all() and p.kept == [0, 2] and p.trace[0]["kept"] == [0, 2]
    assert p.scores.tolist() == [1.0, 0.0, 2.0] and p.masks[1].sum() == 0 and p.masks.shape == (3, 2, 2)
    background_only = Sample("y", sample.image, np.array([[0, 255], [0, 0]]), list(DATASET.queries))
    empty = start_segment(model, background_only, DATASET.query_label_ids)()
    assert len(model.asked) == 1 and (empty.labels == BACKGROUND).all() and empty.kept == []


def test_lift_prediction_puts_the_subset_back_in_place() -> None:
    sub = Prediction(np.array([[1, BACKGROUND]]), np.ones((2, 1, 2), np.float32), np.array([0.3, 0.7], np.float32),
                     kept=[1], trace=[])
    full = lift_prediction(sub, [1, 2], 3)
    assert full.labels.tolist() == [[2, BACKGROUND]] and full.kept == [2]
    assert full.scores.tolist() == pytest.approx([0.0, 0.3, 0.7])


GREF = SimpleNamespace(name="grefcoco", split="val", split_by="unc", mode="expression", text="raw", mask_rule="union",
                       queries_of=lambda i: [f"expr {i}"])


def referring_item(sid: str, target: np.ndarray, fg: np.ndarray, score: float) -> tuple[Sample, Prediction]:
    labels = np.where(fg, 0, BACKGROUND).astype(np.int64)
    p = Prediction(labels, fg[None].astype(np.float32), np.array([score], np.float32), kept=[0], trace=[{"time": {}}])
    return Sample(sid, np.zeros((*target.shape, 3), np.uint8), target, ["e"], {"image_id": 7}), p


def test_gres_no_target_rule_and_metrics_by_hand(tmp_path) -> None:
    t = np.zeros((2, 2), bool)
    t[0] = True
    items = [referring_item("hit", t, t.copy(), 0.9),               # target, exact: IoU 1
             referring_item("none_low", np.zeros((2, 2), bool), np.ones((2, 2), bool), 0.2),  # emptied: correct
             referring_item("none_high", np.zeros((2, 2), bool), t.copy(), 0.8)]  # kept: 2 px false positive
    ev = GRESEvaluator(GREF, (0.5,), Outputs(tmp_path), no_target_rule="min_score", no_target_threshold=0.5)
    records = [ev.process(s, p) for s, p in items]
    assert [r["pred_area"] for r in records] == [2, 0, 2]
    m = ev.evaluate()
    assert m["gIoU"] == pytest.approx((1 + 1 + 0) / 3 * 100)  # a no-target item predicted empty counts 1
    assert m["N-acc"] == pytest.approx(50.0) and m["T-acc"] == pytest.approx(100.0)
    assert m["cIoU"] == pytest.approx(2 / 4 * 100) == m["oIoU"]  # ΣI 2, ΣU 2 + 0 + 2
    assert m["mIoU"] == pytest.approx(1 / 3 * 100)  # RefCOCO rule: empty union counts 0
    again = GRESEvaluator(GREF, (0.5,), Outputs(tmp_path), no_target_rule="min_score", no_target_threshold=0.5)
    for r in records:
        again.replay(r)
    assert again.evaluate() == pytest.approx(m)


def test_unknown_no_target_rule_is_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown no-target rule 'sometimes'"):
        GRESEvaluator(GREF, (0.5,), Outputs(tmp_path), no_target_rule="sometimes")


def test_results_carry_the_unified_keys_and_their_aliases(tmp_path) -> None:
    ev = semantic(tmp_path)
    records = []
    for i, (s, p) in enumerate(two_images()):
        records.append({"index": i, "id": s.id, "status": "ok", **ev.process(s, p), "steps": len(p.trace),
                        "kept": [s.queries[k] for k in p.kept], "time": {"cam": 1.0}})
    records.append({"index": 2, "id": "c", "status": "failed", "error": "OSError: bad"})
    res = assemble_results(ev, records, 5, 3, 2.0, "cpu", DistContext(), {"model": {}}, "h")
    assert res["num_items"] == {"expected": 3, "evaluated": 2, "failed": 1, "split_size": 5}
    assert (res["task"], res["unit"], res["primary_metric"]) == ("semantic", "image", "mIoU")
    assert res["per_item"] == [{"id": "a", "steps": 2, "kept": ["cat"]}, {"id": "b", "steps": 1, "kept": ["car"]}]
    for old, new in ALIASES["semantic"].items():
        assert res[old] == res[new]
    assert res["timing"]["stage_mean_s_per_item"] == {"cam": 1.0} and res["steps_histogram"] == {1: 1, 2: 1}


# A results.json as the writer before the unified schema wrote it: semantic files had only num_images /
# per_image (tests/reported_helpers.py builds one with the paper's VOC settings) …
def old_semantic() -> dict:
    return paper_voc_results(67.4)

# …and a referring one (num_samples, plus num_images with the same counts).
OLD_REFERRING = {
    "task": "referring", "dataset": {"name": "refcoco", "split": "val", "num_images": 3},
    "num_samples": {"expected": 10, "evaluated": 8, "failed": 0, "split_size": 10},
    "metrics": {"mIoU": 30.0, "oIoU": 28.0}, "config": {"model": {"name": "car"}, "dataset": {"name": "refcoco"}},
}


def test_old_results_files_still_read_in_report_and_regress(tmp_path, capsys) -> None:
    path = write_results(tmp_path / "0", old_semantic())
    assert "num_items" not in json.loads(path.read_text())
    loaded = runs.load_results(path)
    assert runs.item_counts(loaded)["evaluated"] == 1449 and not runs.is_partial(loaded)
    _, rows = report.build_rows([loaded], tmp_path)
    assert rows[0]["images"] == "1449/1449" and rows[0]["mIoU"] == 67.4 and "kept precision" not in rows[0]
    assert regress.main([str(path), "--against", "car_paper", "--tol", "1"]) == 0
    assert "| Table 1 |" in capsys.readouterr().out
    without_alias = {k: v for k, v in OLD_REFERRING.items()}  # num_samples alone is enough too
    (tmp_path / "r.json").write_text(json.dumps(without_alias))
    ref = runs.load_results(tmp_path / "r.json")
    assert runs.item_counts(ref)["evaluated"] == 8 and runs.is_partial(ref)


def test_report_shows_the_filter_columns_of_new_runs(tmp_path) -> None:
    old = {**old_semantic(), "run_dir": str(tmp_path / "0")}
    new = {**old, "num_items": old["num_images"], "run_dir": str(tmp_path / "1"),
           "filter": {"final": {"precision": 0.75, "recall": 0.5, "exact": 0.25, "wrongly_dropped": 3,
                                "wrongly_kept": 1}, "per_step": []}}
    _, rows = report.build_rows([old, new], tmp_path)
    assert [rows[1][c] for c in runs.FILTER_COLUMNS.values()] == [0.75, 0.5, 0.25, 3, 1]
    assert rows[0]["kept precision"] is None  # an old run has no filter diagnostics: shown as –
    md = report.to_markdown([], rows)
    assert "| kept precision | kept recall | kept = GT | wrongly dropped | wrongly kept |" in md
    assert "| 0.750 | 0.500 | 0.250 | 3 | 1 |" in md
    assert runs.metric_value(new, "filter.exact") == 0.25 and runs.metric_value(old, "filter.exact") is None


def test_oracle_queries_run_end_to_end(tmp_path, monkeypatch) -> None:
    """model.oracle_queries=true through run_evaluation: the model is asked about each image's GT classes
    only, and a model that keeps everything it is asked about has a perfect filter."""
    from hydra import compose, initialize_config_dir

    from carbench.data import build_dataset
    from carbench.data.fixtures import write_voc_fixture
    from carbench.engine import loop
    from carbench.engine.evaluate import run_evaluation

    voc = write_voc_fixture(tmp_path / "voc", num_val=2, seed=4, sizes=[(32, 24)])
    model = Recorder()
    monkeypatch.setattr(loop, "build_model", lambda *a, **k: model)
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=["dataset=voc", f"dataset.root={voc}", "device=cpu", "num_workers=0",
                                           "model.oracle_queries=true"])
    res = run_evaluation(cfg, tmp_path / "run")
    ds = build_dataset(cfg.dataset)
    expected = [[q for q, lid in zip(ds.queries, ds.query_label_ids, strict=True) if lid in np.unique(ds[i].target)]
                for i in range(2)]
    assert model.asked == [e for e in expected if e]
    final = res["filter"]["final"]
    assert (final["exact"], final["precision"], final["recall"], final["wrongly_kept"]) == (1.0, 1.0, 1.0, 0)
    assert [r["kept"] for r in res["per_item"]] == expected
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        ref = compose("config", overrides=["dataset=refcoco", "device=cpu", "model.oracle_queries=true"])
    with pytest.raises(ValueError, match="oracle_queries=true needs a semantic dataset"):
        loop.oracle_labels(ref, None, model)


class WholeImage:
    """A referring model that claims the whole image with a fixed confidence."""

    def __init__(self, score: float) -> None:
        self.score = score

    def segment(self, image: np.ndarray, queries: list[str]) -> Prediction:
        h, w = image.shape[:2]
        return Prediction(np.zeros((h, w), np.int64), np.ones((1, h, w), np.float32),
                          np.array([self.score], np.float32), kept=[0], trace=[{"step": 1, "kept": [0], "time": {}}])


@pytest.mark.parametrize(("score", "n_acc", "t_acc"), [(0.2, 100.0, 0.0), (0.9, 0.0, 100.0)])
def test_grefcoco_runs_are_scored_by_the_gres_evaluator(tmp_path, monkeypatch, score, n_acc, t_acc) -> None:
    """dataset=grefcoco with no_target_rule=min_score: a confidence under the floor empties every answer
    (every no-target expression right, every target missed), one above it keeps them."""
    from hydra import compose, initialize_config_dir

    from carbench.data.fixtures_bench import write_grefcoco_fixture
    from carbench.engine import loop
    from carbench.engine.evaluate import run_evaluation

    write_grefcoco_fixture(tmp_path / "gref")
    monkeypatch.setattr(loop, "build_model", lambda *a, **k: WholeImage(score))
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["dataset=grefcoco", f"dataset.root={tmp_path / 'gref'}", "device=cpu",
                                           "num_workers=0", "dataset.no_target_rule=min_score",
                                           "dataset.no_target_threshold=0.5"])
    res = run_evaluation(cfg, tmp_path / "run")
    assert res["primary_metric"] == "gIoU" and (res["task"], res["unit"]) == ("referring", "expression")
    assert (res["metrics"]["N-acc"], res["metrics"]["T-acc"]) == pytest.approx((n_acc, t_acc))
    assert res["no_target"]["rule"] == "min_score" and res["no_target"]["num_no_target"] >= 1
    assert res["num_items"] == res["num_samples"] == res["num_images"]
