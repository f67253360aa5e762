"""Honest retention and the price of the bar: the base data split once per study into a searched
and an audit part that no trial reads, the reported config audited with a bootstrap interval, and
the best score at each retention bar, pruned trials and a pruned default included.
"""

from __future__ import annotations

import json
import random

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from transformers.models.bert import modeling_bert

import autoft.audit
import autoft.commands
import autoft.plots
from autoft.cli import main
from autoft.forgetting.split import BaseSplit, split_base
from autoft.objective import Objective
from autoft.plots import retention_plot
from autoft.report import summary_text, write_report
from autoft.summary import build_summary

DISTRIBUTIONS = {"learning_rate": FloatDistribution(1e-5, 1e-2, log=True),
                 "trainable_layers": IntDistribution(0, 6)}


def test_split_is_seeded_holds_back_half_and_says_when_the_set_is_too_small():
    split = split_base(50, "documents", seed=3)
    assert split == split_base(50, "documents", seed=3) != split_base(50, "documents", seed=4)
    assert len(split.audit) == 25 and split.note is None
    parts = split.parts(max_examples=1000, check_examples=10)
    assert set(parts["search"]).isdisjoint(parts["audit"])
    assert sorted(parts["search"] + parts["audit"]) == list(range(50))
    assert parts["quick"] == parts["search"][:10]
    assert BaseSplit.from_dict(json.loads(json.dumps(split.to_dict()))) == split
    small = split_base(99, "pairs", seed=0)
    assert not small.held_out and "99 pairs (fewer than 100)" in small.note
    assert small.parts(1000, 10)["audit"] == list(range(99)), "all of it, with the interval"


def add(study, number_params, state, value, retention=None, quick=None, **attrs):
    """A trial as the objective records it; a pruned one keeps its last evaluation's score."""
    layers, rate = number_params
    params = {"trainable_layers": layers, "learning_rate": rate}
    attrs |= {"params": {**params, "batch_size": 16, "epochs": 3}}
    if retention is not None:
        attrs |= {"retention": retention, "base_score": retention * 0.5,
                  "constraint": [0.95 - retention]}
    if quick is not None:
        attrs |= {"quick_retention": quick, "constraint": [0.95 - quick[-1]]}
    study.add_trial(create_trial(
        state=state, value=value if state == TrialState.COMPLETE else None, params=params,
        distributions=DISTRIBUTIONS, user_attrs=attrs,
        intermediate_values={1: value - 0.05, 2: value}))


@pytest.fixture
def crafted(tmp_path) -> optuna.Study:
    """The default config (trial 0) pruned for forgetting, then trials of every kind."""
    study = optuna.create_study(study_name="price", direction="maximize",
                                storage=f"sqlite:///{tmp_path / 'study.db'}")
    facts = {"metric": "macro_f1", "depth": 6, "default_params": {"trainable_layers": 3},
             "base": {"kind": "similarity", "name": "similarity_spearman", "score": 0.5,
                      "min_retention": 0.95}}
    for key, value in facts.items():
        study.set_user_attr(key, value)
    add(study, (3, 5e-5), TrialState.PRUNED, 0.80, quick=[0.90, 0.84],
        prune_reason="forgetting: kept 0.84 of the base skill on the quick check, below 0.85")
    add(study, (0, 1e-3), TrialState.COMPLETE, 0.60, retention=1.0)
    add(study, (1, 2e-4), TrialState.COMPLETE, 0.70, retention=0.993)
    add(study, (2, 1e-4), TrialState.COMPLETE, 0.74, retention=0.96,
        interpolation=[{"mix": 0.5, "value": 0.72, "retention": 0.995}])
    add(study, (6, 1e-4), TrialState.COMPLETE, 0.78, retention=0.91)
    add(study, (6, 1e-3), TrialState.PRUNED, 0.90, quick=[0.70],
        prune_reason="forgetting: kept 0.70 of the base skill on the quick check, below 0.85")
    return study


def test_price_table_rows_for_crafted_trials(crafted):
    summary = build_summary(crafted)
    rows = [(r["bar"], r["value"], r.get("number"), r.get("how")) for r in summary["price"]]
    assert rows == [
        (1.0, 0.60, 1, "complete"),
        (0.99, 0.72, 3, "interpolated"),
        (0.95, 0.74, 3, "complete"),
        (0.90, 0.78, 4, "complete"),
        (0.80, 0.80, 0, "pruned"),
        (None, 0.90, 5, "pruned"),
    ]
    assert [r["users_bar"] for r in summary["price"]] == [False, False, True, False, False, False]
    assert summary["price"][0]["config"].startswith("train only the new head")
    assert summary["price"][1]["config"].endswith("mixed back toward the base model (50% tuned)")
    assert summary["price"][4]["config"].endswith("stopped early (pruned), at the score it had "
                                                  "then")
    text = summary_text(summary)
    assert "  ≥ 0.95 (your bar)  0.7400           -0.1600    3      train the top 2 of 6" in text
    assert "0.8000 (pruned)" in text and "no bar" in text


