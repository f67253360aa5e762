"""The forgetting guard's decisions after each evaluation, on a real Optuna trial: a trial
below the bar stops as complete when it already kept a feasible checkpoint, is pruned well
below it without one, and goes on otherwise.
"""

from __future__ import annotations

import optuna
import pytest

from autoft.guard import PRUNE_MARGIN, ForgettingGuard
from autoft.train import StopTraining

BAR = 0.95


def guard_after(quick_retention: list[float], has_keepable: bool) -> optuna.Trial:
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    trial.set_user_attr("quick_retention", quick_retention)
    ForgettingGuard(task=None, base={"min_retention": BAR}).after_evaluation(trial, has_keepable)
    return trial


def test_above_the_bar_the_trial_goes_on() -> None:
    trial = guard_after([0.97], has_keepable=True)
    assert "stop_reason" not in trial.user_attrs and "prune_reason" not in trial.user_attrs


def test_falling_below_the_bar_after_a_feasible_checkpoint_stops_the_trial() -> None:
    with pytest.raises(StopTraining):
        guard_after([0.97, 0.93], has_keepable=True)


def test_far_below_the_bar_without_a_feasible_checkpoint_prunes() -> None:
    with pytest.raises(optuna.TrialPruned, match="forgetting"):
        guard_after([BAR - PRUNE_MARGIN - 0.01], has_keepable=False)


def test_a_little_below_the_bar_without_a_feasible_checkpoint_goes_on() -> None:
    trial = guard_after([BAR - PRUNE_MARGIN / 2], has_keepable=False)
    assert "prune_reason" not in trial.user_attrs
