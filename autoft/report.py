"""The study's result, read from the storage alone: summary.json and the summary on screen.

The best trial is the best *feasible* complete trial (retention at or above the bar when a base
task is set); the default config's score stands beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.trial import TrialState

from autoft.describe import describe_params, describe_seconds


def full_params(trial: optuna.trial.FrozenTrial) -> dict:
    """Searched and fixed params alike (Optuna's `params` holds only the searched ones)."""
    return {**trial.user_attrs.get("params", {}), **trial.params}


def is_feasible(trial: optuna.trial.FrozenTrial) -> bool:
    return all(value <= 0 for value in trial.user_attrs.get("constraint", [0.0]))


def default_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The finished trial that ran the space's default config (trial 0 unless it was retried)."""
    default = study.user_attrs.get("default_params")
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if default and all(full_params(trial).get(k) == v for k, v in default.items()):
            return trial
    return None


def best_feasible(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    feasible = [t for t in complete if is_feasible(t) and t.value is not None]
    return max(feasible, key=lambda t: t.value, default=None)


def least_forgetful(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    rated = [t for t in complete if t.user_attrs.get("retention") is not None]
    return max(rated, key=lambda t: t.user_attrs["retention"], default=None)


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state, under the names summary.json uses."""
    names = {
        TrialState.COMPLETE: "complete",
        TrialState.PRUNED: "pruned",
        TrialState.FAIL: "failed",
        TrialState.RUNNING: "running",
        TrialState.WAITING: "waiting",
    }
    trials = study.get_trials(deepcopy=False)
    return {name: sum(1 for t in trials if t.state == state) for state, name in names.items()}


def trial_entry(trial: optuna.trial.FrozenTrial | None) -> dict | None:
    if trial is None:
        return None
    attrs = trial.user_attrs
    return {
        "number": trial.number,
        "value": trial.value,
        "params": full_params(trial),
        "retention": attrs.get("retention"),
        "base_score": attrs.get("base_score"),
        "train_seconds": attrs.get("train_seconds"),
        "checkpoint": attrs.get("checkpoint"),
    }


def retention_front(study: optuna.Study) -> list[dict]:
    """Complete trials not beaten on both target score and retention (the trade-off curve)."""
    rated = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("retention") is not None and t.value is not None
    ]
    front = [
        t
        for t in rated
        if not any(
            o.value >= t.value
            and o.user_attrs["retention"] >= t.user_attrs["retention"]
            and (o.value > t.value or o.user_attrs["retention"] > t.user_attrs["retention"])
            for o in rated
        )
    ]
    return [
        {"number": t.number, "value": t.value, "retention": t.user_attrs["retention"]}
        for t in sorted(front, key=lambda t: t.value)
    ]


def build_summary(study: optuna.Study) -> dict:
    """Everything a person or a script needs to know about the study's outcome."""
    attrs = study.user_attrs
    best = best_feasible(study)
    trials = study.get_trials(deepcopy=False)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    summary = {
        "study": study.study_name,
        "metric": attrs.get("metric"),
        "depth": attrs.get("depth"),
        "best": trial_entry(best),
        "default": trial_entry(default_trial(study)),
        "counts": counts(study),
        "seconds": (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0,
        "notes": attrs.get("notes", []),
    }
    if attrs.get("base"):
        summary["base"] = attrs["base"]
        summary["front"] = retention_front(study)
        if best is None:
            summary["least_forgetful"] = trial_entry(least_forgetful(study))
    return summary


def write_summary(study: optuna.Study, study_dir: Path) -> dict:
    """summary.json in the study folder (written whole, then moved into place)."""
    summary = build_summary(study)
    study_dir.mkdir(parents=True, exist_ok=True)
    tmp = study_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    tmp.replace(study_dir / "summary.json")
    return summary


def summary_text(summary: dict) -> str:
    """The few lines a person reads in the morning."""
    metric, depth = summary["metric"], summary["depth"]
    c = summary["counts"]
    lines = [
        f"Study '{summary['study']}': {c['complete']} completed, {c['pruned']} pruned, "
        f"{c['failed']} failed, in {describe_seconds(summary['seconds'])}."
    ]
    best, default = summary["best"], summary["default"]
    if best is None:
        if summary.get("base"):
            lines.append(
                f"No trial kept enough base-task skill (retention ≥ "
                f"{summary['base']['min_retention']})."
            )
            least = summary.get("least_forgetful")
            if least:
                lines.append(
                    f"The least forgetful was trial {least['number']}: "
                    f"{metric} {least['value']:.4f}, retention {least['retention']:.3f}."
                )
        else:
            lines.append("No trial completed, so there is no best config yet.")
        return "\n".join(lines)
    lines.append(f"Best config (trial {best['number']}): {describe_params(best['params'], depth)}.")
    score = f"  {metric} {best['value']:.4f}"
    if default is not None:
        score += f" (the default config scored {default['value']:.4f})"
    lines.append(score)
    if best.get("retention") is not None:
        base = summary["base"]
        lines.append(
            f"  keeps {best['retention']:.1%} of the base model's {base['kind']} skill "
            f"({base['name']} {best['base_score']:.4f} vs {base['score']:.4f})"
        )
    return "\n".join(lines)
