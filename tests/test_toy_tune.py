"""`carbench.toy.tune`: the order of the search and what each step is scored by (fake scores: no model runs)."""

from __future__ import annotations

import carbench.toy.tune as tune


def _fake(monkeypatch):
    calls: list[tuple[str, dict]] = []

    def car(n, setting, extra):
        calls.append(("car", dict(setting)))
        # best θ depends on λ, so the test sees whether θ was searched at the λ chosen first
        return -abs(setting["confidence_threshold"] - setting["clipes_threshold"]) - abs(setting["mask_threshold"] - 0.4)

    def oracle(n, setting, extra):
        calls.append(("oracle", dict(setting)))
        return -abs(setting["clipes_threshold"] - 0.4)  # not the config's λ

    monkeypatch.setattr(tune, "tune_miou", car)
    monkeypatch.setattr(tune, "tune_oracle_miou", oracle)
    return calls


def test_lambda_is_chosen_first_by_the_oracle_then_theta_eta_and_prompts_by_car(monkeypatch):
    calls = _fake(monkeypatch)
    best = tune.main(["--theta", "0.3", "0.6", "--eta", "0.3", "0.4", "--prompts", "blur", "circle,blur"])
    assert best["clipes_threshold"] == 0.4 and best["confidence_threshold"] == 0.3 and best["mask_threshold"] == 0.4
    oracle_calls = [s for what, s in calls if what == "oracle"]
    assert [s["clipes_threshold"] for s in oracle_calls] == tune.LAM_GRID
    first_car = next(i for i, (what, _) in enumerate(calls) if what == "car")
    assert all(what == "oracle" for what, _ in calls[:first_car])  # λ before anything CaR scores
    assert all(s["clipes_threshold"] == 0.4 for what, s in calls if what == "car")


def test_lam_by_car_scores_lambda_after_theta_and_eta(monkeypatch):
    calls = _fake(monkeypatch)
    tune.main(["--lam", "0.35", "0.45", "--theta", "0.3", "0.6", "--eta", "0.3", "0.4", "--lam-by", "car",
               "--prompts", "blur"])
    assert not [s for what, s in calls if what == "oracle"]
    lams = [s["clipes_threshold"] for what, s in calls if what == "car"]
    assert 0.35 in lams and 0.45 in lams  # grid values no config uses: they only appear in the λ step
    assert min(lams.index(0.35), lams.index(0.45)) == 4  # after the 2 × 2 θ × η grid
