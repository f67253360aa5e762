"""Honest retention: the base data split once per study into the part the search checks and an
audit part that only the reported numbers use, and the audit itself, with a bootstrap interval.

Picking the best of many noisy checks inflates the winner's retention; the audit part was never
seen by that choice, so its retention is one the selection could not flatter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from autoft.config import BaseTaskConfig
from autoft.errors import UsageError
from autoft.export import check_base_model, load_soup_model, load_trial_model
from autoft.forgetting import BaseSplit, build_base_task, paired_interval, retention
from autoft.tasks import recorded_task
from autoft.trials import best_feasible, default_trial, winning_soup

__all__ = ["audit_reported", "bootstrap_retention", "recorded_base_task"]

RESAMPLES = 1000
LEVEL = 0.95


def bootstrap_retention(task, base_observed, tuned_observed, seed: int,
                        resamples: int = RESAMPLES) -> dict:
    """Audit retention and its 95% percentile interval, resampling the audit units (pairs,
    documents with the pairs among them, or examples) with the base and tuned model paired."""
    units = task.units_["audit"]
    whole = np.arange(units)
    base, tuned = task.statistic(base_observed, whole), task.statistic(tuned_observed, whole)
    low, high = paired_interval(task, base_observed, tuned_observed, "audit", seed, resamples,
                                LEVEL)
    return {"retention": retention(base, tuned, task.higher_is_better), "low": low,
            "high": high, "score": tuned, "base_score": base, "units": int(units),
            "resamples": resamples}


def audit_reported(study: optuna.Study, echo=print, study_dir: Path | None = None,
                   trust_remote_code: bool = False) -> dict:
    """Audit what a report names (the best feasible trial, the default config and the winning
    soup), once each; results go to the study's user attribute `audits`, keyed by trial number
    (the soup's by 'soup', redone when its members change). The model is loaded only where
    there is something to audit, and checked first (export.check_base_model)."""
    base = study.user_attrs.get("base")
    audits = dict(study.user_attrs.get("audits") or {})
    if not base:
        return audits
    wanted = {t.number: t for t in (best_feasible(study), default_trial(study))
              if t is not None and t.state == TrialState.COMPLETE}
    todo = [(str(number), trial) for number, trial in sorted(wanted.items())
            if str(number) not in audits]
    soup = winning_soup(study)
    if soup is not None and (audits.get("soup") or {}).get("members") != soup["members"]:
        todo.append(("soup", soup))
    if not todo:
        return audits
    check_base_model(study.user_attrs, study_dir, trust_remote_code)
    for key, result in _audit(study, base, todo, echo):
        audits[key] = result
    study.set_user_attr("audits", audits)
    return audits


def recorded_base_task(attrs: dict, tokenizer):
    """The study's base task as the search checked it, rebuilt from its recorded config and
    split."""
    config = attrs["config"]
    return build_base_task(BaseTaskConfig(**config["base"]), attrs["model"], tokenizer,
                           attrs["base"]["max_length"], config["trust_remote_code"],
                           split=BaseSplit.from_dict(attrs["base"].get("split")),
                           seed=config["seed"])


def _audit(study: optuna.Study, base: dict, todo: list, echo):
    """Score the untouched model once and each trial's kept weights (or the soup's) on the
    audit part."""
    attrs = study.user_attrs
    config = attrs["config"]
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    kind = recorded_task(attrs)
    model, tokenizer = kind.load_model(attrs["model"], attrs["label_names"],
                                       config["trust_remote_code"])
    task = recorded_base_task(attrs, tokenizer)
    held = "held-out " if task.split_.held_out else ""
    echo(f"Auditing retention on {task.units_['audit']} {held}{task.split_.unit} ...")
    base_observed = task.observe(model.to(device), device)
    for key, what in todo:
        soup = key == "soup"
        try:
            tuned, _ = (load_soup_model(kind, attrs, what) if soup else
                        load_trial_model(kind, attrs["model"], attrs["label_names"], what,
                                         config["trust_remote_code"]))
        except UsageError as error:
            echo(f"  {'the soup' if soup else f'trial {key}'} not audited: {error}")
            continue
        result = bootstrap_retention(task, base_observed, task.observe(tuned.to(device), device),
                                     seed=config["seed"])
        result |= {"unit": task.split_.unit, "held_out": task.split_.held_out}
        yield key, result | ({"members": what["members"]} if soup else {})
