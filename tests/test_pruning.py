"""The median pruner decides only beyond a trial's own noise: a trial one or two validation rows
below the median runs on, one far below it stops, and every evaluation records that noise. A
costly trial runs on only while it leads, and a trial whose score stopped rising ends early."""

from __future__ import annotations

import math
import re
import subprocess

import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import create_trial

from autoft.cli import main as cli_main
from autoft.pruning import make_pruner, plateau, prune_reason
from autoft.tasks import get_task
from autoft.tasks.base import Task

# The first evaluations of three complete trials on 500 SMS messages (macro-F1): median 0.991.
FIRST_THREE = (0.991, 0.955, 0.991)


def evaluation(value: float, error: float | None, seconds: float = 10.0, step: int = 1) -> dict:
    """An evaluation at `step` after 1,000 samples each, as a real trial records it."""
    return {"step": step, "value": value, "standard_error": error, "samples_seen": 1000 * step,
            "train_seconds": seconds * step}


def study_of(direction: str, values: tuple[float, ...]) -> optuna.Study:
    """An in-memory study with the autoft pruner and one complete trial per value, each
    reported at steps 1 and 2 as it scored, after 10 s of training a step."""
    study = optuna.create_study(direction=direction, pruner=make_pruner("median", 3, 0))
    for value in values:
        study.add_trial(create_trial(
            value=value, intermediate_values={1: value, 2: value},
            user_attrs={"evaluations": [evaluation(value, 0.01, step=k) for k in (1, 2)]}))
    return study


def running(study: optuna.Study, value: float, error: float | None,
            seconds: float = 10.0, step: int = 1) -> optuna.Trial:
    """A running trial that scored `value` at `step` after `seconds` of training a step, with its
    standard error recorded as a real trial records it, or none."""
    trial = study.ask()
    trial.report(value, step)
    if error is not None:
        trial.set_user_attr("evaluations", [evaluation(value, error, seconds, step)])
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


def test_a_costly_trial_runs_on_only_while_it_leads():
    """At 2.5 times the complete trials' training time per sample, a trial above the median but
    clearly behind the best stops at its second evaluation; within its noise of the best it runs
    on; at its first, which reads a slow starter's warm-up, the median judges it."""
    study = study_of("maximize", (0.80, 0.95, 0.85))  # median 0.85, best 0.95
    assert not running(study, 0.90, 0.01, step=2).should_prune(), "as cheap as the others"
    assert not running(study, 0.90, 0.01, seconds=25.0).should_prune(), "its first: the median"
    behind = running(study, 0.90, 0.01, seconds=25.0, step=2)
    assert behind.should_prune()
    assert prune_reason(study, behind.user_attrs["evaluations"]) == (
        "behind the best of earlier trials, at 2.5× their median training time per sample (a "
        "trial that costs 2× or more runs on only while it leads): 0.9000 against 0.9500, "
        "beyond its noise of ±0.0200")
    assert not running(study, 0.94, 0.01, seconds=25.0, step=2).should_prune()


def test_a_costly_trial_of_a_minimized_metric_must_be_as_low_as_the_lowest():
    study = study_of("minimize", (0.50, 0.40, 0.60))  # RMSE: median 0.50, best 0.40
    assert running(study, 0.45, 0.01, seconds=30.0, step=2).should_prune()
    assert not running(study, 0.45, 0.01, step=2).should_prune()


def scores(*values: float, every: int = 500, error: float | None = None) -> list[dict]:
    """A trial's evaluations: `values` after every `every` samples, each with `error` as its
    standard error where given."""
    return [{"step": k, "value": v, "samples_seen": k * every}
            | ({} if error is None else {"standard_error": error})
            for k, v in enumerate(values, start=1)]


def test_a_trial_stops_after_more_than_a_quarter_of_its_run_without_gain():
    planned = 4000  # 8 evaluations of 500 samples
    assert plateau(scores(0.70, 0.80, 0.79, 0.80), planned, 1) is None, "a quarter: not more"
    reason = plateau(scores(0.70, 0.80, 0.79, 0.80, 0.78), planned, 1)
    assert reason == ("no gain over its last 1,500 of 4,000 samples (best 0.8000 after 1,000): "
                      "stopped there, keeping its best checkpoint")
    assert plateau(scores(0.70, 0.80, 0.79, 0.80, 0.81), planned, 1) is None, "a gain resets it"
    assert plateau(scores(0.5, 0.4, 0.45, 0.45, 0.45), planned, -1) is not None, "RMSE: lower"
    assert plateau(scores(0.8, 0.7, 0.7, 0.7, every=1000), planned, 1) is None, "its last"


def test_a_rise_within_the_noise_is_no_gain():
    """On 200 validation rows one row is half a point and a standard error about 1.4 points:
    0.970 -> 0.975 -> 0.980 is no gain over 0.970; a rise past its error is."""
    planned = 4000
    reason = plateau(scores(0.90, 0.97, 0.975, 0.98, 0.975, error=0.014), planned, 1)
    assert reason == ("no gain beyond its noise (±0.0140) over its last 1,500 of 4,000 samples "
                      "(best 0.9800 after 2,000): stopped there, keeping its best checkpoint")
    assert plateau(scores(0.90, 0.97, 0.975, 0.98, 0.985, error=0.014), planned, 1) is None
    assert plateau(scores(0.90, 0.97, 0.975, 0.98, 0.975, error=0.004), planned, 1) is None


