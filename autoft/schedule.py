"""Which trial runs next and when the study ends: the total-trial budget (finished trials count,
interrupted ones do not), the queue (an interrupted or stale trial's config first, the default's
before any other, then the space's starts), and the stop when trials keep failing alike.
"""

from __future__ import annotations

import logging
import random
import warnings
from datetime import datetime

import numpy as np
import optuna
from optuna.trial import TrialState

from autoft.describe import describe_params, describe_seconds
from autoft.errors import UsageError
from autoft.pruning import seconds_per_sample
from autoft.record import TrialRecord
from autoft.trials import FINISHED, counts_toward_budget, trial_config

log = logging.getLogger("autoft")

# A config whose trial went stale this many times is not queued again: it likely kills its worker.
MAX_ATTEMPTS = 3
REPEATED_FAILURES = 3  # this many trials in a row failing alike stop the study


def to_run_again(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Interrupted trials (a signal or the hard time limit) whose config is not queued again yet,
    the default config's first."""
    queued = {TrialRecord.of(t).retry_of for t in trials}
    waiting = [
        t for t in trials
        if t.state == TrialState.FAIL and TrialRecord.of(t).fail_reason == "interrupted"
        and t.number not in queued and trial_config(t)
    ]
    return sorted(waiting, key=lambda t: (TrialRecord.of(t).start != 0, t.number))


def queue_again(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue a stopped trial's config as a new trial that starts clean: only its params and
    where it came from (its record's `retry_of` and `start`), none of the stopped attempt's
    measurements."""
    start = TrialRecord.of(trial).start
    attrs = TrialRecord.attrs(retry_of=trial.number)
    if start is not None:
        attrs |= TrialRecord.attrs(start=start)
    study.enqueue_trial(trial_config(trial), user_attrs=attrs)


def run_stale_again(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna calls this once for each trial it finds stale (its worker died)."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    attempts, earlier = 1, trial
    while TrialRecord.of(earlier).retry_of in by_number:
        attempts, earlier = attempts + 1, by_number[TrialRecord.of(earlier).retry_of]
    if attempts >= MAX_ATTEMPTS:
        log.warning("trial %d's worker died; workers died on its config %d times, so it is not "
                    "run again", trial.number, attempts)
        return
    queue_again(study, trial)


def expected_seconds(params: dict, trials: list[optuna.trial.FrozenTrial],
                     train_examples: int | None) -> float | None:
    """A config's training time before it runs, from the finished trials' own speed: each one's
    seconds per sample over its trained depth plus one (the cached frozen prefix costs next to
    nothing, so a sample costs about as much as the blocks that train; the head counts as one),
    their median, times this config's depth plus one and its planned samples. None before any
    trial finished. On the demo's tweets it was low for full depth (7.5 against 10.4 ms a
    sample), so a start is skipped only when even this estimate does not fit."""
    records = [record for record in map(TrialRecord.of, trials) if record.params]
    speeds = [speed / (record.params["trainable_layers"] + 1) for record in records
              if (speed := seconds_per_sample(record.evaluations))]
    if not speeds or not train_examples:
        return None
    samples = params["epochs"] * train_examples
    return float(np.median(speeds)) * (params["trainable_layers"] + 1) * samples


def unaffordable(params: dict, trials: list[optuna.trial.FrozenTrial],
                 train_examples: int | None, seconds_left: float | None) -> str | None:
    """Why a start cannot finish before the timeout, in words; None when it may (or without a
    timeout, or before the speed is known)."""
    expected = expected_seconds(params, trials, train_examples)
    if seconds_left is None or expected is None or expected <= seconds_left:
        return None
    return (f"it would train for about {describe_seconds(expected)} and "
            f"{describe_seconds(seconds_left)} are left before the timeout")


def queue_next_config(study: optuna.Study, seconds_left: float | None = None) -> bool:
    """Choose the config the next asked trial runs; call it under the start lock. False when
    the space's every config has run (a space of few configs, space.SearchSpace.configs).

    Optuna's ask pops waiting trials in the order they were queued, so configs are queued one
    at a time, when none waits: an interrupted trial's config first (the default's before any
    other), then the space's next start (the default is start 0), then, in a space of few
    configs, one not tried yet, drawn at random, or else none, and the sampler chooses. A start
    that cannot finish in the `seconds_left` before the timeout is skipped, said on screen and
    recorded in the study's `skipped_starts` (start index: why).
    """
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return True
    again = to_run_again(trials)
    if again:
        queue_again(study, again[0])
        return True
    skipped = dict(study.user_attrs.get("skipped_starts", {}))
    taken = {TrialRecord.of(t).start for t in trials} | {int(index) for index in skipped}
    for index, params in enumerate(study.user_attrs.get("starts", [])):
        if index in taken:
            continue
        full = {**study.user_attrs.get("default_params", {}), **params}  # its fixed values too
        why = unaffordable(full, trials, study.user_attrs.get("train_examples"), seconds_left)
        if why is None:
            study.enqueue_trial(params, user_attrs=TrialRecord.attrs(start=index))
            return True
        log.info("start %d (%s) is skipped: %s", index,
                 describe_params(full, study.user_attrs.get("depth") or 0, short=True), why)
        skipped[str(index)] = why
        study.set_user_attr("skipped_starts", skipped)
    return queue_untried(study, trials)


def queue_untried(study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> bool:
    """In a space of few configs (the study's `configs`), queue one no trial has run, drawn by
    the study seed and the trial count; False when none is left. Other spaces: True."""
    configs = study.user_attrs.get("configs")
    if configs is None:
        return True
    tried = {config_key(trial_config(t)) for t in trials}
    untried = [config for config in configs if config_key(config) not in tried]
    if not untried:
        return False
    seed = (study.user_attrs.get("config") or {}).get("seed", 0)
    study.enqueue_trial(random.Random(f"{seed}:{len(trials)}").choice(untried))
    return True


def config_key(config: dict) -> tuple:
    return tuple(sorted(config.items()))


def budget_used(study: optuna.Study) -> int:
    """Finished trials that count toward n_trials."""
    return sum(1 for t in study.get_trials(deepcopy=False) if counts_toward_budget(t))


def budget_left(study: optuna.Study, n_trials: int) -> int:
    """Trials still to start: the budget minus finished and running ones."""
    running = sum(1 for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING)
    return n_trials - budget_used(study) - running


def repeated_failure(study: optuna.Study, since: datetime) -> str | None:
    """A sentence when the last REPEATED_FAILURES trials started since `since` all failed for the
    same reason (interruptions aside): a setting or a bug, which more trials would only repeat."""
    ended = sorted(
        (
            t for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.FAIL))
            if t.datetime_start and t.datetime_start >= since and t.datetime_complete
        ),
        key=lambda t: t.datetime_complete,
    )[-REPEATED_FAILURES:]
    reasons = {TrialRecord.of(t).fail_reason if t.state == TrialState.FAIL else None
               for t in ended}
    reason = reasons.pop() if len(ended) == REPEATED_FAILURES and len(reasons) == 1 else None
    if reason in (None, "interrupted"):
        return None
    numbers = ", ".join(str(t.number) for t in ended)
    return (
        f"Study '{study.study_name}' stopped: trials {numbers} all failed with \"{reason}\", so "
        f"the next would most likely fail alike; fix that cause (each trial's log is in the "
        f"study's logs/ folder) and run the same command again."
    )


def check_not_stopped(study: optuna.Study, since: datetime, n_trials: int) -> None:
    """After the workers end: a UsageError when repeated failures, not the budget, ended them."""
    stopped = repeated_failure(study, since)
    if stopped and budget_left(study, n_trials) > 0:
        raise UsageError(stopped)


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail trials whose worker stopped sending heartbeats; the storage's callback retries them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
