"""Forgetting inside a search: base skill measured once, retention recorded per trial, the best
reported config is the best *feasible* one, and a study with none feasible says so.
"""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from autoft.cli import main
from autoft.report import summary_text
from autoft.summary import build_summary

FORGETFUL_SPACE = """\
learning_rate: {low: 1.0e-3, high: 1.0e-2, log: true, default: 1.0e-2}
head_lr_multiplier: {value: 3}
batch_size: {value: 16}
trainable_layers: {low: 0, high: max, default: max}
epochs: {value: 3}
weight_decay: {value: 0.0}
warmup_ratio: {value: 0.0}
starts:
  - {trainable_layers: 0, learning_rate: 1.0e-2}
"""


@pytest.mark.slow
def test_search_with_drift_base_reports_a_feasible_best(tiny_model_dir, tiny_csv, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(FORGETFUL_SPACE)
    code = main(["search", "--model", str(tiny_model_dir), "--train", str(tiny_csv),
                 "--space", str(space), "--n-trials", "3", "--study", "forget",
                 "--studies-dir", str(tmp_path / "studies"), "--base-kind", "drift",
                 "--base-data", str(tiny_csv), "--min-retention", "0.999"])
    assert code == 0
    summary = json.loads((tmp_path / "studies" / "forget" / "summary.json").read_text())
    assert summary["base"]["kind"] == "drift"
    assert summary["base"]["score"] == 1.0, "the base model's CKA with itself"
    study = optuna.load_study(study_name="forget",
                              storage=f"sqlite:///{tmp_path / 'studies/forget/study.db'}")
    head_only = study.trials[1]
    assert head_only.params["trainable_layers"] == 0
    assert head_only.user_attrs["retention"] == 1.0, "a frozen encoder forgets nothing"
    assert head_only.user_attrs["base_check"].startswith("skipped: the trial trains nothing")
    # With a base task a trial evaluates at least 4 times, every 320 × 3 / 4 samples for all.
    assert [e["samples_seen"] for e in head_only.user_attrs["evaluations"]] == [
        240, 480, 720, 960][: len(head_only.user_attrs["evaluations"])]
    if head_only.state == TrialState.COMPLETE:
        assert len(head_only.user_attrs["evaluations"]) == 4
    full = study.trials[0]
    assert full.params["trainable_layers"] == 2
    assert "base_check" not in full.user_attrs and full.user_attrs["base_check_seconds"] > 0
    assert full.user_attrs["quick_retention"][0] < 0.999, "lr 1e-2 on every layer moves the encoder"
    best = summary["best"]
    assert best["retention"] >= 0.999
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        if trial.value > best["value"]:
            assert trial.user_attrs["retention"] < 0.999, "a better score must be infeasible"
    if full.state == TrialState.PRUNED:
        assert full.user_attrs["prune_reason"].startswith(("forgetting", "worse than the median"))


def add_trial(study: optuna.Study, value: float, retention: float, bar: float = 0.95) -> None:
    study.add_trial(create_trial(
        value=value, params={"trainable_layers": 2}, distributions={
            "trainable_layers": optuna.distributions.IntDistribution(0, 6)},
        user_attrs={"retention": retention, "constraint": [bar - retention],
                    "params": {"trainable_layers": 2, "learning_rate": 1e-4}}))


def storage_study(tmp_path) -> optuna.Study:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'r.db'}", study_name="r",
                                direction="maximize")
    study.set_user_attr("metric", "accuracy")
    study.set_user_attr("depth", 6)
    study.set_user_attr("base", {"kind": "similarity", "name": "similarity_spearman",
                                 "score": 0.5, "min_retention": 0.95})
    return study


def test_most_accurate_trial_that_forgets_is_not_the_best(tmp_path):
    study = storage_study(tmp_path)
    add_trial(study, 0.91, retention=0.60)
    add_trial(study, 0.85, retention=0.97)
    add_trial(study, 0.80, retention=1.00)
    summary = build_summary(study)
    assert summary["best"]["number"] == 1
    assert [p["number"] for p in summary["front"]] == [2, 1, 0]


def test_no_feasible_trial_names_the_least_forgetful(tmp_path):
    study = storage_study(tmp_path)
    add_trial(study, 0.91, retention=0.60)
    add_trial(study, 0.85, retention=0.80)
    summary = build_summary(study)
    assert summary["best"] is None
    assert summary["least_forgetful"]["number"] == 1
    text = summary_text(summary)
    assert "no trial kept 95% of the base-task skill; lower --min-retention" in text
    assert "trial 1" in text


def test_a_base_skill_that_is_noise_is_said_and_no_share_of_it_is_stated(
    tiny_model_dir, tiny_csv, texts, write_csv, tmp_path
):
    """Pairs rated at random: the untouched model's Spearman on them is noise, so prepare says
    so, and the study records it for the report (test_report) instead of a retention."""
    import random

    from autoft.config import build_config
    from autoft.prepare import prepare_study

    rng = random.Random(0)
    sentences = texts(121, seed=3)
    pairs = write_csv(tmp_path / "pairs.csv", [
        {"text": a, "pair": b, "score": f"{rng.random():.3f}"}
        for a, b in zip(sentences, sentences[1:], strict=False)])
    config = build_config({}, None, {
        "model": str(tiny_model_dir), "train": str(tiny_csv), "studies_dir": str(tmp_path),
        "base_kind": "similarity", "base_data": str(pairs), "base_text_pair_column": "pair"})
    lines: list[str] = []
    base = prepare_study(config, echo=lines.append).base
    assert "within its noise of no skill at all" in base["noise"]
    assert any("retention is not stated. Give base data the model has a skill on" in line
               for line in lines), lines
