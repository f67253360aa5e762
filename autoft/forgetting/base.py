"""The interface every base-task check implements (`BaseTask`, `BaseScore`), the share of
the base score a tuned model kept (`retention`), and the helpers every kind shares.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from autoft.config import BaseTaskConfig
from autoft.errors import UsageError
from autoft.forgetting.split import BaseSplit, split_base
from autoft.tasks.images import colour_mode, processed

BATCH_SIZE = 32
MASK_FRACTION = 0.15
MASK_SEED = 0
EPS = 1e-6
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
TOP_LOG_PROBS = 32  # LM preservation keeps the untouched model's 32 likeliest tokens a position

# `replay(module)`: a context in which `module`'s frozen bottom blocks return cached states.
Replay = Callable[[torch.nn.Module], contextlib.AbstractContextManager]
# `split_into(total, unit)`: the unit indices of each part (quick, search, audit) of base data
# holding `total` units called `unit` (texts, examples, questions...).
SplitInto = Callable[[int, str], dict[str, list[int]]]


def no_replay(module: torch.nn.Module) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


@dataclass(frozen=True)
class BaseScore:
    """One base-task measurement: the headline number and its parts."""

    value: float
    details: dict[str, float]


class BaseTask(ABC):
    """A check of a tuned model against what its base model already knew."""

    name: str
    measures: str
    higher_is_better: bool
    inputs: tuple[str, ...]  # the target tasks' inputs whose models it checks: text, image
    # the models it can read, as a Task names those it tunes: encoder, decoder
    models: tuple[str, ...] = ("encoder", "decoder")
    replays_prefix = True  # whether `reads` can start from the frozen blocks' cached output
    # units of the searched part and of its quick slice when autoft chooses this kind itself
    # (forgetting.default_check), on its shipped general text
    default_sizes = (1000, 64)
    split_: BaseSplit
    units_: dict[str, int]  # how many units each part holds: quick, search, audit

    def __init__(
        self,
        config: BaseTaskConfig,
        model_source: str,
        tokenizer,
        max_length: int,
        trust_remote_code: bool = False,
        split: BaseSplit | None = None,
        seed: int = 0,
    ):
        """Read the base data and what the check needs of the original model, once (`_read`);
        the data's units are split into parts by the study's `split`, or now (seeded)."""
        self._read(config, model_source, tokenizer, max_length, trust_remote_code,
                   lambda total, unit: self._parts(config, total, unit, split, seed))

    @abstractmethod
    def _read(self, config: BaseTaskConfig, model_source: str, tokenizer, max_length: int,
              trust_remote_code: bool, split_into: SplitInto) -> None:
        """What each kind reads its own way: the original model where the check compares with
        it, and `config.data`, split into parts by `split_into`, each part's batches kept."""

    @abstractmethod
    def score(self, model, device: str, quick: bool = False, frozen: int = 0) -> BaseScore:
        """Score a tuned *ForSequenceClassification model (encoder: `model.base_model`) on the
        searched part of the base data; the audit part is read only by `observe`.

        quick=True scores the fixed first `check_examples` items, for the per-evaluation check.
        `frozen` says how many bottom blocks are still the base model's: their output on the fixed
        base batches is computed once per task and depth and replayed (autoft.replay.PrefixMemo).
        The model's train/eval modes and requires_grad flags are left as the caller set them.
        """

    @abstractmethod
    def reads_trained(self, model) -> bool:
        """Whether training `model`'s trainable parameters (requires_grad) can change the score.

        When none can (BERT's pooler and a new classifier train, but similarity reads the last
        hidden states), the tuned model keeps the base skill exactly and needs no check. Found by
        autograd on one short text: what the task reads requires grad only if a trained parameter
        lies on its path, whatever the architecture.
        """

    # The preservation loss (autoft.preserve) compares what each kind reads, kind by kind:

    def preservation_batches(self, tokenizer, texts: list[str], max_length: int, size: int) -> list:
        """Fixed batches of `size` texts for the preservation loss; masked_lm masks some tokens."""
        return tokenize_texts(tokenizer, texts, max_length, size)

    @abstractmethod
    def reads(self, model, batch: dict, replay: Replay = no_replay) -> torch.Tensor:
        """What this check reads from `model` on `batch`, with gradients: the untouched model's
        answer is the preservation target, the tuned model's is compared with it by `distance`."""

    @abstractmethod
    def distance(self, tuned: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """How far the tuned model's reading lies from the untouched one: 0 when equal."""

    def stand_in(self, model, device: str, bar: float, seed: int = 0):
        """The searched part's observations by a stand-in for a tuned model that keeps just the
        bar (its statistic over every unit at `bar`), on which prepare sizes the checks before any
        tuned model exists; None for a kind that has none (its sizes stay as configured)."""
        return None

    @torch.no_grad()
    def target(self, model, batch: dict) -> torch.Tensor:
        """The untouched model's reading of a preservation batch, as stored once per study."""
        return self.reads(model, batch).float()
    @abstractmethod
    def observe(self, model, device: str, part: str = "audit", frozen: int = 0):
        """What the score is computed from, per unit of `part` (quick, search or audit), for
        `statistic`; `frozen` bottom blocks are replayed as in `score`."""

    @abstractmethod
    def statistic(self, observed, rows: np.ndarray, part: str = "audit") -> float:
        """The score over the units `rows` of `part` (a bootstrap draw, repeats allowed); over
        every unit, the score `score` gives."""

    def _parts(self, config: BaseTaskConfig, total: int, unit: str, split: BaseSplit | None,
               seed: int) -> dict[str, list[int]]:
        """Unit indices of the full check, the quick slice and the audit, from the study's split
        (made now, seeded, when there is none yet); the split and each part's size are kept."""
        split = split or split_base(total, unit, seed)
        if split.total != total:
            raise UsageError(
                f"{config.data} now holds {total} {unit} but the study was prepared with "
                f"{split.total}; restore the file or start a new --study."
            )
        self.split_ = split
        parts = split.parts(config.max_examples, config.check_examples)
        self.units_ = {part: len(rows) for part, rows in parts.items()}
        return parts


def retention(base: float, tuned: float, higher_is_better: bool) -> float:
    """The share of the base skill the tuned model kept; 1.0 means nothing was forgotten.

    Higher-is-better scores (accuracy, Spearman, CKA): tuned / base; a base at or near zero
    (≤ 1e-6) had no skill to lose, so its retention is 1.0. Loss-type scores: base / tuned, so a
    tuned loss twice the base loss gives 0.5. A non-finite tuned score (a broken model) retains
    nothing: 0.0.
    """
    if not math.isfinite(tuned):
        return 0.0
    if higher_is_better:
        return 1.0 if base <= EPS else tuned / base
    return max(base, EPS) / max(tuned, EPS)


def unit_draws(task: BaseTask, part: str, seed: int, resamples: int,
               measure: Callable[[np.ndarray], float]) -> list[float]:
    """`measure(rows)` over `resamples` bootstrap draws (seeded) of `part`'s units, each draw as
    many rows, with replacement, as the part holds units."""
    units = task.units_[part]
    rng = np.random.default_rng(seed)
    return [measure(rng.integers(0, units, units)) for _ in range(resamples)]


def paired_interval(task: BaseTask, base_observed, tuned_observed, part: str, seed: int,
                    resamples: int, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of the retention over bootstrap draws of `part`'s units (pairs,
    documents with the pairs among them, or examples), the base and the tuned model paired:
    how far the retention could move had the base data held other units of the same kind."""
    draws = unit_draws(task, part, seed, resamples, lambda rows: retention(
        task.statistic(base_observed, rows, part), task.statistic(tuned_observed, rows, part),
        task.higher_is_better))
    low, high = np.nanpercentile(draws, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def top_log_probs(log_probs: torch.Tensor) -> torch.Tensor:
    """Only the likeliest tokens of each position's distribution (a whole vocabulary per token
    would take gigabytes): (positions, 2, k) of log-probabilities and token ids."""
    top = log_probs.topk(min(TOP_LOG_PROBS, log_probs.shape[-1]), dim=-1)
    return torch.stack([top.values, top.indices.float()], dim=1)


def top_kl(tuned: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(untouched ‖ tuned) on the untouched model's likeliest tokens (`top_log_probs`), mean
    over positions; 0 without any."""
    if not len(target):
        return tuned.new_zeros(())
    log_p, ids = target[:, 0], target[:, 1].long()
    return (log_p.exp() * (log_p - tuned.float().gather(-1, ids))).sum(-1).mean()


