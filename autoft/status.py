"""`autoft status`: a study's counts, its best so far, each running trial's worker and progress,
and what became of trials that did not finish; read from the storage alone, so autoft.cli runs it
without autoft.commands and its torch (1 s, not 13).
"""

from __future__ import annotations

import argparse
import time

import optuna
from optuna.trial import TrialState

from autoft.describe import describe_seconds
from autoft.progress import epoch_text, status_line, take_snapshot
from autoft.record import TrialRecord
from autoft.schedule import fail_stale_trials, to_run_again
from autoft.storage import load_study, study_read_only


def status(args: argparse.Namespace) -> int:
    """`autoft status --study NAME`: stale trials failed first (unless the study is read-only
    here), then the study in words."""
    study = load_study(args.study, args.studies_dir, args.storage)
    if study_read_only(args.study, args.studies_dir, args.storage):
        print(f"(Study '{args.study}' is read-only here: shown as stored, so a trial whose "
              f"worker died may still show as running.)")
    else:
        fail_stale_trials(study)  # a dead worker's trial shows as such, not as running
    print(status_text(study))
    return 0


def status_text(study: optuna.Study) -> str:
    """The study now: counts, the best so far, and each running trial's worker and progress."""

    attrs = study.user_attrs
    trials = study.get_trials(deepcopy=False)
    starts = [t.datetime_start.timestamp() for t in trials if t.datetime_start]
    ends = [t.datetime_complete.timestamp() for t in trials if t.datetime_complete]
    running = [t for t in trials if t.state == TrialState.RUNNING]
    end = time.time() if running or not ends else max(ends)
    elapsed = end - min(starts) if starts else 0.0
    budget = (attrs.get("config") or {}).get("n_trials", len(trials))
    snapshot = take_snapshot(trials, budget, elapsed, frozenset(), attrs.get("train_examples"),
                             study.direction.name.lower())
    metric = attrs.get("metric", "value")
    lines = [f"Study '{study.study_name}': {status_line(snapshot, metric)}"]
    for trial, progress in zip(running, snapshot.running, strict=True):
        worker = TrialRecord.of(trial).worker or {}
        where = f"{worker.get('device', '?')} on {worker.get('host', '?')} pid {worker.get('pid')}"
        value = progress.last_value
        last = f", last {metric} {value:.4f}" if value is not None else ""
        age = describe_seconds(time.time() - trial.datetime_start.timestamp())
        lines.append(
            f"  trial {trial.number}: {where}, {epoch_text(progress)}{last}, running {age}"
        )
    lines.extend(stopped_lines(trials))
    return "\n".join(lines)


def stopped_lines(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    """What became of trials that did not finish (interrupted, or their worker died): whose
    config runs again, and which trial ran it."""
    retried = [(TrialRecord.of(t).retry_of, t) for t in trials]
    queued = [retry_of for retry_of, t in retried
              if t.state == TrialState.WAITING and retry_of is not None]
    waiting = sorted(queued + [t.number for t in to_run_again(trials)])
    rerun = [(retry_of, t.number) for retry_of, t in retried
             if t.state != TrialState.WAITING and retry_of is not None]
    lines = []
    if waiting:
        lines.append(
            f"  did not finish: trial {', '.join(map(str, waiting))}; their configs run again, "
            f"before any new one, when the study goes on (autoft search or autoft worker)."
        )
    if rerun:
        lines.append("  run again: " + ", ".join(f"trial {a} as trial {b}" for a, b in rerun))
    return lines
