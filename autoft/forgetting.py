"""Base-task checks: how much of what the pretrained model knew a tuned model still knows.

Owns the `BaseTask` interface, its four kinds (similarity, classification, masked_lm, drift)
and `retention`, the share of the base score a tuned model kept. Each kind reads its data in
units (documents, pairs or examples) that autoft.audit splits into a searched and an audit part.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import pearsonr, spearmanr
from torch.func import functional_call
from transformers import (
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
)

from autoft.adapters import plain_state_dict
from autoft.audit import BaseSplit, split_base
from autoft.cache import PrefixMemo
from autoft.config import BaseTaskConfig
from autoft.data import read_frame
from autoft.errors import UsageError
from autoft.model import evaluating
from autoft.tasks.images import colour_mode, processed, read_images

__all__ = [
    "BaseScore",
    "BaseTask",
    "build_base_task",
    "find_pair_columns",
    "linear_cka",
    "preservation_texts",
    "retention",
]

BATCH_SIZE = 32
MASK_FRACTION = 0.15
MASK_SEED = 0
_EPS = 1e-6
_TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
TOP_LOG_PROBS = 32  # masked-LM preservation keeps the untouched model's 32 likeliest tokens

# `replay(module)`: a context in which `module`'s frozen bottom blocks return cached states.
Replay = Callable[[torch.nn.Module], contextlib.AbstractContextManager]


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
    replays_prefix = True  # whether `reads` can start from the frozen blocks' cached output
    split_: BaseSplit
    audit_units_: int

    @abstractmethod
    def score(self, model, device: str, quick: bool = False, frozen: int = 0) -> BaseScore:
        """Score a tuned *ForSequenceClassification model (encoder: `model.base_model`) on the
        searched part of the base data; the audit part is read only by `observe`.

        quick=True scores the fixed first `check_examples` items, for the per-evaluation check.
        `frozen` says how many bottom blocks are still the base model's: their output on the fixed
        base batches is computed once per task and depth and replayed (autoft.cache.PrefixMemo).
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
        return _tokenize(tokenizer, texts, max_length, size)

    @abstractmethod
    def reads(self, model, batch: dict, replay: Replay = no_replay) -> torch.Tensor:
        """What this check reads from `model` on `batch`, with gradients: the untouched model's
        answer is the preservation target, the tuned model's is compared with it by `distance`."""

    @abstractmethod
    def distance(self, tuned: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """How far the tuned model's reading lies from the untouched one: 0 when equal."""

    @torch.no_grad()
    def target(self, model, batch: dict) -> torch.Tensor:
        """The untouched model's reading of a preservation batch, as stored once per study."""
        return self.reads(model, batch).float()
    @abstractmethod
    def observe(self, model, device: str):
        """What the score is computed from, per unit of the audit part, for `statistic`."""

    @abstractmethod
    def statistic(self, observed, rows: np.ndarray) -> float:
        """The score over the audit units `rows` (a bootstrap draw, repeats allowed)."""

    def _parts(self, config: BaseTaskConfig, total: int, unit: str, split: BaseSplit | None,
               seed: int) -> dict[str, list[int]]:
        """Unit indices of the full check, the quick slice and the audit, from the study's split
        (made now, seeded, when there is none yet)."""
        split = split or split_base(total, unit, seed)
        if split.total != total:
            raise UsageError(
                f"{config.data} now holds {total} {unit} but the study was prepared with "
                f"{split.total}; restore the file or start a new --study."
            )
        self.split_ = split
        parts = split.parts(config.max_examples, config.check_examples)
        self.audit_units_ = len(parts["audit"])
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
        return 1.0 if base <= _EPS else tuned / base
    return max(base, _EPS) / max(tuned, _EPS)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) of two representations (items × features) of one item set.

    Feature-space form on centered features: ||YᵀX||²_F / (||XᵀX||_F ||YᵀY||_F), in float64 so
    that a representation compared with itself gives 1.0. No variance at all shares nothing: 0.0.
    """
    x = x.detach().cpu().double()
    y = y.detach().cpu().double()
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    norms = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    if norms <= 0:
        return 0.0
    return float(torch.linalg.matrix_norm(y.T @ x) ** 2 / norms)


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
    if config.kind not in _KINDS:
        raise UsageError(f"Unknown base-task kind '{config.kind}'; use one of {', '.join(_KINDS)}.")
    return _KINDS[config.kind](config, model_source, tokenizer, max_length, trust_remote_code,
                               split, seed)


# Reading base-task data -------------------------------------------------------------------------


def _is_table(path: str) -> bool:
    return path.lower().endswith(_TABLE_SUFFIXES)


def _read_table(path: str) -> pd.DataFrame:
    """A table of base-task examples, read as the target data is (autoft.data.read_frame)."""
    _require_file(path)
    try:
        frame = read_frame(Path(path))
    except (ValueError, OSError) as error:
        suffix = Path(path).suffix.lower()
        raise UsageError(
            f"{path} could not be read as {suffix[1:]} ({error}); fix the file."
        ) from None
    if frame.empty:
        raise UsageError(f"{path} has no rows; give a file with base-task examples.")
    return frame


def _read_lines(path: str) -> list[str]:
    """Non-empty lines of a text file; UTF-8, or Latin-1 for older corpora such as lee.cor."""
    _require_file(path)
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise UsageError(f"{path} is empty; give a file with one base-task text per line.")
    return lines


def _require_file(path: str) -> None:
    if not Path(path).is_file():
        raise UsageError(f"Base-task file {path} does not exist; check base.data.")


def _column(frame: pd.DataFrame, path: str, column: str | None, setting: str) -> list:
    if column not in frame.columns:
        have = ", ".join(map(str, frame.columns))
        raise UsageError(
            f"{path} has no column '{column}' (it has {have}); name one of those with "
            f"--base-{setting.replace('_', '-')} (base.{setting} in a study file)."
        )
    return frame[column].tolist()


def _read_texts(config: BaseTaskConfig) -> list[str]:
    """Every text of the file: one per line, or the `text_column` of a table."""
    if not _is_table(config.data):
        return _read_lines(config.data)
    frame = _read_table(config.data)
    return [str(text) for text in _column(frame, config.data, config.text_column, "text_column")]


def preservation_texts(config: BaseTaskConfig, split: BaseSplit | None) -> list[str]:
    """The texts the preservation loss reads (may be none): base.preserve_data, or else the base
    data's texts that no check scores and the audit does not hold back. Items (rows, lines,
    pairs) are the study's split units in file order; free are those neither the search's checks
    (its first `max_examples`) nor the audit read, minus any text a read item holds too (a pair
    shares a text with a scored pair). Without a split yet, nothing but the file is free."""
    if config.preserve_data:
        return _read_preserve_data(config)
    if split is None:
        return []
    items = _text_items(config)
    parts = split.parts(config.max_examples, config.check_examples)
    read = set(parts["search"]) | set(parts["audit"]) | set(split.audit)
    scored = {text for i in read for text in items[i]}
    free = (text for i, item in enumerate(items) if i not in read for text in item)
    return [text for text in dict.fromkeys(free) if text not in scored]


def _read_preserve_data(config: BaseTaskConfig) -> list[str]:
    path = Path(config.preserve_data)
    if not path.is_file() or not path.read_bytes().strip():
        state = "is empty" if path.is_file() else "does not exist"
        raise UsageError(
            f"Preservation file {path} {state}; point base.preserve_data (--base-preserve-data) "
            f"at unlabelled text, one text a line, or a table with a '{config.text_column}' column."
        )
    return _read_texts(dataclasses.replace(config, data=str(path)))


def _text_items(config: BaseTaskConfig) -> list[tuple[str, ...]]:
    """The base data's items as the checks count them, each with its texts (one, or a pair)."""
    if not _is_table(config.data):
        return [(line,) for line in _read_lines(config.data)]
    frame = _read_table(config.data)
    columns = [config.text_column, config.text_pair_column if config.kind == "similarity" else None]
    return list(zip(*(map(str, frame[c]) for c in columns if c in frame.columns), strict=True))


