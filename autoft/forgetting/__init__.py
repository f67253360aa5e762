"""Base-task checks: how much of what the pretrained model knew a tuned model still knows.

Owns the `BaseTask` interface, its four kinds (similarity, classification, masked_lm, drift)
and `retention`, the share of the base score a tuned model kept. Each kind reads its data in
units (documents, pairs or examples) split (split.py) into a searched part and the audit's.
"""

from __future__ import annotations

from autoft.config import BaseTaskConfig
from autoft.errors import UsageError
from autoft.forgetting.base import (
    BaseScore,
    BaseTask,
    Replay,
    no_replay,
    paired_interval,
    retention,
)
from autoft.forgetting.classification import ClassificationTask
from autoft.forgetting.drift import DriftTask
from autoft.forgetting.encoders import linear_cka
from autoft.forgetting.masked_lm import MaskedLMTask
from autoft.forgetting.readers import find_pair_columns, preservation_texts
from autoft.forgetting.similarity import SimilarityTask
from autoft.forgetting.split import BaseSplit

__all__ = [
    "BaseScore",
    "BaseSplit",
    "BaseTask",
    "KINDS",
    "Replay",
    "build_base_task",
    "find_pair_columns",
    "linear_cka",
    "no_replay",
    "paired_interval",
    "preservation_texts",
    "retention",
]


def build_base_task(
    config: BaseTaskConfig,
    model_source: str,
    tokenizer,
    max_length: int,
    trust_remote_code: bool = False,
    split: BaseSplit | None = None,
    seed: int = 0,
) -> BaseTask:
    """Read the base-task data and the original model once; the task then scores any tuned model.

    `split` is the study's stored split of the data; without one the data is split now (seeded).
    """
    if config.kind not in KINDS:
        raise UsageError(f"Unknown base-task kind '{config.kind}'; use one of {', '.join(KINDS)}.")
    return KINDS[config.kind](config, model_source, tokenizer, max_length, trust_remote_code,
                              split, seed)


# The registry of base-check kinds by name (config.BASE_KINDS names the same, without torch).
KINDS = {
    "similarity": SimilarityTask,
    "classification": ClassificationTask,
    "masked_lm": MaskedLMTask,
    "drift": DriftTask,
}