def scored_part(quick: bool) -> str:
    """The part of the base data a score reads: the quick slice or the whole searched part."""
    return "quick" if quick else "search"


def pick(items: list, rows: list[int]) -> list:
    return [items[i] for i in rows]


def tokenize_texts(
    tokenizer,
    texts: list[str],
    max_length: int,
    size: int = BATCH_SIZE,
    pairs: list[str] | None = None,
    **options,
) -> list:
    """Fixed batches padded per batch, kept on the CPU until a score moves them to its device;
    every output the tokenizer makes (segment ids of `pairs` too) reaches the model."""
    return [
        tokenizer(
            texts[start : start + size],
            None if pairs is None else pairs[start : start + size],
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
            **options,
        )
        for start in range(0, len(texts), size)
    ]


def takes_images(processor) -> bool:
    """Whether the model reads images: its processor makes pixel values, not token ids."""
    return "pixel_values" in getattr(processor, "model_input_names", ())


def base_batches(processor, items: list, max_length: int, pairs: list[str] | None = None,
                 config=None) -> list:
    """Fixed batches of base-task items: texts tokenized (`tokenize_texts`), or images (their
    paths) turned into pixel values in the colour mode of the model whose `config` is given."""
    if not takes_images(processor):
        return tokenize_texts(processor, items, max_length, pairs=pairs)
    mode = colour_mode(config)
    return [processed(processor, items[start : start + BATCH_SIZE], mode)
            for start in range(0, len(items), BATCH_SIZE)]
