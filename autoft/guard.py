"""The forgetting guard: measures the base model once per study, checks a cheap slice at every
evaluation (the trial keeps only weights that pass; it stops when it is clearly below the bar
after a passing checkpoint, or is pruned clearly below it without one) and the kept weights at a
trial's end, each retention with its bootstrap interval; a trial that trains nothing the base
task reads keeps the base skill exactly and is not checked.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
import optuna
import torch

from autoft.config import BaseTaskConfig
from autoft.forgetting import BaseTask, paired_interval, retention, unit_draws
from autoft.interpolate import TUNED
from autoft.precision import autocast
from autoft.record import TrialRecord
from autoft.train import StopTraining

BASE_MAX_LENGTH = 256  # base texts keep their own max length: they are often longer
CHECK_RESAMPLES = 200  # bootstrap draws behind each check's interval (the audit's take 1000)
COIN_FLIP = 0.10  # a check whose own score moves more than this cannot tell the bar from 10
# points below it


def observe(task: BaseTask, model, device: torch.device | str, part: str, frozen: int = 0):
    """The task's observations of `part` in the study's precision, as the trials compute (a
    worker, prepare and the soup set it first), so that retention compares like with like: the
    untouched model's observed once and every check's. Under bf16 a quick check of 25 Lee
    documents took 0.14 s against 0.42 s in float32 and moved retention by at most 0.003, where
    its 95% interval spans tens of points (benchmarks/check_cost.py)."""
    with autocast(torch.device(device)):
        return task.observe(model, str(device), part, frozen)


def quick_is_search(task: BaseTask) -> bool:
    """Whether the quick slice is the whole searched part (the demo's 25 Lee documents): then
    an observation or a check of one is the other's."""
    return task.units_["quick"] == task.units_["search"]


def measure_base(task: BaseTask, model, config: BaseTaskConfig, device: torch.device) -> dict:
    """The untouched model's base-task skill on the searched part, on its quick slice and on the
    audit part, with the split itself; stored in the study. The audit part is read in float32,
    as the audit reads it (autoft.audit); the rest as the checks read it (`observe`)."""
    with autocast(device):
        full = task.score(model, str(device))
    quick = observe(task, model, device, "quick")  # one pass: the score and its spread
    audit = task.statistic(task.observe(model, str(device)), np.arange(task.units_["audit"]))
    return {"kind": config.kind, "name": task.name, "measures": task.measures,
            "higher_is_better": task.higher_is_better, "score": full.value,
            "details": full.details,
            "quick_score": task.statistic(quick, np.arange(task.units_["quick"]), "quick"),
            "audit_score": audit, "split": task.split_.to_dict(),
            "min_retention": config.min_retention,
            "quick_spread": score_spread(task, quick, "quick"),
            "spread": score_spread(task, observe(task, model, device, "search"), "search")}


def score_spread(task: BaseTask, observed, part: str, seed: int = 0) -> float:
    """Half the width of the base score's 95% bootstrap interval over `part`'s units (`observed`:
    the untouched model's observations of them), as a share of the score: how precisely that part
    can measure the skill at all. A stand-in for the interval of a tuned model's retention, which
    prepare has no tuned model to draw (the audit intervals of tuned models measured here were as
    wide or wider)."""
    whole = task.statistic(observed, np.arange(task.units_[part]), part)
    draws = unit_draws(task, part, seed, CHECK_RESAMPLES,
                       lambda rows: task.statistic(observed, rows, part))
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return float((high - low) / 2 / max(abs(whole), 1e-6))


def widths_at_bar(task: BaseTask, base_observed, stand_in, sizes: list[int],
                  seed: int = 0) -> dict[int, float]:
    """Half the width of the paired 95% interval of retention at the bar, for a check that reads
    the first n units of the searched part, for each n of `sizes`: `stand_in` (a model that keeps
    just the bar, `BaseTask.stand_in`) against the untouched model's observations."""
    rng = np.random.default_rng(seed)
    widths = {}
    for units in sizes:
        draws = [retention(task.statistic(base_observed, rows, "search"),
                           task.statistic(stand_in, rows, "search"), task.higher_is_better)
                 for rows in rng.integers(0, units, (CHECK_RESAMPLES, units))]
        low, high = np.nanpercentile(draws, [2.5, 97.5])
        widths[units] = float(high - low) / 2
    return widths


class Check(NamedTuple):
    """One check: the share of the base skill kept, its 95% interval, the tuned score."""

    retention: float
    low: float
    high: float
    score: float


class ForgettingPruned(optuna.TrialPruned):
    """A trial pruned for forgetting, not for its score: mixed back toward the untouched
    weights, its best-scoring weights may still keep the bar."""


class ForgettingGuard:
    """Per-trial base-task checks, recorded in the trial's record (autoft.record) and as Optuna's
    constraint.

    Each check's retention comes with a paired bootstrap interval over the units it read (the
    untouched model's observations of them, `base_observed`, taken once per worker): with a
    small base set the interval is wide, and a trial is stopped or pruned for forgetting only
    when all of it lies below the bar, not when noise put the point there.
    """

    def __init__(self, task: BaseTask, base: dict, base_observed: dict, seed: int = 0):
        self.task = task
        self.base = base
        self.base_observed = base_observed  # part -> the untouched model's observations
        self.seed = seed
        self.untouched = False
        self.frozen = 0
        # this trial's quick checks by the weights they read: (the checkpoint's evaluation step,
        # how far it is mixed back, TUNED as trained)
        self.checks: dict[tuple[int, float], Check] = {}

    def on_start(self, trial: optuna.Trial, model, frozen: int) -> None:
        """Decide, once the model is frozen as the trial wants (its bottom `frozen` blocks), whether
        its checks can change at all; those that run replay the frozen blocks' output."""
        self.frozen = frozen
        self.checks = {}
        self.untouched = not self.task.reads_trained(model)
        if self.untouched:
            TrialRecord.write(
                trial, base_check="skipped: the trial trains nothing the base task reads, so it "
                "keeps the base skill exactly")

    def measure(self, model, device: torch.device, part: str) -> Check:
        """The retention on `part` ('quick' or 'search'), its 95% interval and the score."""
        base = self.base["quick_score" if part == "quick" else "score"]
        if self.untouched:
            return Check(1.0, 1.0, 1.0, base)
        observed = observe(self.task, model, device, part, self.frozen)
        tuned = self.task.statistic(observed, np.arange(self.task.units_[part]), part)
        low, high = paired_interval(self.task, self.base_observed[part], observed, part,
                                    self.seed, CHECK_RESAMPLES)
        return Check(retention(base, tuned, self.base["higher_is_better"]), low, high, tuned)

    def quick(self, model, device: torch.device, weights: tuple[int, float]) -> Check:
        """The quick check of the model's weights, which `weights` names (the evaluation step of
        their checkpoint, how far mixed back), kept so that the final check of the same weights
        is not computed twice."""
        self.checks[weights] = self.measure(model, device, "quick")
        return self.checks[weights]

    def passes(self, retention: float) -> bool:
        return retention >= self.base["min_retention"]

    def keepable(self, trial: optuna.Trial, model, device: torch.device) -> bool:
        """Cheap check on a fixed slice, before the trial may keep these weights: whether they
        keep at least the bar (its interval is recorded beside it)."""
        began = time.perf_counter()
        record = TrialRecord.of(trial)
        kept, low, high, _ = self.quick(model, device, (len(record.quick_retention) + 1, TUNED))
        self._add_seconds(trial, time.perf_counter() - began)
        TrialRecord.write(trial, quick_retention=[*record.quick_retention, round(kept, 4)],
                          quick_interval=[*record.quick_interval, [round(low, 4), round(high, 4)]])
        self._constrain(trial, kept, final=False)
        return self.passes(kept)

    def after_evaluation(self, trial: optuna.Trial, has_keepable: bool) -> None:
        """Clearly below the bar (its whole interval under it), a trial that already kept a
        feasible checkpoint stops there as complete; one that never had a feasible point is
        pruned. Below the bar by less than the noise, it trains on."""
        record = TrialRecord.of(trial)
        kept = record.quick_retention[-1]
        low, high = record.quick_interval[-1]
        bar = self.base["min_retention"]
        if high >= bar:
            return
        reason = (f"forgetting: kept {kept:.2f} of the base skill on the quick check, clearly "
                  f"below the bar {bar:.2f} (95% interval {low:.2f}-{high:.2f})")
        if has_keepable:
            TrialRecord.write(trial, stop_reason=f"{reason}; it keeps its best checkpoint above "
                              "the bar")
            raise StopTraining
        TrialRecord.write(trial, prune_reason=reason)
        raise ForgettingPruned(reason)

    def on_prune(self, trial: optuna.Trial) -> None:
        """A pruned trial's constraint is its last quick retention, so the sampler learns too."""
        kept = (TrialRecord.of(trial).quick_retention or [1.0])[-1]
        self._constrain(trial, kept, final=True)

    def _constrain(self, trial: optuna.Trial, kept: float, final: bool) -> None:
        """Feasible when ≤ 0; Optuna accepts a trial's constraint once, so only at its end."""
        violation = self.base["min_retention"] - kept
        TrialRecord.write(trial, constraint=[violation])
        if final:
            trial.set_constraint("retention", violation)

    def on_finish(self, trial: optuna.Trial, model, best_state: dict, device: torch.device,
                  weights: tuple[int, float]):
        """Full check of the weights the trial keeps (its best evaluation that passed the quick
        check, or its best one when none did, or a point of its curve: `weights` as `quick`
        names them), with its interval; where the quick slice is the whole searched part (the
        demo's 25 Lee documents), their quick check was this check already."""
        began = time.perf_counter()
        checked = self.checks.get(weights)
        if checked is None or not quick_is_search(self.task):
            model.load_state_dict(best_state, strict=False)
            checked = self.measure(model, device, "search")
        kept, low, high, tuned = checked
        self._add_seconds(trial, time.perf_counter() - began)
        TrialRecord.write(trial, base_score=tuned, retention=kept, retention_interval=[low, high])
        self._constrain(trial, kept, final=True)

    @staticmethod
    def _add_seconds(trial: optuna.Trial, seconds: float) -> None:
        total = (TrialRecord.of(trial).base_check_seconds or 0.0) + seconds
        TrialRecord.write(trial, base_check_seconds=round(total, 3))