def test_optunas_successive_halving_ranks_a_trial_at_its_rung():
    """Optuna's successive halving keeps a trial at a rung only among the best of those that
    reached it. Its first rung comes from the first complete trial's length, so that trial
    never competes; the third, below the second at evaluation 1, stops (where the median pruner
    waits for its start-up trials), and the reason says so."""
    study = optuna.create_study(direction="maximize",
                                pruner=make_pruner("successive-halving", 3, 0))
    for values in ((0.80, 0.85, 0.87), (0.75, 0.80, 0.82)):
        trial = study.ask()
        for step, value in enumerate(values, start=1):
            trial.report(value, step)
            assert not trial.should_prune()
        study.tell(trial, values[-1])
    third = study.ask()
    third.report(0.70, 1)
    assert third.should_prune()
    assert prune_reason(study, scores(0.70)) == (
        "not among the best third of the trials that reached its rung (successive halving): "
        "0.7000 at evaluation 1")


@pytest.mark.slow
def test_a_real_trial_that_learns_nothing_stops_at_its_plateau(
    tiny_model_dir, tiny_csv, write_space, search_args, cli_env, open_sqlite_study, tmp_path
):
    """At a learning rate that changes no prediction, 4 epochs end after the third: two
    evaluations without gain are half the run."""
    space = write_space(tmp_path / "space.yaml", learning_rate="{value: 1.0e-12}", epochs=4)
    studies = tmp_path / "studies"
    run = subprocess.run(search_args(tiny_model_dir, tiny_csv, space, studies, "flat", 1, "cpu"),
                         env=cli_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    (trial,) = open_sqlite_study(studies, "flat").trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert [e["step"] for e in trial.user_attrs["evaluations"]] == [1, 2, 3]
    assert trial.user_attrs["stop_reason"].startswith("no gain beyond its noise (±")
    assert trial.user_attrs["checkpoint"].endswith("trainable.safetensors")
    assert re.search(r"trial 0 complete, \w+ [\d.]+ \(no gain beyond its noise ",
                     run.stdout + run.stderr), "said on screen"


@pytest.mark.parametrize(("startup", "warmup"), [(4, 0), (3, 2)])
def test_no_pruning_before_the_startup_trials_or_during_warmup(startup, warmup):
    study = study_of("maximize", FIRST_THREE)
    study.pruner = make_pruner("median", startup, warmup)
    assert not running(study, 0.5, None).should_prune()


@pytest.mark.slow
def test_every_evaluation_of_a_real_trial_records_its_noise(
    tiny_model_dir, tiny_csv, write_space, search_args, cli_env, open_sqlite_study, tmp_path
):
    space = write_space(tmp_path / "space.yaml", epochs=2)
    studies = tmp_path / "studies"
    args = search_args(tiny_model_dir, tiny_csv, space, studies, "noise", 1, "cpu")  # no base
    # task: one evaluation an epoch
    run = subprocess.run(args, env=cli_env(), capture_output=True, text=True, timeout=300)
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


def test_an_unknown_pruner_is_refused_before_any_trial(tmp_path, tiny_model_dir, tiny_csv,
                                                       capsys):
    study_file = tmp_path / "s.yaml"
    study_file.write_text(yaml.safe_dump({"model": str(tiny_model_dir), "train": str(tiny_csv),
                                          "pruner": "asha", "studies_dir": str(tmp_path)}))
    assert cli_main(["search", str(study_file)]) == 2
    error = capsys.readouterr().err
    assert "field pruner" in error and "unknown pruner 'asha'" in error
    assert "median, successive-halving, hyperband" in error
    assert not (tmp_path / "study").exists()


@pytest.mark.slow
def test_a_real_study_runs_with_optunas_successive_halving(
    tiny_model_dir, tiny_csv, write_space, search_args, cli_env, open_sqlite_study, tmp_path
):
    """`--pruner successive-halving` reaches the study's trials: from the third on, a trial
    below the best of the earlier ones (but the first, which sets the rungs) at its first
    evaluation stops there, with the rung in its reason, and the settings kept in the storage
    say which pruner ran."""
    space = write_space(tmp_path / "space.yaml", epochs=2)
    studies = tmp_path / "studies"
    run = subprocess.run([*search_args(tiny_model_dir, tiny_csv, space, studies, "halving", 4,
                                       "cpu"), "--pruner", "successive-halving"],
                         env=cli_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    study = open_sqlite_study(studies, "halving")
    assert study.user_attrs["settings"]["pruner"] == "successive-halving"
    firsts = [trial.intermediate_values[1] for trial in study.trials]
    for number, trial in enumerate(study.trials[2:], start=2):
        behind = firsts[number] < max(firsts[1:number])
        assert (trial.state == optuna.trial.TrialState.PRUNED) == behind, number
        if behind:
            assert trial.user_attrs["prune_reason"].startswith("not among the best third")
    assert "Optuna's successive-halving pruning" in run.stdout
