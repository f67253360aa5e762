"""Weight-space interpolation: the mixed weights lie on the line between untouched and tuned for
the body and keep the tuned head; scoring a grid leaves the model tuned; the best point is the
best one that passes the bar.
"""

from __future__ import annotations

from dataclasses import replace

import optuna
import pytest
import torch

from autoft.interpolate import MixPoint, best_mix, crossing, interpolate, mixed_state
from autoft.model import split_parameters
from autoft.plots import retention_plot
from autoft.tasks import get_task
from autoft.tradeoff import search_points
from autoft.train import evaluate, train_trial


@pytest.fixture
def trained(tiny_model_dir, fresh_model, make_data, trial_params, pad_id):
    """The tiny BERT trained 2 epochs with both layers: model, data, untouched and tuned weights
    of what trained, and the head's names."""
    model = fresh_model(tiny_model_dir, 2)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    untouched = {n: p.detach().clone() for n, p in model.named_parameters() if n in names}
    data = make_data(n_train=64, n_val=32)
    params = replace(trial_params, trainable_layers=2, epochs=2, learning_rate=3e-3)
    result = train_trial(model, data, params, torch.device("cpu"), pad_id, 0, lambda e: None)
    return model, data, untouched, result.best_state, frozenset(split_parameters(model).head)


def test_mixed_weights_move_the_body_and_keep_the_tuned_head(trained) -> None:
    _, _, untouched, tuned, head = trained
    body = [n for n in tuned if n not in head]
    assert body and head & set(tuned)
    half = mixed_state(untouched, tuned, head, 0.5)
    start = mixed_state(untouched, tuned, head, 0.0)
    for name in body:
        assert torch.allclose(half[name], (untouched[name] + tuned[name]) / 2)
        assert torch.equal(start[name], untouched[name])
    for name in head & set(tuned):
        assert torch.equal(half[name], tuned[name]) and torch.equal(start[name], tuned[name])


def test_a_grid_is_scored_and_the_model_is_left_tuned(pad_id, trained) -> None:
    model, data, untouched, tuned, head = trained
    mixes = []

    def score() -> float:
        return evaluate(model, data, pad_id, torch.device("cpu"))

    def check(mix: float) -> tuple[float, bool]:
        name = next(n for n in tuned if n not in head)
        current = dict(model.named_parameters())[name].detach()
        mixes.append(float((current - untouched[name]).norm() / (tuned[name] - untouched[name])
                           .norm()))
        return mix, True

    points = interpolate(model, untouched, tuned, head, [0.25, 0.5, 0.75], score, check)
    assert [p.mix for p in points] == [0.25, 0.5, 0.75]
    assert [round(m, 4) for m in mixes] == [0.25, 0.5, 0.75], "each check saw its own mix"
    assert [p.retention for p in points] == [0.25, 0.5, 0.75], "and was told which it was"
    assert all(0.0 <= p.value <= 1.0 for p in points)
    current = dict(model.named_parameters())
    assert all(torch.equal(current[n].detach(), tuned[n]) for n in tuned)


def test_the_curve_bisects_where_retention_crosses_the_bar(pad_id, trained) -> None:
    """Retention falls as the mix rises (here 1 - 0.15 × mix, the bar 0.95: it crosses at 1/3);
    the tuned weights fail, so two more points halve the gap between 0.25 (passes) and 0.5."""
    model, data, untouched, tuned, head = trained

    def check(mix: float) -> tuple[float, bool]:
        kept = 1 - 0.15 * mix
        return kept, kept >= 0.95

    as_tuned = MixPoint(1.0, 0.9, 0.8, False)
    points = interpolate(model, untouched, tuned, head, [0.25, 0.5, 0.75],
                         lambda: evaluate(model, data, pad_id, torch.device("cpu")), check,
                         tuned_point=as_tuned)
    assert [p.mix for p in points] == [0.25, 0.5, 0.75, 0.375, 0.3125]
    assert crossing([*points, as_tuned]) == (0.3125, 0.375)
    passing = interpolate(model, untouched, tuned, head, [0.5], lambda: 0.5,
                          lambda mix: (1.0, True), tuned_point=MixPoint(1.0, 0.9, 1.0, True))
    assert [p.mix for p in passing] == [0.5], "nothing to bisect when the tuned weights pass"


