"""The Task interface: everything one kind of fine-tuning task does its own way (reading and
checking the data, the model class and its processor, batches, loss and metrics, what the prefix
cache stores, the base-task checks it supports, what export saves). Study, workers, guard,
pruning, report and export call a Task and know no kind.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from autoft.config import DataSettings

MAXIMIZE, MINIMIZE = "maximize", "minimize"
EVAL_BATCH_SIZE = 128


@dataclass(frozen=True)
class Rows:
    """The target data as read and checked, before the processor: inputs and labels of each
    split (inputs are whatever the task reads: texts, text pairs, image paths), and notes on
    the choices made (said on screen)."""

    train_inputs: list
    train_labels: list
    val_inputs: list
    val_labels: list
    notes: list[str]


@dataclass(frozen=True)
class Metric:
    """A target metric: its name as the user writes it, and whether the search maximizes or
    minimizes it (the study's direction, which the pruner and every 'best' follow)."""

    name: str
    direction: str  # MAXIMIZE or MINIMIZE


class Task(ABC):
    """One kind of task. Subclasses set the class attributes and implement the abstract methods;
    the defaults suit tasks whose examples have a length (text)."""

    name: ClassVar[str]  # 'text-classification': the value of `task:` and --task
    metrics: ClassVar[tuple[Metric, ...]]  # the first is the default unless choose_metric says
    inputs: ClassVar[str]  # what its examples are: text or image (the base checks it supports)
    # the models it may tune: encoder (BERT, an image model), decoder (GPT-2, Llama); the base
    # checks it supports read one of them (forgetting.kinds_for)
    models: ClassVar[tuple[str, ...]] = ("encoder", "decoder")
    cache_layout: ClassVar[str]  # 'per_token' (unpadded rows + offsets) or 'fixed' (one shape)
    split_class: ClassVar[type]  # a dataclass of plain lists: prepared/ keeps it as JSON
    auto_class: ClassVar[str]  # the transformers class that loads the exported model
    tunes_on_validation: ClassVar[bool] = False  # whether export asks tuned_on_validation
    reads_label_columns: ClassVar[bool] = False  # whether it takes --label-columns (0/1 each)
    # search parameters the kind holds, each with its value and why (said on screen)
    fixed_params: ClassVar[dict[str, tuple[float, str]]] = {}

    # reading and checking the data

    @classmethod
    def detect(cls, settings: DataSettings, model: str) -> str | None:
        """Why the training data plainly holds this kind of task, in words for the screen ("the
        label column 'score' holds 812 distinct numbers"); None when it does not say so.
        `model` is the model's folder or hub name ('' when unknown), for a kind the model says
        (a causal LM given texts without labels). detect_task asks each kind in turn; it must
        not fail on data of another kind."""
        return None

    @abstractmethod
    def read(self, settings: DataSettings) -> Rows:
        """Read train (and validation, or split it off train), checked: a bad row is a
        UsageError naming the file, the row and the fix."""

    # the model

    @abstractmethod
    def load_model(self, source: str, label_names: list[str], trust_remote_code: bool):
        """The pretrained model with a new head for this task, and its processor (tokenizer or
        image processor); a model that cannot do this task is a UsageError."""

    def start_head(self, model, data) -> None:
        """Set the new head's starting point from the training data (data.TargetData), after its
        random initialization; by default it starts as initialized."""
        return None

    @abstractmethod
    def load_processor(self, source: str, trust_remote_code: bool):
        """The processor alone (workers' base-task checks need it, not the model)."""

    @abstractmethod
    def label_names(self, rows: Rows, settings: DataSettings) -> list[str]:
        """The names of the head's outputs (classes; the label column for one regression output)."""

    # encoding and batches

    @abstractmethod
    def encode(self, rows: Rows, processor, model_config, settings: DataSettings):
        """Everything trials share about the target data (data.TargetData), computed once; the
        chosen metric and other choices are appended to its notes."""

    @abstractmethod
    def collate(self, split, indices: list[int], pad_id: int, device: torch.device) -> dict:
        """The model's inputs for examples `indices` of `split`, with `labels`, on `device`."""

    @abstractmethod
    def sizes(self, split) -> list[int]:
        """Rows each example's hidden state takes (text: its tokens; fixed shapes: 1); the
        batches group by it and the prefix cache lays its file out by it."""

    @abstractmethod
    def digest_inputs(self, split, digest) -> None:
        """Feed `digest` (a hashlib object) every input of `split` the model's hidden states
        depend on: part of the prefix cache's key."""

    def train_batches(self, split, batch_size: int, generator: torch.Generator) -> list[list[int]]:
        """One epoch's batches of indices, shuffled by `generator`."""
        order = torch.randperm(len(split), generator=generator).tolist()
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    def eval_batches(self, split, pad_id: int, device: torch.device
                     ) -> Iterator[tuple[list[int], dict]]:
        """(indices, inputs without labels) of batches for a pass without training, smallest
        examples first, so each batch pads little."""
        sizes = self.sizes(split)
        order = sorted(range(len(split)), key=lambda i: sizes[i])
        for start in range(0, len(order), EVAL_BATCH_SIZE):
            indices = order[start : start + EVAL_BATCH_SIZE]
            batch = self.collate(split, indices, pad_id, device)
            batch.pop("labels")
            yield indices, batch

    def cache_refusal(self, split) -> str | None:
        """Why the prefix cache cannot serve training on `split` (its inputs change between
        epochs: augmentation), in words for the screen; None when it can."""
        return None

    # scoring

    @abstractmethod
    def batch_predictions(self, logits: torch.Tensor, split, indices: list[int]) -> list:
        """The prediction for each example `indices` of `split` from the logits of its eval
        batch (a class index, a number; a causal LM's loss against its own inputs)."""

    @abstractmethod
    def score(self, metric: str, labels: list, predictions: list) -> float:
        """The value of `metric` for `predictions` against `labels`."""

    def decisions(self, metric: str, labels: list, predictions: list) -> list:
        """The predictions as `metric` scores them (multi-label: 0/1 at the thresholds it tunes
        on these rows), for score_details; by default the predictions themselves."""
        return predictions

    def score_details(self, labels: list, predictions: list, label_names: list[str]) -> dict:
        """Precision and recall beside the metric, overall and per label/class/entity type:
        {"precision": p, "recall": r, "per_label": {name: {"precision": .., "recall": ..,
        "f1": .., "support": n}}}; {} for a kind without classes (regression). `predictions`
        are `decisions`'."""
        return {}

    def scores_over(self, metric: str, labels: list, predictions: list,
                    draws: np.ndarray) -> np.ndarray:
        """`score` over the rows each row of `draws` picks (repeats allowed): the bootstrap
        behind an evaluation's standard error."""
        labels, predictions = np.asarray(labels), np.asarray(predictions)
        return np.array([self.score(metric, labels[draw], predictions[draw]) for draw in draws])

    def choose_metric(self, settings: DataSettings, labels: list) -> tuple[str, str | None]:
        """The metric the search optimizes, and a note saying why when it was chosen here."""
        if settings.metric != "auto":
            return settings.metric, None
        return self.metrics[0].name, None

    @classmethod
    def metric(cls, name: str) -> Metric:
        """The Metric called `name` (config validation checked that it is one of this task's)."""
        return next(metric for metric in cls.metrics if metric.name == name)

    # export

    def save_processor(self, processor, folder: Path) -> None:
        """Save what turns raw inputs into model inputs beside the exported model."""
        processor.save_pretrained(folder)

    def tuned_on_validation(self, metric: str, labels: list, predictions: list,
                            label_names: list[str]) -> dict:
        """What the exported model needs, learned from its validation predictions, to predict
        as it scored (multi-label: the decision thresholds): export writes it into config.json.
        Asked only of a kind that `tunes_on_validation`."""
        return {}

    def tuned_lines(self, tuned: dict, label_names: list[str]) -> list[str]:
        """Lines the exported model's card adds about what `tuned_on_validation` gave."""
        return []

    def card_lines(self, label_names: list[str]) -> list[str]:
        """Lines the exported model's card adds about what the head outputs."""
        return [f"- Labels: {', '.join(label_names)}"]


class Preserving(ABC):
    """A kind with the preservation loss (base-side texts): its inputs are texts, on which the
    loss falls back when the base data has none to spare (preserve.texts_to_preserve)."""

    @abstractmethod
    def input_texts(self, split, processor, indices: list[int]) -> list[str]:
        """The text of each of the examples `indices` of `split` (a pair's first text), for the
        preservation loss on the task's own inputs."""
