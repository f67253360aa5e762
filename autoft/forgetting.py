"""Base-task checks: how much of what the pretrained model knew a tuned model still knows.

Owns the `BaseTask` interface, its four kinds (similarity, classification, masked_lm, drift)
and `retention`, the share of the base score a tuned model kept.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import pearsonr, spearmanr
from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

from autoft.cache import PrefixMemo
from autoft.config import BaseTaskConfig
from autoft.data import read_frame
from autoft.errors import UsageError
from autoft.model import evaluating

__all__ = ["BaseScore", "BaseTask", "build_base_task", "linear_cka", "retention"]

BATCH_SIZE = 32
MASK_FRACTION = 0.15
MASK_SEED = 0
_EPS = 1e-6
_TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


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

    @abstractmethod
    def score(self, model, device: str, quick: bool = False, frozen: int = 0) -> BaseScore:
        """Score a tuned *ForSequenceClassification model (encoder: `model.base_model`).

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
) -> BaseTask:
    """Read the base-task data and the original model once; the task then scores any tuned model."""
    if config.kind not in _KINDS:
        raise UsageError(f"Unknown base-task kind '{config.kind}'; use one of {', '.join(_KINDS)}.")
    return _KINDS[config.kind](config, model_source, tokenizer, max_length, trust_remote_code)


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
            f"{path} has no column '{column}' (it has {have}); set base.{setting} to one of those."
        )
    return frame[column].tolist()


def _read_texts(config: BaseTaskConfig) -> list[str]:
    """Every text of the file: one per line, or the `text_column` of a table."""
    if not _is_table(config.data):
        return _read_lines(config.data)
    frame = _read_table(config.data)
    return [str(text) for text in _column(frame, config.data, config.text_column, "text_column")]


def _count(config: BaseTaskConfig, quick: bool) -> int:
    """How many items (the first ones, always the same) a full or a quick score uses."""
    return min(config.check_examples, config.max_examples) if quick else config.max_examples


def _tokenize(
    tokenizer, texts: list[str], max_length: int, pairs: list[str] | None = None, **options
) -> list:
    """Fixed batches padded per batch, kept on the CPU until a score moves them to its device;
    every output the tokenizer makes (segment ids of `pairs` too) reaches the model."""
    return [
        tokenizer(
            texts[start : start + BATCH_SIZE],
            None if pairs is None else pairs[start : start + BATCH_SIZE],
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
            **options,
        )
        for start in range(0, len(texts), BATCH_SIZE)
    ]


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
    return model.eval()


def _copy_encoder(tuned, original) -> None:
    """Put the tuned encoder's weights into the original model, whose own head stays as saved."""
    weights = tuned.base_model.state_dict()
    wanted = original.base_model.state_dict().keys()
    missing = [key for key in wanted if key not in weights]
    if missing:
        raise ValueError(f"The tuned encoder lacks {missing[:3]}; it is not the base model's kind.")
    original.base_model.load_state_dict({key: weights[key] for key in wanted})


def _mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    return (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1.0)


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
            per_batch.append([_mean_pool(layer, batch["attention_mask"]) for layer in layers])
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
    trained = {name for name, p in tuned.base_model.named_parameters() if p.requires_grad}
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


def _pairs_from_matrix(docs: list[str], ratings: np.ndarray) -> _Pairs:
    left, right = np.triu_indices(len(docs), k=1)
    return _Pairs(docs, left, right, ratings[left, right].astype(float))


def _pairs_from_rows(first: list[str], second: list[str], gold: list) -> _Pairs:
    index = {text: i for i, text in enumerate(dict.fromkeys(first + second))}
    return _Pairs(
        list(index),
        np.array([index[text] for text in first], dtype=int),
        np.array([index[text] for text in second], dtype=int),
        np.asarray(gold, float),
    )