def test_the_best_point_is_the_best_that_passes_the_bar() -> None:
    points = [MixPoint(1.0, 0.90, 0.9, False), MixPoint(0.75, 0.85, 0.96, True),
              MixPoint(0.5, 0.80, 0.99, True)]
    assert best_mix(points).mix == 0.75
    assert best_mix([MixPoint(1.0, 0.9, 0.9, False), MixPoint(0.5, 0.8, 0.9, False)]).mix == 1.0


INTERPOLATING_SPACE = """\
learning_rate: {value: 1.0e-2}
head_lr_multiplier: {value: 3}
batch_size: {value: 16}
trainable_layers: {value: max}
epochs: {value: 2}
weight_decay: {value: 0.0}
warmup_ratio: {value: 0.0}
interpolation_mixes: [0.2, 0.6]
"""


def mixing_search(tiny_model_dir, tiny_csv, tmp_path, bar: str):
    """A one-trial search of INTERPOLATING_SPACE with a drift bar: its exit code and trial."""
    from autoft.cli import main

    space = tmp_path / "space.yaml"
    space.write_text(INTERPOLATING_SPACE)
    code = main(["search", "--model", str(tiny_model_dir), "--train", str(tiny_csv), "--space",
                 str(space), "--n-trials", "1", "--study", "mix", "--studies-dir",
                 str(tmp_path / "s"), "--base-kind", "drift", "--base-data", str(tiny_csv),
                 "--min-retention", bar])
    study = optuna.load_study(study_name="mix", storage=f"sqlite:///{tmp_path / 's/mix/study.db'}")
    return code, study.trials[0]


@pytest.mark.slow
def test_a_trial_pruned_for_forgetting_mixed_back_keeps_the_bar_and_completes(
    tiny_model_dir, tiny_csv, tmp_path
) -> None:
    """Full fine-tuning at a rate that forgets: the quick check prunes it at its first
    evaluation; its weights mixed 20% of the way from the untouched ones keep the bar, so it
    completes there, and the checkpoint and export hold that point."""
    from autoft.config import build_config
    from autoft.export import load_trial_model
    from autoft.prepare import prepare_study
    from autoft.train import predict, score_details

    code, trial = mixing_search(tiny_model_dir, tiny_csv, tmp_path, "0.95")
    assert code == 0
    space = tmp_path / "space.yaml"
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.user_attrs["prune_reason"].startswith("forgetting")
    low, high = trial.user_attrs["quick_interval"][0]
    assert low <= trial.user_attrs["quick_retention"][0] <= high < 0.95, "clearly below"
    low, high = trial.user_attrs["retention_interval"]
    assert low <= trial.user_attrs["retention"] <= high
    assert trial.user_attrs["stop_reason"].endswith("mixed back toward the untouched weights it "
                                                    "keeps the bar")
    points = [MixPoint(**p) for p in trial.user_attrs["interpolation"]]
    assert [(p.mix, p.source) for p in points][:3] == [(1.0, "kept"), (0.2, "kept"),
                                                        (0.6, "kept")]
    assert all(p.keepable == (p.retention >= 0.95) for p in points)
    assert not points[0].keepable and points[1].retention > points[0].retention
    chosen = best_mix(points)
    assert chosen.keepable and chosen.mix < 1.0
    assert trial.user_attrs["mix"] == chosen.mix and trial.value == chosen.value
    # The checkpoint holds the chosen point: the exported model scores the trial's value.
    config = build_config({}, None, {"model": str(tiny_model_dir), "train": str(tiny_csv),
                                     "space": str(space), "name": "mix",
                                     "studies_dir": str(tmp_path / "s"), "base_kind": "drift",
                                     "base_data": str(tiny_csv), "base_min_retention": 0.95})
    data = prepare_study(config, echo=lambda line: None).data
    model, _ = load_trial_model(get_task(data.task), str(tiny_model_dir), data.label_names,
                                trial)
    assert evaluate(model, data, 0, torch.device("cpu")) == trial.value
    # and its precision and recall are the mixed weights', not those it trained to
    predictions = predict(model, data, 0, torch.device("cpu"))
    assert trial.user_attrs["score_details"] == score_details(get_task(data.task), data,
                                                              predictions)


