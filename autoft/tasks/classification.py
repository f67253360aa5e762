"""What the classification kinds share, whatever the inputs are (texts, images): one label per
input out of a few classes, read as names; a stratified validation split; accuracy or macro-F1
(macro-F1 when the classes are unbalanced); the predicted class is the largest logit.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split

from autoft.data import is_missing, row_name
from autoft.errors import UsageError
from autoft.tasks.base import MAXIMIZE, DataSettings, Metric, Rows
from autoft.tasks.details import precision_recall
from autoft.tasks.labelled import LabelledTask
from autoft.tasks.multi_label import find_separator

IMBALANCE_RATIO = 1.5


def check_stratified_split(settings: DataSettings, labels: list[str]) -> None:
    """A stratified split needs every class on both sides; refused, not made another way, since
    a validation set missing classes would score the search on a different task. (Every class has
    two rows by now, so some fraction always works.)"""
    rows, classes = len(labels), len(set(labels))
    held_out = math.ceil(settings.val_fraction * rows)  # as scikit-learn rounds it
    if classes <= held_out <= rows - classes:
        return
    low = math.ceil(classes / rows * 1000) / 1000
    high = math.floor((rows - classes) / rows * 1000) / 1000
    raise UsageError(
        f"{settings.where('train')}: --val-fraction {settings.val_fraction} holds out {held_out} "
        f"of {rows} rows, but a stratified split needs one row of each of the {classes} classes "
        f"on each side; use a --val-fraction from {low} to {high}, or give --validation."
    )


class Classification(LabelledTask):
    """Single-label classification; subclasses say what the inputs are and how they are read."""

    metrics = (
        Metric("accuracy", MAXIMIZE),
        Metric("macro_f1", MAXIMIZE),
    )
    stratified = True

    def parse_labels(self, values: list, settings: DataSettings, where: str, source: str):
        listed = next((i for i, value in enumerate(values)
                       if isinstance(value, (list, tuple, np.ndarray))), None)
        if listed is not None:
            raise UsageError(
                f"{where}: {row_name(source, listed)} of {source} holds a list of labels in "
                f"column '{settings.label_column}', but {self.name} takes one label per row; "
                f"set --task multi-label."
            )
        separated = find_separator(values) if all(
            isinstance(value, str) for value in values) else None
        if separated is not None:
            separator, rows = separated
            example = next(value for value in values if separator in value)
            raise UsageError(
                f"{where}: column '{settings.label_column}' of {source} holds labels separated "
                f"by '{separator}' in {rows} of {len(values)} rows (like '{example}'), but "
                f"{self.name} takes one label per row; set --task multi-label."
            )
        if any(value == "" or is_missing(value) for value in values):
            raise UsageError(
                f"{where}: column '{settings.label_column}' of {source} has empty labels; fill "
                f"or drop those rows."
            )
        return [str(value) for value in values]

    def check_train_labels(self, labels: list, settings: DataSettings) -> None:
        classes = sorted(set(labels))
        if len(classes) < 2:
            raise UsageError(
                f"{settings.where('train')}: column '{settings.label_column}' of "
                f"{settings.train} has only one class ('{classes[0]}'); a classifier needs at "
                f"least two."
            )

    def check_validation_labels(self, labels: list, train_labels: list,
                                settings: DataSettings) -> None:
        unseen = sorted(set(labels) - set(train_labels))
        if unseen:
            raise UsageError(
                f"{settings.where('validation')}: label '{unseen[0]}' never occurs in the "
                f"training data; remove those rows or add examples of it to train."
            )

    def split_off_validation(self, inputs: list, labels: list, settings: DataSettings):
        rare = [label for label, n in Counter(labels).items() if n < 2]
        if rare:
            raise UsageError(
                f"{settings.where('train')}: class '{rare[0]}' has a single example, too few to "
                f"split off validation; add examples or give --validation."
            )
        check_stratified_split(settings, labels)
        parts = train_test_split(inputs, labels, test_size=settings.val_fraction,
                                 stratify=labels, random_state=settings.seed)
        return (*parts, ", stratified")

    def label_names(self, rows: Rows, settings: DataSettings) -> list[str]:
        return sorted(set(rows.train_labels))

    def encode_labels(self, labels: list, label_names: list[str]) -> list[int]:
        index = {name: i for i, name in enumerate(label_names)}
        return [index[label] for label in labels]

    def choose_metric(self, settings: DataSettings, labels: list) -> tuple[str, str | None]:
        """macro-F1 when the classes are unbalanced (accuracy would reward ignoring small ones)."""
        if settings.metric != "auto":
            return settings.metric, None
        counts = Counter(labels)
        ratio = max(counts.values()) / min(counts.values())
        if ratio > IMBALANCE_RATIO:
            return "macro_f1", (
                f"metric: macro_f1, since the largest class is {ratio:.1f}× the "
                f"smallest (accuracy would reward ignoring small classes)"
            )
        return "accuracy", f"metric: accuracy, since the classes are balanced (ratio {ratio:.1f})"

    def predictions(self, logits) -> list[int]:
        return logits.argmax(-1).tolist()

    def score(self, metric: str, labels: list, predictions: list) -> float:
        if metric == "macro_f1":
            return float(f1_score(labels, predictions, average="macro", zero_division=0))
        return float(accuracy_score(labels, predictions))

    def score_details(self, labels: list, predictions: list, label_names: list[str]) -> dict:
        """Macro-averaged precision and recall, whatever the metric: with one label per row,
        micro-averaged ones are both the accuracy; macro ones say which way the classes err."""
        return precision_recall(labels, predictions, label_names, "macro")

    def scores_over(self, metric: str, labels: list, predictions: list,
                    draws: np.ndarray) -> np.ndarray:
        """Every draw at once from its confusion counts, the values `score` gives (tested):
        scikit-learn's f1_score called per draw took 0.5-0.7 s for 200 draws of 500 rows
        (benchmarks/score_noise.py), at every evaluation. As f1_score does, macro-F1 averages the
        classes present in the draw's labels or predictions, F1 = 2 TP / (labelled + predicted)."""
        classes, coded = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
        true, predicted = coded[:len(labels)][draws], coded[len(labels):][draws]
        if metric != "macro_f1":
            return (true == predicted).mean(axis=1)
        size = len(classes)
        offset = np.arange(len(draws))[:, None] * size

        def counts(codes: np.ndarray) -> np.ndarray:
            return np.bincount(codes.ravel(), minlength=len(draws) * size).reshape(-1, size)

        hits = counts((offset + true)[true == predicted])
        seen = counts(offset + true) + counts(offset + predicted)
        present = seen > 0
        return (2 * hits / np.maximum(seen, 1)).sum(axis=1) / present.sum(axis=1)
