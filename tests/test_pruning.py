"""The median pruner decides only beyond a trial's own noise: a trial one or two validation rows
below the median runs on, one far below it stops, and every evaluation records that noise."""

from __future__ import annotations

import math
import subprocess

import numpy as np
import optuna
import pytest
from optuna.trial import create_trial

from autoft.pruning import prune_reason
from autoft.storage import make_pruner
from autoft.tasks import get_task
from autoft.tasks.base import Task

# The first evaluations of three complete trials on 500 SMS messages (macro-F1): median 0.991.
FIRST_THREE = (0.991, 0.955, 0.991)


def study_of(direction: str, values: tuple[float, ...]) -> optuna.Study:
    """An in-memory study with the autoft pruner and one complete trial per value, each
    reported at step 1 as it scored."""
    study = optuna.create_study(direction=direction, pruner=make_pruner(3, 0))
    for value in values:
        study.add_trial(create_trial(value=value, intermediate_values={1: value}))
    return study


def running(study: optuna.Study, value: float, error: float | None) -> optuna.Trial:
    """A running trial that scored `value` at step 1, with its standard error recorded as a
    real trial records it, or none."""
    trial = study.ask()
    trial.report(value, 1)
    if error is not None:
        trial.set_user_attr("evaluations", [{"step": 1, "value": value, "standard_error": error}])
    return trial


def test_a_trial_within_its_noise_of_the_median_is_not_pruned():
    study = study_of("maximize", FIRST_THREE)
    assert not running(study, 0.981, 0.01).should_prune(), "1 point below, ±2 points of noise"
    far = running(study, 0.90, 0.01)
    assert far.should_prune()
    evaluations = far.user_attrs["evaluations"]
    assert prune_reason(study, evaluations) == (
        "worse than the median of earlier trials: 0.9000 against 0.9910, beyond its noise of "
        "±0.0200")


def test_without_recorded_noise_the_median_rule_holds():
    study = study_of("maximize", FIRST_THREE)
    assert running(study, 0.981, None).should_prune()
    assert not running(study, 0.991, None).should_prune()
    assert running(study, math.nan, 0.01).should_prune(), "a score that is not a number stops"


def test_a_minimized_metric_is_pruned_above_the_median():
    study = study_of("minimize", (0.50, 0.62, 0.50))  # RMSE: median 0.50
    assert not running(study, 0.52, 0.02).should_prune()
    assert running(study, 0.70, 0.02).should_prune()
    assert running(study, 0.52, None).should_prune()
    assert not running(study, 0.40, None).should_prune()


@pytest.mark.parametrize(("startup", "warmup"), [(4, 0), (3, 2)])
def test_no_pruning_before_the_startup_trials_or_during_warmup(startup, warmup):
    study = study_of("maximize", FIRST_THREE)
    study.pruner = make_pruner(startup, warmup)
    assert not running(study, 0.5, None).should_prune()


@pytest.mark.slow
def test_every_evaluation_of_a_real_trial_records_its_noise(
    tiny_model_dir, tiny_csv, write_space, search_args, cli_env, open_sqlite_study, tmp_path
):
    space = write_space(tmp_path / "space.yaml", epochs=2)
    studies = tmp_path / "studies"
    run = subprocess.run(search_args(tiny_model_dir, tiny_csv, space, studies, "noise", 1, "cpu"),
                         env=cli_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    (trial,) = open_sqlite_study(studies, "noise").trials
    evaluations = trial.user_attrs["evaluations"]
    assert [e["step"] for e in evaluations] == [1, 2]
    for evaluation in evaluations:
        assert 0 < evaluation["standard_error"] < math.inf, evaluation


@pytest.mark.parametrize("metric", ["macro_f1", "accuracy"])
def test_a_classification_scores_every_draw_as_its_score_does(metric) -> None:
    """The confusion-count bootstrap gives score's own value on every draw, classes missing from
    some draws (the rare class 3) included."""
    task = get_task("text-classification")
    rng = np.random.default_rng(1)
    labels = rng.choice(4, size=60, p=[0.5, 0.3, 0.17, 0.03]).tolist()
    predictions = [label if rng.random() < 0.7 else int(rng.integers(4)) for label in labels]
    draws = rng.integers(0, len(labels), (50, len(labels)))
    looped = Task.scores_over(task, metric, labels, predictions, draws)
    assert np.allclose(task.scores_over(metric, labels, predictions, draws), looped)
    assert looped.std() > 0