def _read_pairs(config: BaseTaskConfig) -> dict[bool, _Pairs]:
    """The full and the quick pair sets: a table of pairs, or documents with a ratings matrix."""
    if config.ratings:
        docs = _read_texts(config)
        ratings = _read_ratings(config.ratings, len(docs), config.data)

        def take(count: int) -> _Pairs:
            return _pairs_from_matrix(docs[:count], ratings[:count, :count])
    else:
        if not config.text_pair_column:
            raise UsageError(
                f"Similarity on {config.data} needs pairs: set base.text_pair_column "
                f"(a table of pairs) or base.ratings (a document × document matrix)."
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

        def take(count: int) -> _Pairs:
            return _pairs_from_rows(first[:count], second[:count], gold[:count])

    return {quick: take(_count(config, quick)) for quick in (False, True)}


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
    ):
        self.pairs_ = _read_pairs(config)
        self.batches_ = {
            quick: _tokenize(tokenizer, pairs.texts, max_length)
            for quick, pairs in self.pairs_.items()
        }
        self.memo_ = PrefixMemo()

    @torch.no_grad()
    def score(self, model, device: str, quick: bool = False, frozen: int = 0) -> BaseScore:
        pairs = self.pairs_[quick]
        (embeddings,) = _pooled(
            model.base_model, self.batches_[quick], device, False, self.memo_, frozen
        )
        unit = torch.nn.functional.normalize(embeddings, dim=-1).cpu()
        cosine = (unit[pairs.left] * unit[pairs.right]).sum(-1).double().numpy()
        spearman = float(spearmanr(cosine, pairs.gold).statistic)
        pearson = float(pearsonr(cosine, pairs.gold).statistic)
        return BaseScore(
            spearman, {"spearman": spearman, "pearson": pearson, "pairs": float(len(pairs.gold))}
        )

    def reads_trained(self, model) -> bool:
        return _hidden_states_read_trained(model.base_model, self.batches_[True][0], False)


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
    ):
        if not _is_table(config.data):
            raise UsageError(
                f"Base-task kind 'classification' needs a table with text and label "
                f"columns, not {config.data}; give a CSV, JSONL or Parquet file."
            )
        self.original_ = _load_with_head(
            AutoModelForSequenceClassification, model_source, "classification", trust_remote_code
        )
        frame = _read_table(config.data).head(config.max_examples)
        texts = [str(text) for text in _column(frame, config.data, config.text_column,
                                                "text_column")]
        pairs = config.text_pair_column and [
            str(text)
            for text in _column(frame, config.data, config.text_pair_column, "text_pair_column")
        ]
        labels = _label_ids(
            _column(frame, config.data, config.label_column, "label_column"),
            self.original_.config,
            config.data,
            config.label_column,
        )
        self.labels_ = {quick: labels[: _count(config, quick)] for quick in (False, True)}
        self.batches_ = {
            quick: _tokenize(
                tokenizer,
                texts[: _count(config, quick)],
                max_length,
                pairs and pairs[: _count(config, quick)],
            )
            for quick in (False, True)
        }
        self.memo_ = PrefixMemo()

    @torch.no_grad()
    def score(self, model, device: str, quick: bool = False, frozen: int = 0) -> BaseScore:
        original = self.original_.to(device)
        _copy_encoder(model, original)
        predicted = torch.cat(
            [
                self.memo_.run(original, batch.to(device), frozen).logits.argmax(-1).cpu()
                for batch in self.batches_[quick]
            ]
        )
        accuracy = float((predicted == self.labels_[quick]).double().mean())
        return BaseScore(accuracy, {"accuracy": accuracy})

    def reads_trained(self, model) -> bool:
        return _head_reads_trained(model, self.original_, self.batches_[True][0])


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
    ):
        if tokenizer.mask_token_id is None:
            raise UsageError(
                f"The tokenizer of {model_source} has no mask token; use base-task "
                f"kind 'drift' or 'similarity' instead of 'masked_lm'."
            )
        self.original_ = _load_with_head(
            AutoModelForMaskedLM, model_source, "masked_lm", trust_remote_code
        )
        texts = _read_texts(config)
        self.batches_ = {
            quick: _mask(
                _tokenize(
                    tokenizer,
                    texts[: _count(config, quick)],
                    max_length,
                    return_special_tokens_mask=True,
                ),
                tokenizer.mask_token_id,
            )
            for quick in (False, True)
        }
        self.memo_ = PrefixMemo()

    @torch.no_grad()
    def score(self, model, device: str, quick: bool = False, frozen: int = 0) -> BaseScore:
        original = self.original_.to(device)
        _copy_encoder(model, original)
        total, masked = 0.0, 0
        for batch, labels in self.batches_[quick]:
            logits = self.memo_.run(original, batch.to(device), frozen).logits.float()
            labels = labels.to(device)
            total += float(
                torch.nn.functional.cross_entropy(
                    logits.view(-1, logits.shape[-1]), labels.view(-1), reduction="sum"
                )
            )
            masked += int((labels != -100).sum())
        loss = total / max(masked, 1)
        perplexity = math.exp(loss) if loss < 700 else math.inf
        return BaseScore(
            loss, {"loss": loss, "perplexity": perplexity, "masked_tokens": float(masked)}
        )

    def reads_trained(self, model) -> bool:
        batch, _labels = self.batches_[True][0]
        return _head_reads_trained(model, self.original_, batch)


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

    def __init__(
        self,
        config: BaseTaskConfig,
        model_source: str,
        tokenizer,
        max_length: int,
        trust_remote_code: bool = False,
    ):
        texts = _read_texts(config)
        self.batches_ = {
            quick: _tokenize(tokenizer, texts[: _count(config, quick)], max_length)
            for quick in (False, True)
        }
        self._base = AutoModel.from_pretrained(
            model_source, dtype=torch.float32, trust_remote_code=trust_remote_code
        ).eval()
        self.reference_: dict[bool, list[torch.Tensor]] = {}

    @torch.no_grad()
    def score(self, model, device: str, quick: bool = False, frozen: int = 0) -> BaseScore:
        """Every layer is compared, the frozen ones too, so the model runs whole."""
        if not self.reference_:
            self._compute_reference(device)
        reference = self.reference_[quick]
        tuned = _pooled(model.base_model, self.batches_[quick], device, every_layer=True)
        details = {
            f"cka_layer_{i}": linear_cka(base, mine)
            for i, (base, mine) in enumerate(zip(reference, tuned, strict=True))
        }
        return BaseScore(details[f"cka_layer_{len(tuned) - 1}"], details)

    def reads_trained(self, model) -> bool:
        return _hidden_states_read_trained(model.base_model, self.batches_[True][0], True)

    def _compute_reference(self, device: str) -> None:
        """The base model's representations of both slices, once; the base model is then freed."""
        base = self._base.to(device)
        self.reference_ = {
            quick: [layer.cpu() for layer in _pooled(base, batches, device, True)]
            for quick, batches in self.batches_.items()
        }
        self._base = None


_KINDS = {
    "similarity": SimilarityTask,
    "classification": ClassificationTask,
    "masked_lm": MaskedLMTask,
    "drift": DriftTask,
}