def test_default_config_stopped_early_still_has_its_score(crafted, tmp_path):
    summary = write_report(crafted, tmp_path)
    default = summary["default"]
    assert (default["number"], default["state"], default["value"]) == (0, "pruned", 0.80)
    assert default["stopped"].startswith("forgetting: kept 0.84")
    assert "the default config scored 0.8000 when it was stopped early (forgetting" in (
        summary_text(summary))
    md = (tmp_path / "report.md").read_text()
    assert "no finished score" not in md
    assert "the default config (trial 0) was stopped early (forgetting" in md
    assert "## The price of the bar" in md and "| ≥ 0.95 (your bar) | 0.7400 | -0.1600 | 3 |" in md


def test_retention_plot_shows_pruned_trials_where_they_stopped(crafted, monkeypatch):
    drawn = {}

    def keep(fig):
        ax = fig.axes[0]
        for collection in ax.collections[1:]:  # the first is the feasible band
            drawn[collection.get_label()] = collection.get_offsets().tolist()
        return b"png"

    monkeypatch.setattr(autoft.plots, "_png", keep)
    retention_plot(crafted.get_trials(), "macro_f1", 0.95)
    assert drawn["pruned (score and quick check when stopped)"] == [[0.84, 0.80], [0.70, 0.90]]
    assert drawn["interpolated toward the base weights"] == [[0.995, 0.72]]
    assert [0.91, 0.78] in drawn["complete, forgot too much"]


def base_texts(count: int, words) -> list[str]:
    """Distinct 8-word texts of the tiny vocabulary (the target texts have 5 words)."""
    rng, texts = random.Random(7), set()
    while len(texts) < count:
        texts.add(" ".join(rng.choices(words.all, k=8)))
    return sorted(texts)


@pytest.mark.slow
def test_study_audits_the_best_on_data_no_trial_read(tiny_model_dir, tiny_csv, tmp_path,
                                                     monkeypatch, build_tokenizer, words):
    texts = base_texts(120, words)
    base = tmp_path / "base.txt"
    base.write_text("\n".join(texts) + "\n")
    seen = {"prepare": set(), "trial": set(), "audit": set()}
    phase = ["prepare"]
    embed = modeling_bert.BertEmbeddings.forward

    def recording(self, input_ids=None, *args, **kwargs):
        for row in input_ids.tolist() if input_ids is not None else []:
            seen[phase[0]].add(tuple(i for i in row if i != 0))
        return embed(self, input_ids, *args, **kwargs)

    def in_phase(name, function):
        def run(*args, **kwargs):
            phase[0] = name
            try:
                return function(*args, **kwargs)
            finally:
                phase[0] = "prepare"
        return run

    monkeypatch.setattr(modeling_bert.BertEmbeddings, "forward", recording)
    monkeypatch.setattr(Objective, "__call__", in_phase("trial", Objective.__call__))
    monkeypatch.setattr(autoft.commands, "audit_reported",  # where the search calls it
                        in_phase("audit", autoft.audit.audit_reported))
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {value: 1.0e-3}\nhead_lr_multiplier: {value: 3}\n"
                     "batch_size: {value: 32}\nepochs: {value: 1}\nweight_decay: {value: 0.0}\n"
                     "warmup_ratio: {value: 0.0}\n"
                     "trainable_layers: {low: 0, high: max, default: max}\n"
                     "starts:\n  - {trainable_layers: 1}\n")
    code = main(["search", "--model", str(tiny_model_dir), "--train", str(tiny_csv),
                 "--space", str(space), "--n-trials", "2", "--study", "audit", "--devices", "cpu",
                 "--studies-dir", str(tmp_path / "studies"), "--base-kind", "drift",
                 "--base-data", str(base), "--min-retention", "0.5"])
    assert code == 0
    folder = tmp_path / "studies" / "audit"
    split = json.loads((folder / "prepared" / "target.json").read_text())["base"]["split"]
    assert (split["unit"], split["total"], len(split["audit"])) == ("examples", 120, 60)
    tokenizer = build_tokenizer()
    ids = {i: tuple(tokenizer(text)["input_ids"]) for i, text in enumerate(texts)}
    audit = {ids[i] for i in split["audit"]}
    searched = {ids[i] for i in range(120) if i not in split["audit"]}
    assert seen["trial"] & searched, "the trials' checks read the searched part"
    assert not seen["trial"] & audit, "no audit text reached a model during the trials"
    assert audit <= seen["audit"], "the audit read every held-out text"

    summary = json.loads((folder / "summary.json").read_text())
    best = summary["best"]
    assert best["audit"]["held_out"] and best["audit"]["units"] == 60
    assert best["audit"]["unit"] == "examples" and best["audit"]["resamples"] == 1000
    assert best["audit"]["low"] <= best["audit"]["retention"] <= best["audit"]["high"]
    assert summary["base"]["audit_part"] == {"unit": "examples", "total": 120, "held_out": 60,
                                             "note": None}
    assert summary["base"]["audit_score"] == pytest.approx(1.0), "the base model's CKA, once"
    assert [row["bar"] for row in summary["price"]] == [1.0, 0.99, 0.9, 0.8, 0.5, None]
    assert "on 60 held-out examples the search never checked (95% interval" in (
        (folder / "report.md").read_text())
    audited = optuna.load_study(study_name="audit", storage=f"sqlite:///{folder / 'study.db'}")
    assert str(best["number"]) in audited.user_attrs["audits"], "stored once, not per trial"
    assert np.isfinite(summary["default"]["value"])