def _part(quick: bool) -> str:
    """The part of the base data a score reads: the quick slice or the whole searched part."""
    return "quick" if quick else "search"


def _pick(items: list, rows: list[int]) -> list:
    return [items[i] for i in rows]


def _tokenize(
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


def _takes_images(processor) -> bool:
    """Whether the model reads images: its processor makes pixel values, not token ids."""
    return "pixel_values" in getattr(processor, "model_input_names", ())


def _batches(processor, items: list, max_length: int, pairs: list[str] | None = None,
             config=None) -> list:
    """Fixed batches of base-task items: texts tokenized (`_tokenize`), or images turned into
    pixel values in the colour mode of the model whose `config` is given."""
    if not _takes_images(processor):
        return _tokenize(processor, items, max_length, pairs=pairs)
    mode = colour_mode(config)
    return [processed(processor, items[start : start + BATCH_SIZE], mode)
            for start in range(0, len(items), BATCH_SIZE)]


# Models -----------------------------------------------------------------------------------------


def _load_with_head(auto_class, model_source: str, kind: str, trust_remote_code: bool):
    """The original model with its saved head; a head transformers had to invent knows nothing."""
    suggestion = f"use base-task kind 'drift' or 'similarity' instead of '{kind}'"
    try:
        model, info = auto_class.from_pretrained(
            model_source,
            dtype=torch.float32,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
        )
    except ValueError as error:
        raise UsageError(
            f"{model_source} cannot load as {auto_class.__name__} ({error}); {suggestion}."
        ) from None
    prefix = model.base_model_prefix + "."
    new = sorted(key for key in info["missing_keys"] if not key.startswith(prefix))
    if new:
        raise UsageError(
            f"{model_source} has no saved head for '{kind}' ({', '.join(new[:2])} "
            f"would be newly initialized); {suggestion}."
        )
    return model.eval().requires_grad_(False)


def _copy_encoder(tuned, original) -> None:
    """Put the tuned encoder's weights into the original model, whose own head stays as saved
    (a LoRA trial's merged into plain weights)."""
    weights = plain_state_dict(tuned.base_model)
    wanted = original.base_model.state_dict().keys()
    missing = [key for key in wanted if key not in weights]
    if missing:
        raise ValueError(f"The tuned encoder lacks {missing[:3]}; it is not the base model's kind.")
    original.base_model.load_state_dict({key: weights[key] for key in wanted})


def _trained_encoder(tuned, original) -> dict[str, torch.Tensor]:
    """The encoder parameters `tuned` trains, named as in `original`: a functional call of the
    original model with them reads its own head through the tuned encoder, gradients included."""
    prefix = original.base_model_prefix
    wanted = dict(original.named_parameters())
    trained = {
        f"{prefix}.{name}": parameter
        for name, parameter in tuned.base_model.named_parameters()
        if parameter.requires_grad
    }
    return {name: parameter for name, parameter in trained.items() if name in wanted}


def _head_log_probs(tuned, original, batch: dict, replay: Replay) -> torch.Tensor:
    """The original head's log-probabilities on `batch`, fed by the tuned encoder."""
    original.to(next(tuned.parameters()).device)
    with replay(original):
        logits = functional_call(original, _trained_encoder(tuned, original), (), dict(batch))
    return torch.log_softmax(logits.logits.float(), -1)


def _mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    return (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _pool(hidden: torch.Tensor, batch) -> torch.Tensor:
    """One vector per example: the mean over its real tokens (text), or over positions (images:
    patches, or a feature map's height and width)."""
    if "attention_mask" in batch:
        return _mean_pool(hidden, batch["attention_mask"])
    return hidden.float().flatten(2).mean(-1) if hidden.dim() == 4 else hidden.float().mean(1)


def _pooled(
    encoder, batches: list, device: str, every_layer: bool, memo: PrefixMemo | None = None,
    frozen: int = 0,
) -> list[torch.Tensor]:
    """Mean-pooled hidden states, a row per text: last layer only (the frozen prefix replayed by
    `memo` where there is one), or all (embeddings first)."""
    per_batch = []
    with evaluating(encoder):
        for batch in batches:
            batch = batch.to(device)
            if every_layer:
                layers = encoder(**batch, output_hidden_states=True).hidden_states
            else:
                output = memo.run(encoder, batch, frozen) if memo else encoder(**batch)
                layers = (output.last_hidden_state,)
            per_batch.append([_pool(layer, batch) for layer in layers])
    return [torch.cat(layer) for layer in zip(*per_batch, strict=True)]


def _probe(module, batch) -> dict:
    """The first text of a tokenized batch, on the module's device: enough for autograd to tell
    what depends on what."""
    device = next(module.parameters()).device
    return {key: value[:1].to(device) for key, value in batch.items()}


def _hidden_states_read_trained(encoder, batch, every_layer: bool) -> bool:
    """Whether the hidden states a task reads from `encoder` depend on a trainable parameter."""
    with torch.enable_grad(), evaluating(encoder):
        output = encoder(**_probe(encoder, batch), output_hidden_states=every_layer)
    layers = output.hidden_states if every_layer else (output.last_hidden_state,)
    return any(layer.requires_grad for layer in layers)


def _head_reads_trained(tuned, original, batch) -> bool:
    """Whether the original model's head output depends on the encoder parameters `tuned` trains
    (for a task that copies the tuned encoder into the original model and reads its head)."""
    trained = set(plain_state_dict(tuned.base_model, trained_only=True))
    flags = [(p, p.requires_grad) for p in original.parameters()]
    for parameter in original.parameters():
        parameter.requires_grad_(False)
    for name, parameter in original.base_model.named_parameters():
        parameter.requires_grad_(name in trained)
    try:
        with torch.enable_grad(), evaluating(original):
            return original(**_probe(original, batch)).logits.requires_grad
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


# The four kinds ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pairs:
    """Rated text pairs, each distinct text stored once and pairs as indices into `texts`."""

    texts: list[str]
    left: np.ndarray
    right: np.ndarray
    gold: np.ndarray
    ratings: np.ndarray | None = None  # the Lee layout: documents are the units, not pairs


def _pairs_from_matrix(docs: list[str], ratings: np.ndarray) -> _Pairs:
    left, right = np.triu_indices(len(docs), k=1)
    return _Pairs(docs, left, right, ratings[left, right].astype(float), ratings.astype(float))


def _pairs_from_rows(first: list[str], second: list[str], gold: list) -> _Pairs:
    index = {text: i for i, text in enumerate(dict.fromkeys(first + second))}
    return _Pairs(
        list(index),
        np.array([index[text] for text in first], dtype=int),
        np.array([index[text] for text in second], dtype=int),
        np.asarray(gold, float),
    )


def _read_pairs(config: BaseTaskConfig) -> tuple[str, int, Callable[[list[int]], _Pairs]]:
    """A table of pairs, or documents with a ratings matrix: its unit, how many units it holds,
    and the pair set of any chosen units."""
    if config.ratings:
        docs = _read_texts(config)
        ratings = _read_ratings(config.ratings, len(docs), config.data)

        def take(rows: list[int]) -> _Pairs:
            return _pairs_from_matrix(_pick(docs, rows), ratings[np.ix_(rows, rows)])

        return "documents", len(docs), take
    else:
        if not config.text_pair_column:
            raise UsageError(
                f"Similarity on {config.data} needs pairs: name its columns with "
                f"--base-text-column, --base-text-pair-column and --base-score-column (base.* "
                f"in a study file), or give --base-ratings (a document × document matrix)."
            )
        frame = _read_table(config.data)
        first, second = (
            [str(text) for text in _column(frame, config.data, column, setting)]
            for column, setting in (
                (config.text_column, "text_column"),
                (config.text_pair_column, "text_pair_column"),
            )
        )
        gold = _numbers(
            _column(frame, config.data, config.score_column, "score_column"),
            config.data,
            config.score_column,
        )

        def take(rows: list[int]) -> _Pairs:
            return _pairs_from_rows(_pick(first, rows), _pick(second, rows), gold[rows])

        return "pairs", len(gold), take


def find_pair_columns(config: BaseTaskConfig) -> dict[str, str] | None:
    """A similarity table whose columns no setting names, holding exactly two text columns and
    one numeric column: those as the pair (in the table's order) and the score; else None."""
    if (config.kind != "similarity" or config.ratings or config.text_pair_column
            or not _is_table(config.data)):
        return None
    frame = _read_table(config.data)
    numeric = [
        column for column in frame.columns
        if pd.api.types.is_numeric_dtype(frame[column])
        and not pd.api.types.is_bool_dtype(frame[column])
    ]
    texts = [
        column for column in frame.columns
        if column not in numeric and frame[column].map(lambda value: isinstance(value, str)).all()
    ]
    if len(texts) != 2 or len(numeric) != 1:
        return None
    return {"text_column": str(texts[0]), "text_pair_column": str(texts[1]),
            "score_column": str(numeric[0])}


def _numbers(values: list, path: str, column: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=float)
    except ValueError:
        raise UsageError(
            f"{path} column '{column}' holds values that are not numbers; "
            f"give a numeric similarity score on every row."
        ) from None


def _read_ratings(path: str, documents: int, data: str) -> np.ndarray:
    try:
        ratings = np.loadtxt(path, ndmin=2)
    except (ValueError, OSError) as error:
        raise UsageError(
            f"{path} is not a whitespace-separated matrix of numbers ({error}); "
            f"fix the ratings file."
        ) from None
    if ratings.shape != (documents, documents):
        raise UsageError(
            f"{path} is a {ratings.shape[0]}×{ratings.shape[1]} matrix but {data} has "
            f"{documents} documents; give one row and one column per document."
        )
    return ratings


class SimilarityTask(BaseTask):
    """Cosine of mean-pooled embeddings against human similarity ratings."""

    name = "similarity_spearman"
    measures = "How well the cosine of the encoder's embeddings ranks text pairs as people do."
    higher_is_better = True

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
        unit, total, take = _read_pairs(config)
        parts = self._parts(config, total, unit, split, seed)
        self.pairs_ = {part: take(rows) for part, rows in parts.items()}
        self.batches_ = {
            part: _tokenize(tokenizer, pairs.texts, max_length)
            for part, pairs in self.pairs_.items()
        }
        self.memo_ = PrefixMemo()

    def _unit_embeddings(self, model, device: str, part: str, frozen: int = 0) -> torch.Tensor:
        (embeddings,) = _pooled(
            model.base_model, self.batches_[part], device, False, self.memo_, frozen
        )
        return torch.nn.functional.normalize(embeddings, dim=-1).cpu()

    @torch.no_grad()
    def score(self, model, device: str, quick: bool = False, frozen: int = 0) -> BaseScore:
        pairs = self.pairs_[_part(quick)]
        unit = self._unit_embeddings(model, device, _part(quick), frozen)
        cosine = (unit[pairs.left] * unit[pairs.right]).sum(-1).double().numpy()
        spearman = float(spearmanr(cosine, pairs.gold).statistic)
        pearson = float(pearsonr(cosine, pairs.gold).statistic)
        return BaseScore(
            spearman, {"spearman": spearman, "pearson": pearson, "pairs": float(len(pairs.gold))}
        )

    def reads_trained(self, model) -> bool:
        return _hidden_states_read_trained(model.base_model, self.batches_["quick"][0], False)

    @torch.no_grad()
    def observe(self, model, device: str) -> np.ndarray:
        """The cosine of every two audit texts."""
        unit = self._unit_embeddings(model, device, "audit").double()
        return (unit @ unit.T).numpy()

    def statistic(self, observed: np.ndarray, rows: np.ndarray) -> float:
        """Spearman over the drawn pairs, or over the pairs among the drawn documents."""
        pairs = self.pairs_["audit"]
        if pairs.ratings is None:
            left, right, gold = pairs.left[rows], pairs.right[rows], pairs.gold[rows]
        else:
            left, right = (rows[side] for side in np.triu_indices(len(rows), k=1))
            left, right = left[left != right], right[left != right]
            gold = pairs.ratings[left, right]
        return float(spearmanr(observed[left, right], gold).statistic)

    def reads(self, model, batch: dict, replay: Replay = no_replay) -> torch.Tensor:
        """The mean-pooled embeddings whose cosines the check ranks."""
        encoder = model.base_model
        with replay(encoder):
            hidden = encoder(**batch).last_hidden_state
        return _mean_pool(hidden, batch["attention_mask"])

    def distance(self, tuned: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """1 − cosine, the angle the check's cosines would see change, averaged over texts."""
        return (1 - torch.nn.functional.cosine_similarity(tuned.float(), target, dim=-1)).mean()


class ClassificationTask(BaseTask):
    """Accuracy of the tuned encoder under the base model's own classification head; with
    base.text_pair_column, on text pairs (an NLI or paraphrase head), segment ids included."""

    name = "classification_accuracy"
    measures = "How often the base model's own classifier head, fed by the tuned encoder, is right."
    higher_is_better = True

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
        images = _takes_images(tokenizer)
        if not images and not _is_table(config.data):
            raise UsageError(
                f"Base-task kind 'classification' needs a table with text and label "
                f"columns, not {config.data}; give a CSV, JSONL or Parquet file."
            )
        auto_class = AutoModelForImageClassification if images else (
            AutoModelForSequenceClassification)
        self.original_ = _load_with_head(auto_class, model_source, "classification",
                                         trust_remote_code)
        if images:
            texts, names = read_images(config.data, "base.data", config.label_column)
            pairs = None
        else:
            frame = _read_table(config.data)
            texts = [str(text) for text in
                     _column(frame, config.data, config.text_column, "text_column")]
            pairs = config.text_pair_column and [
                str(text)
                for text in _column(frame, config.data, config.text_pair_column, "text_pair_column")
            ]
            names = _column(frame, config.data, config.label_column, "label_column")
        labels = _label_ids(names, self.original_.config, config.data, config.label_column)
        parts = self._parts(config, len(texts), "examples", split, seed)
        self.labels_ = {part: labels[rows] for part, rows in parts.items()}
        self.batches_ = {
            part: _batches(tokenizer, _pick(texts, rows), max_length,
                           pairs=pairs and _pick(pairs, rows), config=self.original_.config)
            for part, rows in parts.items()
        }
        self.memo_ = PrefixMemo()

    def _correct(self, model, device: str, part: str, frozen: int = 0) -> torch.Tensor:
        original = self.original_.to(device)
        _copy_encoder(model, original)
        predicted = torch.cat(
            [
                self.memo_.run(original, batch.to(device), frozen).logits.argmax(-1).cpu()
                for batch in self.batches_[part]
            ]
        )
        return predicted == self.labels_[part]

    @torch.no_grad()
    def score(self, model, device: str, quick: bool = False, frozen: int = 0) -> BaseScore:
        accuracy = float(self._correct(model, device, _part(quick), frozen).double().mean())
        return BaseScore(accuracy, {"accuracy": accuracy})

    def reads_trained(self, model) -> bool:
        return _head_reads_trained(model, self.original_, self.batches_["quick"][0])

    @torch.no_grad()
    def observe(self, model, device: str) -> np.ndarray:
        return self._correct(model, device, "audit").numpy()

    def statistic(self, observed: np.ndarray, rows: np.ndarray) -> float:
        return float(observed[rows].mean())

    def reads(self, model, batch: dict, replay: Replay = no_replay) -> torch.Tensor:
        """The original head's class log-probabilities, fed by the tuned encoder."""
        return _head_log_probs(model, self.original_, batch, replay)

    def distance(self, tuned: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """KL(untouched ‖ tuned) of the class distributions, averaged over texts."""
        return torch.nn.functional.kl_div(tuned, target, log_target=True, reduction="batchmean")


def _label_ids(labels: list, model_config, path: str, column: str) -> torch.Tensor:
    """Gold labels as the original head's class ids: names through its label2id, or ids as given."""
    label2id = {str(name): int(index) for name, index in model_config.label2id.items()}
    ids = []
    for label in labels:
        index = label2id.get(str(label), _int_or_none(label))
        if index is None or not 0 <= index < model_config.num_labels:
            raise UsageError(
                f"{path} column '{column}': label '{label}' is not one of the base "
                f"model's labels ({', '.join(label2id)}); use those names or ids "
                f"0..{model_config.num_labels - 1}."
            )
        ids.append(index)
    return torch.tensor(ids)


def _int_or_none(label) -> int | None:
    try:
        return int(str(label))
    except ValueError:
        return None


class MaskedLMTask(BaseTask):
    """Masked-LM loss of the tuned encoder under the base model's own masked-LM head."""

    name = "masked_lm_loss"
    measures = "How well the base model's masked-LM head, fed by the tuned encoder, fills blanks."
    higher_is_better = False

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
        if tokenizer.mask_token_id is None:
            raise UsageError(
                f"The tokenizer of {model_source} has no mask token; use base-task "
                f"kind 'drift' or 'similarity' instead of 'masked_lm'."
            )
        self.original_ = _load_with_head(
            AutoModelForMaskedLM, model_source, "masked_lm", trust_remote_code
        )
        self.mask_token_id_ = tokenizer.mask_token_id
        texts = _read_texts(config)
        parts = self._parts(config, len(texts), "examples", split, seed)
        self.batches_ = {
            part: _mask(
                _tokenize(
                    tokenizer, _pick(texts, rows), max_length, return_special_tokens_mask=True
                ),
                tokenizer.mask_token_id,
            )
            for part, rows in parts.items()
        }
        self.memo_ = PrefixMemo()

    def _losses(self, model, device: str, part: str, frozen: int = 0) -> np.ndarray:
        """Per text: the summed cross-entropy over its masked tokens, and how many there are."""
        original = self.original_.to(device)
        _copy_encoder(model, original)
        rows = []
        for batch, labels in self.batches_[part]:
            logits = self.memo_.run(original, batch.to(device), frozen).logits.float()
            labels = labels.to(device)
            losses = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), labels, reduction="none"
            ).sum(1)
            rows.append(torch.stack([losses, (labels != -100).sum(1).float()], 1).cpu())
        return torch.cat(rows).double().numpy()

    @torch.no_grad()
    def score(self, model, device: str, quick: bool = False, frozen: int = 0) -> BaseScore:
        total, masked = self._losses(model, device, _part(quick), frozen).sum(0)
        masked = int(masked)
        loss = float(total) / max(masked, 1)
        perplexity = math.exp(loss) if loss < 700 else math.inf
        return BaseScore(
            loss, {"loss": loss, "perplexity": perplexity, "masked_tokens": float(masked)}
        )

    def reads_trained(self, model) -> bool:
        batch, _labels = self.batches_["quick"][0]
        return _head_reads_trained(model, self.original_, batch)

    def preservation_batches(self, tokenizer, texts: list[str], max_length: int, size: int) -> list:
        """Masked as the check's batches are: the same 15% of real tokens every time."""
        batches = _tokenize(tokenizer, texts, max_length, size, return_special_tokens_mask=True)
        return [batch for batch, _labels in _mask(batches, self.mask_token_id_)]

    def reads(self, model, batch: dict, replay: Replay = no_replay) -> torch.Tensor:
        """The original masked-LM head's log-probabilities at the masked positions."""
        log_probs = _head_log_probs(model, self.original_, batch, replay)
        return log_probs[batch["input_ids"] == self.mask_token_id_]

    @torch.no_grad()
    def target(self, model, batch: dict) -> torch.Tensor:
        """Only the untouched head's likeliest tokens per blank (a whole vocabulary per masked
        token would take gigabytes): (blanks, 2, k) of log-probabilities and token ids."""
        log_probs = self.reads(model, batch)
        top = log_probs.topk(min(TOP_LOG_PROBS, log_probs.shape[-1]), dim=-1)
        return torch.stack([top.values, top.indices.float()], dim=1)

    def distance(self, tuned: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """KL(untouched ‖ tuned) on the untouched head's likeliest tokens, mean over blanks."""
        if not len(target):
            return tuned.new_zeros(())
        log_p, ids = target[:, 0], target[:, 1].long()
        return (log_p.exp() * (log_p - tuned.float().gather(-1, ids))).sum(-1).mean()
    @torch.no_grad()
    def observe(self, model, device: str) -> np.ndarray:
        return self._losses(model, device, "audit")

    def statistic(self, observed: np.ndarray, rows: np.ndarray) -> float:
        total, masked = observed[rows].sum(0)
        return float(total / max(masked, 1.0))


def _mask(batches: list, mask_token_id: int) -> list[tuple]:
    """Replace a fixed 15% of the real tokens by the mask token (same seed, same positions every
    time); labels hold the original ids there and -100 (ignored) elsewhere."""
    generator = torch.Generator().manual_seed(MASK_SEED)
    masked = []
    for batch in batches:
        ids = batch["input_ids"]
        real = (batch.pop("special_tokens_mask") == 0) & (batch["attention_mask"] == 1)
        chosen = (torch.rand(ids.shape, generator=generator) < MASK_FRACTION) & real
        batch["input_ids"] = torch.where(chosen, mask_token_id, ids)
        masked.append((batch, torch.where(chosen, ids, -100)))
    return masked


class DriftTask(BaseTask):
    """Linear CKA between the base model's and the tuned encoder's representations, per layer."""

    name = "drift_cka"
    measures = "How close the tuned encoder's representations of base-task texts stay to the base."
    higher_is_better = True
    replays_prefix = False

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
        self._load_base = partial(
            AutoModel.from_pretrained, model_source, dtype=torch.float32,
            trust_remote_code=trust_remote_code,
        )
        self._base = self._load_base()
        if _takes_images(tokenizer):
            texts = read_images(config.data, "base.data", None)[0]
        else:
            texts = _read_texts(config)
        parts = self._parts(config, len(texts), "examples", split, seed)
        self.batches_ = {
            part: _batches(tokenizer, _pick(texts, rows), max_length, config=self._base.config)
            for part, rows in parts.items()
        }
        self.reference_: dict[str, list[torch.Tensor]] = {}

    @torch.no_grad()
    def score(self, model, device: str, quick: bool = False, frozen: int = 0) -> BaseScore:
        """Every layer is compared, the frozen ones too, so the model runs whole."""
        reference = self._reference(_part(quick), device)
        tuned = _pooled(model.base_model, self.batches_[_part(quick)], device, every_layer=True)
        details = {
            f"cka_layer_{i}": linear_cka(base, mine)
            for i, (base, mine) in enumerate(zip(reference, tuned, strict=True))
        }
        return BaseScore(details[f"cka_layer_{len(tuned) - 1}"], details)

    def reads_trained(self, model) -> bool:
        return _hidden_states_read_trained(model.base_model, self.batches_["quick"][0], True)

    def reads(self, model, batch: dict, replay: Replay = no_replay) -> torch.Tensor:
        """Every layer's mean-pooled states (texts × layers × hidden), the model run whole: the
        check compares every layer."""
        layers = model.base_model(**batch, output_hidden_states=True).hidden_states
        return torch.stack([_pool(layer, batch) for layer in layers], 1)

    def distance(self, tuned: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Squared distance relative to the untouched state's size, summed over layers (frozen
        ones add nothing) and averaged over texts."""
        gap = (tuned.float() - target).pow(2).sum(-1) / target.pow(2).sum(-1).clamp(min=_EPS)
        return gap.sum(-1).mean()

    def _compute_reference(self, device: str) -> None:
        """The base model's representations of both slices, once; the base model is then freed."""
        base = self._base.to(device)
        self.reference_ = {
            quick: [layer.cpu() for layer in _pooled(base, batches, device, True)]
            for quick, batches in self.batches_.items()
        }
        self._base = None
    @torch.no_grad()
    def observe(self, model, device: str) -> torch.Tensor:
        """The last layer's representation of each audit text."""
        self._reference("audit", device)
        return _pooled(model.base_model, self.batches_["audit"], device, every_layer=True)[-1]

    def statistic(self, observed: torch.Tensor, rows: np.ndarray) -> float:
        rows = torch.as_tensor(rows)
        return linear_cka(self.reference_["audit"][-1][rows], observed.cpu()[rows])

    def _reference(self, part: str, device: str) -> list[torch.Tensor]:
        """The base model's representations of a part, once: the searched parts together, the
        audit part only when audited (no check reads it); the base model is then freed, and
        loaded again in the rare case the other kind is asked for later."""
        if part not in self.reference_:
            base = (self._base or self._load_base()).eval().to(device)
            parts = ("audit",) if part == "audit" else ("search", "quick")
            self.reference_ |= {
                name: [layer.cpu() for layer in _pooled(base, self.batches_[name], device, True)]
                for name in parts
            }
            self._base = None
        return self.reference_[part]


_KINDS = {
    "similarity": SimilarityTask,
    "classification": ClassificationTask,
    "masked_lm": MaskedLMTask,
    "drift": DriftTask,
}
