"""Median pruning that decides only beyond a trial's own noise, and spends on what is winning: a
trial is stopped when its best score so far is worse than the median of complete trials at the
same step by more than NOISE_ERRORS of its standard errors (train.score_error), not by a
validation row or two; a costly trial (COSTLY times the complete trials' median training seconds
per sample, or more) is held to the best of them instead, so it runs on only while it leads. And
a trial whose score stopped rising ends early, with its best checkpoint (`plateau`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from autoft.record import TrialRecord
from autoft.trials import best_feasible, score_sign

NOISE_ERRORS = 2  # standard errors a trial must fall below the median by: about its 95% band
# Training seconds per sample, over the complete trials' median, from which a trial must lead:
# on a spam study full fine-tuning (mixed back), the top 4 layers with preservation and LoRA on
# the top half took 17.6 of 20.7 minutes and scored no better than a 1.9-minute trial of the top 2.
COSTLY = 2.0
# A costly trial's first evaluation is judged by the median, as any trial's: it reads the warm-up
# of a slow starter (on tweets the top 4 layers with preservation stood at 0.644 macro-F1 after
# 1,008 samples, 0.07 behind the best, and were pruned; on the other seed they ended at 0.760,
# the best of the study). It must lead from its second.
LEADS_FROM_STEP = 2
REASON = "worse than the median of earlier trials"
# A trial stops once this share of its planned samples brought no gain beyond its noise: the
# issue's spam study had a trial reach its final score after 4,000 of 6,000 samples and train on.
PLATEAU_SHARE = 0.25


class Comparison(NamedTuple):
    """A trial's best score so far against the median (or, for a costly trial, the best) of
    complete trials at its step."""

    value: float
    reference: float
    margin: float  # NOISE_ERRORS standard errors of `value`; 0 when none is recorded
    sign: int  # 1 where higher is better, -1 where lower is (RMSE)
    cost: float | None = None  # the trial's seconds per sample over the median's, when costly

    @property
    def worse(self) -> bool:
        """Worse than the reference by more than the margin; a NaN score always is."""
        return math.isnan(self.value) or self.sign * (self.reference - self.value) > self.margin

    @property
    def numbers(self) -> str:
        noise = f", beyond its noise of ±{self.margin:.4f}" if self.margin else ""
        return f"{self.value:.4f} against {self.reference:.4f}{noise}"

    @property
    def reason(self) -> str:
        """Why the pruner stops a trial it compared so."""
        if self.cost is None:
            return f"{REASON}: {self.numbers}"
        return (f"behind the best of earlier trials, at {self.cost:.1f}× their median training "
                f"time per sample (a trial that costs {COSTLY:g}× or more runs on only while it "
                f"leads): {self.numbers}")


def standard_errors(evaluations: list[dict] | None) -> dict[int, float]:
    """Each step's standard error, from a trial's `evaluations` attribute (autoft.objective)."""
    return {e["step"]: e["standard_error"] for e in evaluations or []
            if e.get("standard_error") is not None}


def seconds_per_sample(evaluations: list[dict] | None) -> float | None:
    """Training seconds per sample seen so far, from a trial's `evaluations` attribute; None
    before its first evaluation or where evaluations recorded no training time (older studies)."""
    last = (evaluations or [{}])[-1]
    if not last.get("train_seconds") or not last.get("samples_seen"):
        return None
    return last["train_seconds"] / last["samples_seen"]


def relative_cost(evaluations: list[dict] | None, complete: list[FrozenTrial]) -> float | None:
    """A trial's training seconds per sample over the median of the complete trials'."""
    own = seconds_per_sample(evaluations)
    theirs = [seconds_per_sample(TrialRecord.of(t).evaluations) for t in complete]
    theirs = [cost for cost in theirs if cost]
    if own is None or not theirs:
        return None
    return own / float(np.median(theirs))


class NoisyMedianPruner(optuna.pruners.BasePruner):
    """Optuna's MedianPruner (after n_startup_trials complete trials, from step
    n_warmup_steps, the trial's best value against the median of complete trials' values at
    its last step, in the study's direction) that prunes only when the difference exceeds the
    trial's own noise; a trial with no recorded noise is judged as MedianPruner judges it. A
    costly trial is judged against the best complete trial's value at its step instead (from
    its evaluation LEADS_FROM_STEP; by the median before): the
    multi-fidelity idea of successive halving (a costly config gets a short run first and goes
    on only while it leads), decided by cost and noise rather than by rank, since an 8-trial
    study has too few trials at each rung to rank.

    On 500 validation messages the median of three trials' first evaluations was 0.991
    macro-F1 and five of the next five trials were pruned at 0.971-0.981: one to three messages.
    """

    def __init__(self, n_startup_trials: int = 5, n_warmup_steps: int = 0):
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps

    def compare(self, study: optuna.Study, values: Mapping[int, float],
                evaluations: list[dict] | None) -> Comparison | None:
        """The trial's best of `values` (score by step) against the median at its last step, or
        the best there when its `evaluations` show it costly, with the margin their standard
        errors give; None while there is nothing to judge it by (too few complete trials,
        warm-up, no value at its step)."""
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not values or not complete or len(complete) < self.n_startup_trials:
            return None
        step = max(values)
        if step < self.n_warmup_steps:
            return None
        at_step = [t.intermediate_values.get(step, math.nan) for t in complete]
        at_step = [value for value in at_step if not math.isnan(value)]
        if not at_step:
            return None
        sign = score_sign(study)
        scored = {s: v for s, v in values.items() if not math.isnan(v)}
        best = max(scored, key=lambda s: sign * scored[s], default=None)
        cost = relative_cost(evaluations, complete)
        costly = cost is not None and cost >= COSTLY and step >= LEADS_FROM_STEP
        reference = (max(at_step, key=lambda v: sign * v) if costly
                     else float(np.median(at_step)))
        return Comparison(math.nan if best is None else scored[best], reference,
                          NOISE_ERRORS * standard_errors(evaluations).get(best, 0.0), sign,
                          cost if costly else None)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        comparison = self.compare(study, trial.intermediate_values,
                                  TrialRecord.of(trial).evaluations)
        return comparison is not None and comparison.worse


def against_the_best(study: optuna.Study, value: float,
                     standard_error: float | None) -> Comparison | None:
    """A score against the best feasible complete trial's value, with NOISE_ERRORS of its
    standard error as the margin; None while no trial is complete and feasible."""
    best = best_feasible(study)
    if best is None:
        return None
    return Comparison(value, best.value, NOISE_ERRORS * (standard_error or 0.0), score_sign(study))


def plateau(evaluations: list[dict], planned_samples: int, sign: int) -> str | None:
    """Why a trial should stop here, its score having risen by no more than its noise (one
    standard error of the score to beat, where recorded) over more than the last PLATEAU_SHARE of
    its planned samples (its best checkpoint is kept, so stopping loses no score); None while it
    still gains, or at its last evaluation, where it ends anyway."""
    seen = evaluations[-1]["samples_seen"]
    level = evaluations[0]  # the evaluation that brought the last real gain
    for evaluation in evaluations[1:]:
        if sign * (evaluation["value"] - level["value"]) > (level.get("standard_error") or 0.0):
            level = evaluation
    if seen >= planned_samples or seen - level["samples_seen"] <= PLATEAU_SHARE * planned_samples:
        return None
    best = max(evaluations, key=lambda e: (sign * e["value"], -e["samples_seen"]))
    noise = (f" beyond its noise (±{level['standard_error']:.4f})"
             if level.get("standard_error") else "")
    return (f"no gain{noise} over its last {seen - level['samples_seen']:,} of "
            f"{planned_samples:,} samples (best {best['value']:.4f} after "
            f"{best['samples_seen']:,}): stopped there, keeping its best checkpoint")


def make_pruner(name: str, startup_trials: int, warmup_steps: int) -> optuna.pruners.BasePruner:
    """The pruner a study file names (config.PRUNERS): autoft's noise-aware median after
    `startup_trials` complete trials and from step `warmup_steps`, or Optuna's successive halving
    or Hyperband with their own defaults (a rung at evaluations 1, 3, 9, ...; each keeps the best
    third of the trials that reached it), which ignore those two settings."""
    if name == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return NoisyMedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_steps)


def prune_reason(study: optuna.Study, evaluations: list[dict]) -> str:
    """Why the study's pruner stopped a trial whose `evaluations` these are: with the numbers
    that decided when it is a NoisyMedianPruner."""
    pruner = study.pruner
    if isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner | optuna.pruners.HyperbandPruner):
        return (f"not among the best third of the trials that reached its rung (successive "
                f"halving): {evaluations[-1]['value']:.4f} at evaluation {evaluations[-1]['step']}")
    if not isinstance(pruner, NoisyMedianPruner):
        return REASON
    values = {e["step"]: e["value"] for e in evaluations}
    comparison = pruner.compare(study, values, evaluations)
    return REASON if comparison is None else comparison.reason
