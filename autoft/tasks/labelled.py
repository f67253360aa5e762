"""What the kinds that read one label per input share, whatever the inputs are (texts, images):
the read flow (train, then validation read or split off it, each capped), with hooks for what a
label is, how it is checked and how validation is split off, and predictions read from the
logits alone.
"""

from __future__ import annotations

from abc import abstractmethod
from collections import Counter
from pathlib import Path
from typing import ClassVar

import torch
from sklearn.model_selection import train_test_split

from autoft.tasks.base import DataSettings, Rows, Task


def subsample(inputs: list, labels: list, limit: int | None, seed: int, stratify: bool):
    """Keep at most `limit` rows; stratified where asked and possible, so the class mix stays."""
    if limit is None or len(labels) <= limit:
        return inputs, labels
    counts = Counter(labels) if stratify else {}
    by = labels if counts and min(counts.values()) >= 2 and limit >= len(counts) else None
    kept_inputs, _, kept_labels, _ = train_test_split(
        inputs, labels, train_size=limit, stratify=by, random_state=seed
    )
    return kept_inputs, kept_labels


class LabelledTask(Task):
    """A task whose data is (input, label) rows in a train file and an optional validation one;
    subclasses say how a file's inputs are read and what a label is."""

    stratified: ClassVar[bool]  # whether splits and subsamples keep the label mix

    @abstractmethod
    def _read_split(self, source: str, settings: DataSettings, field_name: str, split: str):
        """(inputs, labels) of one file, its labels parsed; `field_name` names the setting it
        came from (for errors), `split` the part of a saved `datasets` folder to read."""

    @abstractmethod
    def parse_labels(self, values: list, settings: DataSettings, where: str, source: str) -> list:
        """The label column's values as this task's labels; a bad one is a UsageError naming
        its row."""

    @abstractmethod
    def check_train_labels(self, labels: list, settings: DataSettings) -> None:
        """Refuse training labels the task cannot learn from (one class, one number)."""

    @abstractmethod
    def check_validation_labels(self, labels: list, train_labels: list,
                                settings: DataSettings) -> None:
        """Refuse validation labels the trained head cannot output."""

    @abstractmethod
    def split_off_validation(self, inputs: list, labels: list, settings: DataSettings):
        """(train inputs, validation inputs, train labels, validation labels, how) out of
        train; `how` is words for the note (', stratified')."""

    @abstractmethod
    def encode_labels(self, labels: list, label_names: list[str]) -> list:
        """Labels as the model's loss reads them (class indices, floats; a tag index per word,
        which token classification's encode puts on each word's first sub-token)."""

    @abstractmethod
    def predictions(self, logits: torch.Tensor) -> list:
        """What the model predicts for each row of `logits` (a class index, a number)."""

    def batch_predictions(self, logits: torch.Tensor, split, indices: list[int]) -> list:
        """`predictions` of the logits: a label's prediction needs nothing else of the batch."""
        return self.predictions(logits)

    def subsample_rows(self, inputs: list, labels: list, limit: int | None, seed: int):
        """At most `limit` rows (subsample, stratified where the kind is)."""
        return subsample(inputs, labels, limit, seed, self.stratified)

    def read(self, settings: DataSettings) -> Rows:
        notes: list[str] = []
        train_inputs, train_labels = self._read_split(settings.train, settings, "train", "train")
        self.check_train_labels(train_labels, settings)
        if settings.validation:
            val_inputs, val_labels = self._read_split(settings.validation, settings,
                                                      "validation", "validation")
            self.check_validation_labels(val_labels, train_labels, settings)
        else:
            train_inputs, val_inputs, train_labels, val_labels, how = self.split_off_validation(
                train_inputs, train_labels, settings)
        train_inputs, train_labels = self.subsample_rows(
            train_inputs, train_labels, settings.max_train_samples, settings.seed)
        val_inputs, val_labels = self.subsample_rows(
            val_inputs, val_labels, settings.max_val_samples, settings.seed)
        if not settings.validation:
            capped = f", at most {settings.max_val_samples}" if settings.max_val_samples else ""
            notes.append(
                f"validation: {len(val_labels)} rows held out of {Path(settings.train).name}"
                f"{how} ({settings.val_fraction:.0%}{capped}), since no --validation was given"
            )
        return Rows(train_inputs, train_labels, val_inputs, val_labels, notes)
