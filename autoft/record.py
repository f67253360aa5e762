"""The trial record: everything a trial writes about itself, one typed dataclass whose fields are
its Optuna user attributes, so the trial side and every reader share one list of names.

The storage keeps holding plain user attributes (JSON values, the same keys as before), so older
studies, optuna-dashboard and the `optuna` CLI read them as ever. A trial writes its record a few
fields at a time (`TrialRecord.write`: evaluations go in as they happen, for the live display and
so a crash loses nothing), and a misspelled field raises at once instead of writing an attribute
no reader looks for; readers take `TrialRecord.of(trial)`, with a default for what is absent.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial


@dataclass(frozen=True)
class TrialRecord:
    """What one trial recorded, read back from its user attributes. An absent attribute reads as
    its field's default: None where nothing was measured, an empty list where nothing happened
    yet. Lists and dicts are the storage's own values: read them, do not change them."""

    # queued with the trial (autoft.schedule), before it runs
    start: int | None = None  # which of the space's starts it runs (0 is the default config)
    retry_of: int | None = None  # the trial whose config it runs again (it did not finish)

    # where and how it runs (autoft.workers, autoft.objective)
    worker: dict | None = None  # the worker running it: {"host", "pid", "device"}
    params: dict = field(default_factory=dict)  # every param it trains with, searched and fixed
    device: str | None = None  # the torch device it trains on
    precision: str | None = None  # what it computes in (autoft.precision)
    host: str | None = None  # the machine's name
    seed: int | None = None  # its own seed, from the study's seed and its params
    threads: int | None = None  # torch's CPU threads: CPU sums depend on them
    adapter: str | None = None  # how its top blocks train (autoft.adapters)
    trainable_parameters: int | None = None  # the elements it trains
    base_check: str | None = None  # why the forgetting guard did not check it, when it did not
    preserve_targets: str | None = None  # the preservation loss's targets: built, reused, skipped
    preserve_on: str | None = None  # where the preserved texts came from (autoft.preserve)

    # as it trains
    evaluations: list[dict] = field(default_factory=list)  # each autoft.train.Evaluation, in order
    quick_retention: list[float] = field(default_factory=list)  # the quick check's, one each
    quick_interval: list[list[float]] = field(default_factory=list)  # its 95% [low, high], each
    constraint: list[float] = field(default_factory=list)  # Optuna's, mirrored: ≤ 0 is feasible
    base_check_seconds: float | None = None  # time in forgetting checks so far
    prune_reason: str | None = None  # why it was pruned, with the numbers that decided
    stop_reason: str | None = None  # why it stopped early as complete (a plateau, forgetting)
    fail_reason: str | None = None  # why it failed; "interrupted" when its config runs again
    counts_toward_budget: bool = False  # a failure of its own, which uses the study's budget

    # the interpolation curve (autoft.interpolate), where it has a base task
    interpolation: list[dict] = field(default_factory=list)  # each MixPoint it measured
    interpolation_seconds: float | None = None  # what measuring the curve cost
    mix: float | None = None  # the tuned share of the weights it keeps (1.0: as trained)
    mixed_from: str | None = None  # which weights were mixed: 'kept' or 'top'
    kept_not_mixed: str | None = None  # why its kept weights were not mixed back
    top_not_mixed: str | None = None  # why its best-scoring weights were not mixed back

    # what it keeps (autoft.objective), once its weights are saved
    checkpoint: str | None = None  # the saved trainable weights' path, on its worker's machine
    best_value: float | None = None  # the score of the weights it keeps
    best_step: int | None = None  # the evaluation they come from
    # their precision and recall on validation, overall and per class (Task.score_details);
    # None for a kind without classes, and in studies from before it was recorded
    score_details: dict | None = None
    train_seconds: float | None = None  # training time, without evaluations and checks
    samples_per_second: float | None = None  # training speed
    head_first_seconds: float | None = None  # LP-FT's head-only phase, when it had one
    cache_used: bool | None = None  # whether it trained from the prefix cache
    cache_note: str | None = None  # why not, or whether it built or reused the cache
    cache_seconds: float | None = None  # what finding, checking or building the cache cost

    # the forgetting guard's full check of the kept weights (autoft.guard)
    base_score: float | None = None  # the tuned model's base-task score
    retention: float | None = None  # the share of the base skill it keeps
    retention_interval: list[float] | None = None  # its 95% interval, [low, high]

    @classmethod
    def of(cls, trial: optuna.Trial | FrozenTrial) -> TrialRecord:
        """The record of a trial, live or stored; attributes that are no field (an older
        version's) are left out."""
        attrs = trial.user_attrs
        return cls(**{name: attrs[name] for name in FIELDS if name in attrs})

    @staticmethod
    def attrs(**values: Any) -> dict[str, Any]:
        """These fields as user attributes, for Optuna calls that take them whole
        (`enqueue_trial`); a TypeError names any that is no field."""
        unknown = [name for name in values if name not in FIELDS]
        if unknown:
            raise TypeError(f"TrialRecord has no field {', '.join(map(repr, unknown))}")
        return values

    @classmethod
    def write(cls, trial: optuna.Trial, **values: Any) -> None:
        """Set these fields on a running trial (`optuna.Trial`), in the order given; the values
        must be JSON-serializable, as every user attribute's."""
        for name, value in cls.attrs(**values).items():
            trial.set_user_attr(name, value)


FIELDS = frozenset(f.name for f in dataclasses.fields(TrialRecord))
