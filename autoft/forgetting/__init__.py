"""Base-task checks: how much of what the pretrained model knew a tuned model still knows.

Owns the `BaseTask` interface, the registry of its kinds (one module each in kinds/: similarity,
classification, masked_lm, drift, causal_lm, qa, ranking), `kinds_for` a task, the default check
(`default_check`), and `retention`, the share of the base score a tuned model kept. Each kind
reads its data in units (documents, pairs, examples, texts or questions) split (split.py) into a
searched part and the audit's.
"""

from __future__ import annotations

import dataclasses
import importlib

from autoft.config import AUTO, BASE_KINDS, BaseTaskConfig, StudyConfig
from autoft.errors import UsageError
from autoft.forgetting.base import (
    BaseScore,
    BaseTask,
    Replay,
    no_replay,
    paired_interval,
    retention,
    unit_draws,
)
from autoft.forgetting.encoders import linear_cka
from autoft.forgetting.readers import find_pair_columns, preservation_texts
from autoft.forgetting.split import BaseSplit

__all__ = [
    "BaseScore",
    "BaseSplit",
    "BaseTask",
    "KINDS",
    "Replay",
    "build_base_task",
    "default_check",
    "kinds_for",
    "find_pair_columns",
    "linear_cka",
    "no_replay",
    "paired_interval",
    "preservation_texts",
    "retention",
    "study_base_task",
    "unit_draws",
]


def build_base_task(config: BaseTaskConfig, *args, **options) -> BaseTask:
    """The check of `config.kind`: its base-task data and the original model read once (the
    arguments are `BaseTask.__init__`'s); the task then scores any tuned model."""
    if config.kind not in KINDS:
        raise UsageError(f"Unknown base-task kind '{config.kind}'; use one of {', '.join(KINDS)}.")
    return KINDS[config.kind](config, *args, **options)


def _kind_class(kind: str) -> type[BaseTask]:
    """The BaseTask subclass that the kind's module (autoft/forgetting/kinds/<kind>.py) defines."""
    module = importlib.import_module(f"autoft.forgetting.kinds.{kind}")
    return next(value for value in vars(module).values() if isinstance(value, type)
                and issubclass(value, BaseTask) and value.__module__ == module.__name__)


def kinds_for(task) -> tuple[str, ...]:
    """The base-check kinds that can check a model of `task` (a Task or its class): those whose
    `inputs` hold the task's and whose `models` hold one the task may tune."""
    return tuple(kind for kind, check in KINDS.items()
                 if task.inputs in check.inputs and set(task.models) & set(check.models))


def default_check(config: BaseTaskConfig, task, sized_by_user: bool) -> BaseTaskConfig | None:
    """The check of a study that named no base kind (`auto`): the kind that reads the model's own
    behaviour on general text (`ranking` for an encoder, `causal_lm` for a causal LM), sized as
    that kind's `default_sizes` unless the user sized it; None where no kind reads general
    text for the task (images)."""
    if config.kind != AUTO:
        return config
    kind = "causal_lm" if tuple(task.models) == ("decoder",) else "ranking"
    if kind not in kinds_for(task):
        return None
    searched, quick = KINDS[kind].default_sizes
    sizes = {} if sized_by_user else {"max_examples": searched, "check_examples": quick}
    return dataclasses.replace(config, kind=kind, **sizes)


# The registry of base-check kinds by name: a new kind is a new module in kinds/.
KINDS = {kind: _kind_class(kind) for kind in BASE_KINDS}


def study_base_task(config: StudyConfig, processor, max_length: int,
                    split: BaseSplit | None = None) -> BaseTask:
    """The study's base task (its base settings, model, trust and seed); it keeps its own max
    length, and the study's split of its data (made now, from the seed, when there is none)."""
    return build_base_task(config.base, config.model, processor, max_length,
                           config.trust_remote_code, split, config.seed)
