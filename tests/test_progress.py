"""Tests for autoft.progress: the display polls the storage, so trials another process runs show
up; plain lines off a terminal, a rich panel with each running trial's config and epoch on one."""

import io
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from autoft.progress import LiveDisplay, take_snapshot

PARAMS = {"learning_rate": 3e-5, "trainable_layers": 4, "batch_size": 32, "epochs": 3}

# Runs in a separate process, as a worker would: one complete trial, one pruned, one left running.
WORKER = """
import sys, time, optuna
study = optuna.load_study(study_name="watched", storage=sys.argv[1])
params = {"learning_rate": 3e-5, "trainable_layers": 4, "batch_size": 32, "epochs": 3}
for number, end in enumerate((optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                              None)):
    trial = study.ask()
    trial.set_user_attr("params", params)
    trial.set_user_attr("evaluations", [{"step": 1, "samples_seen": 150, "value": 0.6,
                                         "train_loss": 0.7, "seconds": 0.1}])
    trial.report(0.6, 1)
    time.sleep(0.5)
    if end is not None:
        study.tell(trial, 0.6 + number / 10 if end == optuna.trial.TrialState.COMPLETE else None,
                   state=end)
"""


def make_study(path: Path) -> tuple[optuna.Study, str]:
    url = f"sqlite:///{path / 'study.db'}"
    return optuna.create_study(study_name="watched", storage=url, direction="maximize"), url


@pytest.mark.slow
def test_plain_lines_follow_trials_run_by_another_process(tmp_path: Path) -> None:
    study, url = make_study(tmp_path)
    out = io.StringIO()
    with LiveDisplay(study, budget=4, metric="accuracy", depth=6, train_size=100, stream=out,
                     interval=0.1, status_every=3600):
        subprocess.run([sys.executable, "-c", WORKER, url], check=True, timeout=60)
        time.sleep(0.5)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("trial 0 complete, accuracy 0.6000 in ")
    assert lines[0].endswith(": top 4/6 layers, lr 3.0e-05, batch 32, 3 epochs")
    assert lines[1].startswith("trial 1 pruned after 1 evaluation")
    assert lines[2].startswith("status: 1 complete, 1 pruned, 0 failed of 4 · 1 running · ")
    assert "best accuracy 0.6000 (trial 0)" in lines[2]
    assert len(lines) == 3


@pytest.mark.slow
def test_terminal_panel_shows_each_running_trial_with_its_epoch(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    study, url = make_study(tmp_path)
    subprocess.run([sys.executable, "-c", WORKER, url], check=True, timeout=60)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    with LiveDisplay(study, budget=4, metric="accuracy", depth=6, train_size=100, stream=out,
                     interval=0.1):
        time.sleep(0.3)
    screen = out.getvalue()
    assert "1 complete, 1 pruned, 0 failed of 4" in screen
    assert "top 4/6 layers, lr 3.0e-05, batch 32, 3 epochs" in screen
    assert "epoch 1.5/3" in screen  # 150 samples seen of a 100-example training set


def test_estimate_counts_only_the_trials_this_run_finished(tmp_path: Path) -> None:
    study, _ = make_study(tmp_path)
    for value in (0.5, 0.7, 0.6):
        study.add_trial(create_trial(value=value, params={"x": 0.1},
                                     distributions={"x": FloatDistribution(0, 1)}))
    trials = study.get_trials()
    # 2 of the 3 finished in this run's 100 s: 50 s each, 7 trials of the budget of 10 still to go
    snap = take_snapshot(trials, budget=10, elapsed=100.0, before=frozenset({0}))
    assert snap.remaining == 350.0 and snap.best_number == 1 and snap.complete == 3
    assert take_snapshot(trials, 10, 100.0, before=frozenset({0, 1, 2})).remaining is None
    assert all(t.state == TrialState.COMPLETE for t in trials)


def test_the_time_left_follows_the_samples_trained_not_the_trials_finished(tmp_path: Path):
    """One trial of 2 epochs finished, one of 8 epochs a quarter through, 100 s: 400 samples
    per 100 s. Left: 600 samples of the running trial and 8 trials of 500 samples (the mean of
    200 and 800 planned): 4,600 samples, 1,150 s. Counting whole trials said 100 s per trial."""
    study, _ = make_study(tmp_path)
    for epochs, seen, state in ((2, 200, TrialState.COMPLETE), (8, 200, TrialState.RUNNING)):
        study.add_trial(create_trial(
            state=state, value=0.5 if state == TrialState.COMPLETE else None,
            params={"x": 0.1}, distributions={"x": FloatDistribution(0, 1)},
            user_attrs={"params": {"epochs": epochs},
                        "evaluations": [{"step": 1, "samples_seen": seen, "value": 0.5}]}))
    snap = take_snapshot(study.get_trials(), budget=10, elapsed=100.0, train_size=100)
    assert snap.remaining == 1150.0
