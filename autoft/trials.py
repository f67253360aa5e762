"""Reading trials: which count toward the budget, which are feasible, the best, the default and
the least forgetful, their params, last score and duration. Report, plots, progress, status,
export and the trade-off table all pick trials the same way through here.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoft.record import TrialRecord

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def trial_config(trial: optuna.trial.FrozenTrial) -> dict:
    """The searched params a trial ran, or was queued to run if it stopped before asking."""
    return {**trial.system_attrs.get("fixed_params", {}), **trial.params}


def counts_toward_budget(trial: optuna.trial.FrozenTrial) -> bool:
    """Complete and pruned trials, and failures that were the trial's own (not interrupted or
    stale ones, which are run again)."""
    return trial.state in FINISHED or (
        trial.state == TrialState.FAIL and bool(TrialRecord.of(trial).counts_toward_budget)
    )


def full_params(trial: FrozenTrial) -> dict:
    """Searched and fixed params alike (Optuna's `params` holds only the searched ones)."""
    return {**TrialRecord.of(trial).params, **trial.params}


def last_value(trial: FrozenTrial) -> float | None:
    """A stopped trial's score at its last evaluation."""
    if not trial.intermediate_values:
        return None
    return trial.intermediate_values[max(trial.intermediate_values)]


def is_feasible(trial: optuna.trial.FrozenTrial) -> bool:
    return all(value <= 0 for value in TrialRecord.of(trial).constraint)


def default_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The finished trial that ran the space's default config (trial 0 unless it was retried):
    a complete one, else one stopped early, which still has the score it had then."""
    default = study.user_attrs.get("default_params")
    for state in (TrialState.COMPLETE, TrialState.PRUNED):
        for trial in study.get_trials(deepcopy=False, states=(state,)):
            if default and all(full_params(trial).get(k) == v for k, v in default.items()):
                return trial
    return None


def direction_sign(direction: str) -> int:
    """1 where a higher score is better ('maximize'), -1 where lower is ('minimize', RMSE):
    multiply a score by it before max()."""
    return -1 if direction == "minimize" else 1


def score_sign(study: optuna.Study) -> int:
    """direction_sign of a study's direction."""
    return direction_sign(study.direction.name.lower())


def best_feasible(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    feasible = [t for t in complete if is_feasible(t) and t.value is not None]
    sign = score_sign(study)
    return max(feasible, key=lambda t: sign * t.value, default=None)


def winning_soup(study: optuna.Study) -> dict | None:
    """The study's greedy soup (autoft.soup) when it beat the best feasible trial: the answer
    then. None otherwise, or when a trial finished since is now the best."""
    soup = study.user_attrs.get("soup")
    best = best_feasible(study)
    if not soup or not soup["won"] or best is None or soup["best_trial"] != best.number:
        return None
    return soup


def least_forgetful(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    rated = [t for t in complete if TrialRecord.of(t).retention is not None]
    return max(rated, key=lambda t: TrialRecord.of(t).retention, default=None)


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state, under the names summary.json uses; a failed trial is `failed` when it
    failed for a reason of its own and `interrupted` when a signal, the time limit or its
    worker's death stopped it (its config runs again and it does not use the budget)."""
    names = {
        TrialState.COMPLETE: "complete",
        TrialState.PRUNED: "pruned",
        TrialState.RUNNING: "running",
        TrialState.WAITING: "waiting",
    }
    trials = study.get_trials(deepcopy=False)
    tally = {name: sum(1 for t in trials if t.state == state) for state, name in names.items()}
    failed = [t for t in trials if t.state == TrialState.FAIL]
    tally["failed"] = sum(1 for t in failed if counts_toward_budget(t))
    tally["interrupted"] = len(failed) - tally["failed"]
    return tally


def failure_reasons(study: optuna.Study) -> dict[str, int]:
    """How many trials failed for each reason of their own, the most frequent first."""
    reasons: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if counts_toward_budget(trial):
            reason = TrialRecord.of(trial).fail_reason or "no reason recorded"
            reasons[reason] = reasons.get(reason, 0) + 1
    return dict(sorted(reasons.items(), key=lambda item: -item[1]))


def trial_seconds(trial: optuna.trial.FrozenTrial) -> float | None:
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None