@pytest.mark.slow
def test_no_passing_point_leaves_the_trial_as_it_trained(tiny_model_dir, tiny_csv, tmp_path):
    """At a bar no mix reaches the pruned trial stays pruned, holding its trained weights."""
    code, trial = mixing_search(tiny_model_dir, tiny_csv, tmp_path, "1")
    assert code == 3
    assert trial.state == optuna.trial.TrialState.PRUNED
    # as trained, the space's two mixes, and two bisections toward the untouched weights
    assert len(trial.user_attrs["interpolation"]) == 5
    assert trial.user_attrs["mix"] == 1.0


def test_the_head_trains_alone_first_and_the_layers_after(
    tiny_model_dir, pad_id, trial_params, fresh_model, make_data
) -> None:
    from autoft.train import train_head_first

    model = fresh_model(tiny_model_dir, 2)
    head = set(split_parameters(model).head)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    params = replace(trial_params, trainable_layers=2, head_first_epochs=2, learning_rate=3e-3)
    seconds = train_head_first(model, make_data(n_train=64, n_val=32), params,
                               torch.device("cpu"), pad_id, torch.Generator().manual_seed(0), None)
    assert seconds > 0
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= head, "only the head moved"
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable


def test_interpolated_points_without_a_base_task_leave_the_retention_plot_empty() -> None:
    """Without a base task an interpolating trial's points have no retention: the plot of
    retention has nothing to draw (it failed on them, ending the report of a whole study)."""
    trial = optuna.trial.create_trial(
        value=0.3, params={}, distributions={},
        user_attrs={"params": {"trainable_layers": 1}, "interpolation": [
            {"mix": 1.0, "value": 0.3, "retention": None, "keepable": True},
            {"mix": 0.5, "value": 0.2, "retention": None, "keepable": True}]})
    assert search_points([trial]) == []
    assert retention_plot([trial], "spearman", None).png is None



def test_weights_clearly_behind_the_best_feasible_trial_are_not_mixed_back() -> None:
    """A curve costs a few evaluations and checks: it runs where it may lead (within noise of
    the best feasible trial, or no such trial yet) and is skipped, with the reason, where not."""
    from optuna.trial import create_trial

    from autoft.objective import worth_mixing
    from autoft.train import Evaluation

    def scored(value: float) -> Evaluation:
        return Evaluation(step=1, samples_seen=100, value=value, standard_error=0.01,
                          train_loss=0.5, seconds=1.0)

    study = optuna.create_study(direction="maximize")
    assert worth_mixing(study.ask(), scored(0.5), "kept"), "nothing feasible to lead yet"
    study.add_trial(create_trial(value=0.97, user_attrs={"constraint": [0.2]}))  # infeasible
    study.add_trial(create_trial(value=0.90, user_attrs={"constraint": [-0.01]}))
    assert worth_mixing(study.ask(), scored(0.885), "kept"), "within its noise of 0.90"
    behind = study.ask()
    assert not worth_mixing(behind, scored(0.85), "top")
    assert behind.study.trials[-1].user_attrs["top_not_mixed"] == (
        "its best-scoring weights are clearly behind the best feasible trial so far (0.8500 "
        "against 0.9000, beyond its noise of ±0.0200), so they were not mixed back")
