"""The forgetting guard's decisions after each evaluation, on a real Optuna trial: a trial
clearly below the bar (its whole interval under it) stops as complete when it already kept a
feasible checkpoint and is pruned without one; below the bar by less than the noise, or above
it, it goes on.
"""

from __future__ import annotations

import optuna
import pytest

from autoft.guard import ForgettingGuard, ForgettingPruned
from autoft.train import StopTraining

BAR = 0.95


def guard_after(checks: list[tuple[float, float, float]], has_keepable: bool) -> optuna.Trial:
    """checks: (retention, low, high) of each quick check so far."""
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    trial.set_user_attr("quick_retention", [kept for kept, _, _ in checks])
    trial.set_user_attr("quick_interval", [[low, high] for _, low, high in checks])
    guard = ForgettingGuard(task=None, base={"min_retention": BAR}, base_observed={})
    guard.after_evaluation(trial, has_keepable)
    return trial


def test_above_the_bar_the_trial_goes_on() -> None:
    trial = guard_after([(0.97, 0.90, 1.04)], has_keepable=True)
    assert "stop_reason" not in trial.user_attrs and "prune_reason" not in trial.user_attrs


def test_clearly_below_the_bar_after_a_feasible_checkpoint_stops_the_trial() -> None:
    with pytest.raises(StopTraining):
        guard_after([(0.97, 0.95, 0.99), (0.90, 0.88, 0.93)], has_keepable=True)


def test_below_the_bar_by_less_than_the_noise_goes_on_after_a_feasible_checkpoint() -> None:
    """The issue's case: 0.87 on a dozen documents, whose interval reaches far above the bar."""
    trial = guard_after([(0.97, 0.80, 1.10), (0.87, 0.40, 1.30)], has_keepable=True)
    assert "stop_reason" not in trial.user_attrs


def test_clearly_below_the_bar_without_a_feasible_checkpoint_prunes() -> None:
    with pytest.raises(ForgettingPruned, match="clearly below the bar 0.95"):
        guard_after([(0.90, 0.86, 0.94)], has_keepable=False)


def test_below_the_bar_by_less_than_the_noise_without_a_feasible_checkpoint_goes_on() -> None:
    trial = guard_after([(0.80, 0.55, 1.02)], has_keepable=False)
    assert "prune_reason" not in trial.user_attrs
