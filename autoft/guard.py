"""The forgetting guard: measures the base model once per study, checks a cheap slice at every
evaluation (the trial keeps only weights that pass; it stops when it falls below the bar after a
passing checkpoint, or is pruned far below it without one) and the kept weights at a trial's end;
a trial that trains nothing the base task reads keeps the base skill exactly and is not checked.
"""

from __future__ import annotations

import time

import numpy as np
import optuna
import torch

from autoft.config import BaseTaskConfig
from autoft.forgetting import BaseScore, BaseTask, retention
from autoft.train import StopTraining

PRUNE_MARGIN = 0.10
BASE_MAX_LENGTH = 256  # base texts keep their own max length: they are often longer


def measure_base(task: BaseTask, model, config: BaseTaskConfig, device: torch.device) -> dict:
    """The untouched model's base-task skill on the searched part, on its quick slice and on the
    audit part, with the split itself; stored in the study."""
    full = task.score(model, str(device))
    quick = task.score(model, str(device), quick=True)
    audit = task.statistic(task.observe(model, str(device)), np.arange(task.audit_units_))
    return {"kind": config.kind, "name": task.name, "measures": task.measures,
            "higher_is_better": task.higher_is_better, "score": full.value,
            "details": full.details, "quick_score": quick.value, "audit_score": audit,
            "split": task.split_.to_dict(), "min_retention": config.min_retention}


class ForgettingPruned(optuna.TrialPruned):
    """A trial pruned for forgetting, not for its score: mixed back toward the untouched
    weights, its best-scoring weights may still keep the bar."""


class ForgettingGuard:
    """Per-trial base-task checks, recorded as user attributes and as Optuna's constraint."""

    def __init__(self, task: BaseTask, base: dict):
        self.task = task
        self.base = base
        self.untouched = False
        self.frozen = 0

    def on_start(self, trial: optuna.Trial, model, frozen: int) -> None:
        """Decide, once the model is frozen as the trial wants (its bottom `frozen` blocks), whether
        its checks can change at all; those that run replay the frozen blocks' output."""
        self.frozen = frozen
        self.untouched = not self.task.reads_trained(model)
        if self.untouched:
            trial.set_user_attr(
                "base_check", "skipped: the trial trains nothing the base task reads, so it "
                "keeps the base skill exactly")

    def _retention(self, value: float, key: str) -> float:
        return retention(self.base[key], value, self.base["higher_is_better"])

    def quick_retention(self, model, device: torch.device) -> float:
        """The share of the base skill the model keeps on the quick check's fixed slice."""
        if self.untouched:
            return 1.0
        score = self.task.score(model, str(device), quick=True, frozen=self.frozen).value
        return self._retention(score, "quick_score")

    def passes(self, retention: float) -> bool:
        return retention >= self.base["min_retention"]

    def keepable(self, trial: optuna.Trial, model, device: torch.device) -> bool:
        """Cheap check on a fixed slice, before the trial may keep these weights: whether they
        keep at least the bar."""
        began = time.perf_counter()
        kept = self.quick_retention(model, device)
        self._add_seconds(trial, time.perf_counter() - began)
        history = trial.user_attrs.get("quick_retention", []) + [round(kept, 4)]
        trial.set_user_attr("quick_retention", history)
        self._constrain(trial, kept, final=False)
        return self.passes(kept)

    def after_evaluation(self, trial: optuna.Trial, has_keepable: bool) -> None:
        """Below the bar, a trial that already kept a feasible checkpoint stops there as
        complete; one that never had a feasible point is pruned once well below the bar."""
        kept = trial.user_attrs["quick_retention"][-1]
        if kept >= self.base["min_retention"]:
            return
        if has_keepable:
            trial.set_user_attr(
                "stop_reason", f"forgetting: kept {kept:.2f} of the base skill, below the bar "
                f"{self.base['min_retention']:.2f}; it keeps its best checkpoint above the bar")
            raise StopTraining
        bar = self.base["min_retention"] - PRUNE_MARGIN
        if kept < bar:
            reason = (f"forgetting: kept {kept:.2f} of the base skill on the quick check, "
                      f"below {bar:.2f}")
            trial.set_user_attr("prune_reason", reason)
            raise ForgettingPruned(reason)

    def on_prune(self, trial: optuna.Trial) -> None:
        """A pruned trial's constraint is its last quick retention, so the sampler learns too."""
        kept = trial.user_attrs.get("quick_retention", [1.0])[-1]
        self._constrain(trial, kept, final=True)

    def _constrain(self, trial: optuna.Trial, kept: float, final: bool) -> None:
        """Feasible when ≤ 0; Optuna accepts a trial's constraint once, so only at its end."""
        violation = self.base["min_retention"] - kept
        trial.set_user_attr("constraint", [violation])
        if final:
            trial.set_constraint("retention", violation)

    def on_finish(self, trial: optuna.Trial, model, best_state: dict, device: torch.device):
        """Full check of the weights the trial keeps (its best evaluation that passed the quick
        check, or its best one when none did)."""
        began = time.perf_counter()
        if self.untouched:
            tuned = BaseScore(self.base["score"], self.base["details"])
        else:
            model.load_state_dict(best_state, strict=False)
            tuned = self.task.score(model, str(device), frozen=self.frozen)
        kept = self._retention(tuned.value, "score")
        self._add_seconds(trial, time.perf_counter() - began)
        trial.set_user_attr("base_score", tuned.value)
        trial.set_user_attr("base_details", tuned.details)
        trial.set_user_attr("retention", kept)
        self._constrain(trial, kept, final=True)

    @staticmethod
    def _add_seconds(trial: optuna.Trial, seconds: float) -> None:
        total = trial.user_attrs.get("base_check_seconds", 0.0) + seconds
        trial.set_user_attr("base_check_seconds", round(total, 3))
