"""summary.json: the study's outcome as data, read from the storage alone (the best feasible
trial, the default config's, the soup of the best ones, the counts, the retention front and the
price of the bar).
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.trial import TrialState

from autoft.describe import shown_details
from autoft.files import write_text_whole
from autoft.record import TrialRecord
from autoft.tradeoff import price_of_the_bar
from autoft.trials import (
    best_feasible,
    counts,
    default_trial,
    failure_reasons,
    full_params,
    last_value,
    least_forgetful,
    score_sign,
    winning_soup,
)


def trial_entry(trial: optuna.trial.FrozenTrial | None, audits: dict | None = None) -> dict | None:
    """A trial in summary.json; a pruned one's value is the score it had when it was stopped, and
    `audit` is its retention on the held-out base data (autoft.audit), when it was audited."""
    if trial is None:
        return None
    record = TrialRecord.of(trial)
    stopped = trial.state == TrialState.PRUNED
    return {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "value": last_value(trial) if stopped else trial.value,
        "standard_error": score_error(record),
        "stopped": (record.prune_reason or "pruned") if stopped else None,
        "params": full_params(trial),
        "score_details": shown_details(record.score_details),
        "retention": record.retention,
        "retention_interval": record.retention_interval,
        "base_score": record.base_score,
        "audit": (audits or {}).get(str(trial.number)),
        "train_seconds": record.train_seconds,
        "checkpoint": record.checkpoint,
        "mix": record.mix,
        "mixed_from": record.mixed_from,
    }


def score_error(record: TrialRecord) -> float | None:
    """The bootstrap standard error of the evaluation a trial kept (its last where none was
    kept): how far its score could move on another validation set of the same size."""
    errors = {e["step"]: e.get("standard_error") for e in record.evaluations}
    if not errors:
        return None
    return errors.get(record.best_step, errors[max(errors)])


def soup_entry(study: optuna.Study, audits: dict | None) -> dict | None:
    """The greedy soup the search tried (autoft.soup), or None: its members, score, retention
    and cost; `answer` whether it is the study's answer (it won, and no trial since beat the
    trial it beat), and then its `audit`."""
    soup = study.user_attrs.get("soup")
    if not soup:
        return None
    answer = winning_soup(study) is not None
    audit = (audits or {}).get("soup")
    if not answer or not audit or audit.get("members") != soup["members"]:
        audit = None
    return soup | {"answer": answer, "audit": audit}


def retention_front(study: optuna.Study) -> list[dict]:
    """Complete trials not beaten on both target score and retention (the trade-off curve)."""
    sign = score_sign(study)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    kept = {t.number: TrialRecord.of(t).retention for t in complete}
    rated = [t for t in complete if kept[t.number] is not None and t.value is not None]
    front = [
        t
        for t in rated
        if not any(
            sign * o.value >= sign * t.value
            and kept[o.number] >= kept[t.number]
            and (sign * o.value > sign * t.value or kept[o.number] > kept[t.number])
            for o in rated
        )
    ]
    return [
        {"number": t.number, "value": t.value, "retention": kept[t.number]}
        for t in sorted(front, key=lambda t: t.value)
    ]


def build_summary(study: optuna.Study) -> dict:
    """Everything a person or a script needs to know about the study's outcome."""
    attrs = study.user_attrs
    best = best_feasible(study)
    trials = study.get_trials(deepcopy=False)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    audits = attrs.get("audits")
    summary = {
        "study": study.study_name,
        "metric": attrs.get("metric"),
        "direction": study.direction.name.lower(),
        "depth": attrs.get("depth"),
        "best": trial_entry(best, audits),
        "default": trial_entry(default_trial(study), audits),
        "counts": counts(study),
        "n_trials": (attrs.get("settings") or {}).get("n_trials"),
        "failures": failure_reasons(study),
        "seconds": (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0,
        "notes": attrs.get("notes", []),
        "precision": sorted({TrialRecord.of(t).precision for t in trials} - {None}),
        "soup": soup_entry(study, audits),
    }
    if attrs.get("base"):
        summary["base"] = base_entry(attrs["base"])
        summary["front"] = retention_front(study)
        summary["price"] = price_of_the_bar(trials, attrs["base"]["min_retention"],
                                            attrs.get("depth") or 0, score_sign(study))
        if best is None:
            summary["least_forgetful"] = trial_entry(least_forgetful(study))
    return summary


def base_entry(base: dict) -> dict:
    """The base facts for summary.json: the split described, not its list of indices."""
    split = base.get("split")
    if not split:
        return base
    audit_part = {"unit": split["unit"], "total": split["total"],
                  "held_out": len(split["audit"]), "note": split["note"]}
    return {key: value for key, value in base.items() if key != "split"} | {
        "audit_part": audit_part}


def write_summary(study: optuna.Study, study_dir: Path) -> dict:
    """summary.json in the study folder (written whole, then moved into place)."""
    summary = build_summary(study)
    study_dir.mkdir(parents=True, exist_ok=True)
    write_text_whole(study_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary
