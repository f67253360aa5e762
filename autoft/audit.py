"""Honest retention: the base data split once per study into the part the search checks and an
audit part that only the reported numbers use, and the audit itself, with a bootstrap interval.

Picking the best of many noisy checks inflates the winner's retention; the audit part was never
seen by that choice, so its retention is one the selection could not flatter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import optuna
from optuna.trial import TrialState

from autoft.errors import UsageError
from autoft.tasks import recorded_task
from autoft.trials import best_feasible, default_trial

__all__ = ["BaseSplit", "audit_reported", "bootstrap_retention", "split_base"]

AUDIT_SHARE = 0.5
# Below these a held-out half would be too small to say anything: documents of a ratings matrix
# (20 documents still give 45 pairs per half), and pairs or examples otherwise.
MIN_UNITS = {"documents": 20, "pairs": 100, "examples": 100}
RESAMPLES = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class BaseSplit:
    """Which base-data units (documents, pairs or examples, in file order) the audit holds back.

    Stored with the prepared study, so every worker and every resume checks the same part.
    """

    unit: str
    total: int
    audit: tuple[int, ...]
    note: str | None = None

    @property
    def held_out(self) -> bool:
        return bool(self.audit)

    def search(self) -> list[int]:
        """The units the search checks: every one the audit does not hold back."""
        held = set(self.audit)
        return [i for i in range(self.total) if i not in held]

    def parts(self, max_examples: int, check_examples: int) -> dict[str, list[int]]:
        """Unit indices of the full check, the quick slice (its first items) and the audit."""
        search = self.search()[:max_examples]
        audit = list(self.audit)[:max_examples] if self.held_out else search
        return {"search": search, "quick": search[: min(check_examples, max_examples)],
                "audit": audit}

    def to_dict(self) -> dict:
        return asdict(self) | {"audit": list(self.audit)}

    @classmethod
    def from_dict(cls, values: dict | None) -> BaseSplit | None:
        return cls(**values | {"audit": tuple(values["audit"])}) if values else None


def split_base(total: int, unit: str, seed: int) -> BaseSplit:
    """Hold back a seeded half of the units for the audit, or none of a set too small to split."""
    if total < MIN_UNITS[unit]:
        note = (f"the base data has only {total} {unit} (fewer than {MIN_UNITS[unit]}), too few "
                f"to hold some back: the audit reuses the {unit} the search checked")
        return BaseSplit(unit, total, (), note)
    rng = np.random.default_rng(seed)
    audit = sorted(rng.permutation(total)[: int(round(total * AUDIT_SHARE))].tolist())
    return BaseSplit(unit, total, tuple(audit))


def bootstrap_retention(task, base_observed, tuned_observed, seed: int,
                        resamples: int = RESAMPLES) -> dict:
    """Audit retention and its 95% percentile interval, resampling the audit units (pairs,
    documents with the pairs among them, or examples) with the base and tuned model paired."""
    from autoft.forgetting import retention

    units = task.audit_units_
    whole = np.arange(units)
    base, tuned = task.statistic(base_observed, whole), task.statistic(tuned_observed, whole)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        rows = rng.integers(0, units, units)
        draws.append(retention(task.statistic(base_observed, rows),
                               task.statistic(tuned_observed, rows), task.higher_is_better))
    low, high = np.nanpercentile(draws, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return {"retention": retention(base, tuned, task.higher_is_better), "low": float(low),
            "high": float(high), "score": tuned, "base_score": base, "units": int(units),
            "resamples": resamples}


def audit_reported(study: optuna.Study, echo=print) -> dict:
    """Audit the trials a report names (the best feasible and the default config), once each;
    results go to the study's user attribute `audits`, keyed by trial number."""
    base = study.user_attrs.get("base")
    audits = dict(study.user_attrs.get("audits") or {})
    if not base:
        return audits
    wanted = {t.number: t for t in (best_feasible(study), default_trial(study))
              if t is not None and t.state == TrialState.COMPLETE}
    todo = [trial for number, trial in sorted(wanted.items()) if str(number) not in audits]
    if not todo:
        return audits
    for trial, result in _audit(study, base, todo, echo):
        audits[str(trial.number)] = result
    study.set_user_attr("audits", audits)
    return audits


def _audit(study: optuna.Study, base: dict, trials: list, echo):
    """Score the untouched model once and each trial's kept weights on the audit part."""
    import torch

    from autoft.config import BaseTaskConfig
    from autoft.export import load_trial_model
    from autoft.forgetting import build_base_task

    attrs = study.user_attrs
    config = attrs["config"]
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    kind = recorded_task(attrs)
    model, tokenizer = kind.load_model(attrs["model"], attrs["label_names"],
                                       config["trust_remote_code"])
    split = BaseSplit.from_dict(base.get("split"))
    task = build_base_task(BaseTaskConfig(**config["base"]), attrs["model"], tokenizer,
                           base["max_length"], config["trust_remote_code"], split=split,
                           seed=config["seed"])
    held = "held-out " if task.split_.held_out else ""
    echo(f"Auditing retention on {task.audit_units_} {held}{task.split_.unit} ...")
    base_observed = task.observe(model.to(device), device)
    for trial in trials:
        try:
            tuned, _ = load_trial_model(kind, attrs["model"], attrs["label_names"], trial,
                                        config["trust_remote_code"])
        except UsageError as error:
            echo(f"  trial {trial.number} not audited: {error}")
            continue
        result = bootstrap_retention(task, base_observed, task.observe(tuned.to(device), device),
                                     seed=config["seed"])
        yield trial, result | {"unit": task.split_.unit, "held_out": task.split_.held_out}
