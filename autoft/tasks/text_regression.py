"""text-regression: one number per text (or text pair), one output trained with MSE; a random
validation split; Spearman (default) or Pearson correlation, higher is better, or RMSE, lower is
better. Detected when the label column holds numbers with many distinct values or fractions.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy.stats import ConstantInputWarning, pearsonr, spearmanr
from sklearn.metrics import root_mean_squared_error
from sklearn.model_selection import train_test_split
from torch import nn

from autoft.data import column, is_missing, read_table, row_name
from autoft.errors import UsageError
from autoft.model import split_parameters
from autoft.tasks.base import MAXIMIZE, MINIMIZE, DataSettings, Metric, Rows
from autoft.tasks.text import TextTask

# Integer labels with at most this many distinct values are classes, not amounts.
MAX_CLASS_VALUES = 20
# The largest label whose squared error float32 holds (about 9e18): a larger one makes the MSE
# loss infinite in the first step.
MAX_LABEL = math.sqrt(np.finfo(np.float32).max) / 2


def as_number(value) -> float | None:
    """`value` as a number, 'nan' and 'inf' included, or None when it is not one (a gap is
    not, nor is a bool here)."""
    if isinstance(value, bool) or is_missing(value):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class TextRegression(TextTask):
    """A number per text or text pair (a rating, a similarity score)."""

    name = "text-regression"
    metrics = (
        Metric("spearman", MAXIMIZE),
        Metric("pearson", MAXIMIZE),
        Metric("rmse", MINIMIZE),
    )
    stratified = False

    @classmethod
    def detect(cls, settings: DataSettings, model: str) -> str | None:
        """Numbers in every row of the label column, more than MAX_CLASS_VALUES distinct ones
        or some with a fraction."""
        try:
            table = read_table(settings.train, settings.where("train"))
            values = column(table, settings.label_column, "", settings.train)
        except UsageError:
            return None  # the reading that follows says what is wrong
        numbers = [as_number(value) for value in values]
        if any(number is None for number in numbers):
            return None
        numbers = [number for number in numbers if math.isfinite(number)]  # parse_labels
        # refuses a 'nan' or 'inf' naming its line; one is no reason to read classes
        distinct = len(set(numbers))
        fractions = any(not number.is_integer() for number in numbers)
        if distinct <= MAX_CLASS_VALUES and not fractions:
            return None
        kind = "numbers with fractions" if fractions else "whole numbers"
        return (f"the label column '{settings.label_column}' holds {distinct} distinct {kind}")

    def parse_labels(self, values: list, settings: DataSettings, where: str, source: str):
        numbers = [as_number(value) for value in values]
        bad = next((i for i, number in enumerate(numbers) if number is None), None)
        if bad is not None and isinstance(values[bad], (list, tuple, np.ndarray)):
            raise UsageError(
                f"{where}: {row_name(source, bad)} of {source} holds a list of labels in column "
                f"'{settings.label_column}', but text-regression takes one number per row; set "
                f"--task multi-label."
            )
        if bad is not None:
            raise UsageError(
                f"{where}: {row_name(source, bad)} of {source} has the label "
                f"{str(values[bad])!r} in column '{settings.label_column}', which is not a "
                f"number; text-regression needs a number in every row: fix or drop that row, "
                f"or set --task text-classification."
            )
        bad = next((i for i, number in enumerate(numbers)
                    if not abs(number) <= MAX_LABEL), None)  # nan, inf or too large
        if bad is not None:
            raise UsageError(
                f"{where}: {row_name(source, bad)} of {source} has the label "
                f"{str(values[bad])!r} in column '{settings.label_column}', "
                + (f"which is beyond the {MAX_LABEL:.0e} whose squared error training can "
                   f"hold; scale that column (say, to other units or its logarithm)."
                   if math.isfinite(numbers[bad]) else
                   "which is not a finite number; give that row its number or drop it.")
            )
        return numbers

    def check_train_labels(self, labels: list, settings: DataSettings) -> None:
        if len(set(labels)) < 2:
            raise UsageError(
                f"{settings.where('train')}: column '{settings.label_column}' of "
                f"{settings.train} holds one value ({labels[0]}) in every row; a regression "
                f"needs labels that vary."
            )

    def check_validation_labels(self, labels: list, train_labels: list,
                                settings: DataSettings) -> None:
        """Any number can be predicted."""

    def split_off_validation(self, inputs: list, labels: list, settings: DataSettings):
        parts = train_test_split(inputs, labels, test_size=settings.val_fraction,
                                 random_state=settings.seed)
        return (*parts, ", at random")

    def label_names(self, rows: Rows, settings: DataSettings) -> list[str]:
        return [settings.label_column]

    def encode_labels(self, labels: list, label_names: list[str]) -> list[float]:
        return [float(label) for label in labels]

    def start_head(self, model, data) -> None:
        """The output starts at the training labels' mean (its bias; the weights stay small and
        random): from zero, a trial spent its first steps learning the mean of ratings from 0 to
        10 instead of how pairs differ."""
        head = set(split_parameters(model).head)
        outputs = [module for name, module in model.named_modules()
                   if isinstance(module, nn.Linear) and module.out_features == 1
                   and f"{name}.bias" in head]
        if outputs:
            with torch.no_grad():
                outputs[-1].bias.fill_(float(np.mean(data.train.labels)))

    def head_settings(self) -> dict:
        return {"problem_type": "regression"}

    def predictions(self, logits) -> list[float]:
        return logits.float().squeeze(-1).tolist()

    def score(self, metric: str, labels: list, predictions: list) -> float:
        """The metric; a correlation with predictions that do not vary (an untrained head can
        give one value) is 0, not NaN, so the trial gets a score."""
        if metric == "rmse":  # scikit-learn refuses a NaN that a broken model predicts
            finite = np.isfinite(predictions).all()
            return float(root_mean_squared_error(labels, predictions)) if finite else math.nan
        correlate = spearmanr if metric == "spearman" else pearsonr
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConstantInputWarning)
            value = float(correlate(labels, predictions)[0])
        return value if math.isfinite(value) else 0.0

    def card_lines(self, label_names: list[str]) -> list[str]:
        return [f"- Output: one number, the '{label_names[0]}' column (regression)"]
