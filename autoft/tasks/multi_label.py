"""multi-label: any number of labels per text (or text pair), read as a list column or split on a
separator found in the data; sigmoid outputs trained with binary cross-entropy; a validation
split that keeps every label on both sides; micro-F1 (default) or macro-F1 at decision thresholds
tuned on validation (one global, and a label's own where it has enough rows), which export writes
into the model's config.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch
from torch import nn

from autoft.data import column, is_missing, read_table, row_name
from autoft.errors import UsageError
from autoft.model import split_parameters
from autoft.tasks.base import MAXIMIZE, DataSettings, Metric, Rows
from autoft.tasks.details import DIGITS, precision_recall
from autoft.tasks.text import TextTask, texts_of

SEPARATORS = (";", "|", ",")
# A string column is multi-label when one separator splits at least this share of its rows
# (and at least two rows) into non-empty parts that recur as labels.
SEPARATED_SHARE = 0.1
# The decision thresholds tried on validation: 0.05 to 0.95 by 0.05 (0.5 among them).
THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.05), 2)
DEFAULT_THRESHOLD = 0.5
# A label gets a threshold of its own where validation has at least this many rows with it:
# fewer positives tune it to noise (one row more or less moves its F1 by a tenth or more).
MIN_POSITIVES = 10


def is_list(value) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def find_separator(values: list) -> tuple[str, int] | None:
    """The separator of a column of strings and how many rows it splits: the first of
    SEPARATORS found in enough rows (SEPARATED_SHARE, two at least) whose parts are all
    non-empty and recur (fewer distinct parts than distinct values); None when none is."""
    texts = [str(value) for value in values if not is_missing(value)]
    for separator in SEPARATORS:
        split = [text for text in texts if separator in text]
        if len(split) < max(2, SEPARATED_SHARE * len(texts)):
            continue
        parts = [part.strip() for text in texts for part in text.split(separator)]
        if all(parts) and len(set(parts)) < len(set(texts)):
            return separator, len(split)
    return None


def label_sets(values: list, separator: str | None, settings: DataSettings, where: str,
               source: str) -> list[list[str]]:
    """Each row's labels, sorted and without repeats: a list as it is, a string split on
    `separator` (an empty string or list: no labels); a missing value is refused."""
    rows = []
    for i, value in enumerate(values):
        if is_list(value):
            labels = [str(label).strip() for label in value]
        elif is_missing(value):
            raise UsageError(
                f"{where}: {row_name(source, i)} of {source} has no value in column "
                f"'{settings.label_column}'; write its labels, or [] (an empty string) for none."
            )
        else:
            text = str(value).strip()
            labels = [part.strip() for part in (text.split(separator) if separator else [text])]
            labels = [label for label in labels if label] if text else []
        rows.append(sorted(set(labels)))
    return rows


def label_place(settings: DataSettings) -> str:
    """Where the labels are, for messages: the label column, or the --label-columns."""
    if settings.label_columns:
        return f"columns {', '.join(column_names(settings))}"
    return f"column '{settings.label_column}'"


def column_names(settings: DataSettings) -> list[str]:
    """The --label-columns names."""
    return [name.strip() for name in settings.label_columns.split(",") if name.strip()]


def labels_of_columns(table, settings: DataSettings, where: str, source: str
                      ) -> list[list[str]]:
    """Each row's labels: the --label-columns columns that hold 1 (or true) there; a value
    other than 0 or 1 is refused, naming its row and column."""
    rows: list[list[str]] = [[] for _ in range(len(table))]
    for name in column_names(settings):
        values = column(table, name, f"{where} / {settings.where('label_columns')}", source)
        for i, value in enumerate(values):
            flag = str(value).strip().lower()
            if flag not in ("0", "1", "0.0", "1.0", "true", "false"):
                raise UsageError(
                    f"{where}: {row_name(source, i)} of {source} holds {value!r} in column "
                    f"'{name}', one of --label-columns; each must hold 0 or 1."
                )
            if flag in ("1", "1.0", "true"):
                rows[i].append(name)
    return [sorted(row) for row in rows]


def iterative_split(labels: list[list[str]], fraction: float, seed: int
                    ) -> tuple[list[int], list[int]]:
    """(kept rows, held-out rows) with about `fraction` of the rows held out and every label of
    two rows or more on both sides: iterative stratification (Sechidis et al., 2011). The label
    with the fewest rows left is placed first, each of its rows going to the side that still
    wants that label most (ties: the side that wants most rows, then the seed); each side wants
    its share of a label's rows, and at least one. Rows without labels fill the sides last."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels)).tolist()
    counts = Counter(label for row in labels for label in row)
    wants = [{label: max(1.0, (1 - fraction) * n) for label, n in counts.items()},
             {label: max(1.0, fraction * n) for label, n in counts.items()}]
    rows_wanted = [(1 - fraction) * len(labels), fraction * len(labels)]
    side = [-1] * len(labels)
    rows_of = rows_by_label(labels, order)
    remaining = dict(counts)  # each label's rows not yet placed
    while any(remaining.values()):
        label = min((name for name, n in remaining.items() if n), key=lambda name: (
            remaining[name], name))
        for i in rows_of[label]:
            if side[i] != -1:
                continue
            k = max((0, 1), key=lambda s: (wants[s][label], rows_wanted[s], rng.random()))
            side[i] = k
            rows_wanted[k] -= 1
            for name in labels[i]:
                wants[k][name] -= 1
                remaining[name] -= 1
    for i in order:
        if side[i] == -1:
            k = 0 if rows_wanted[0] >= rows_wanted[1] else 1
            side[i] = k
            rows_wanted[k] -= 1
    fill_empty_sides(labels, side, order)
    return [i for i in range(len(labels)) if side[i] == 0], \
        [i for i in range(len(labels)) if side[i] == 1]


def rows_by_label(labels: list[list[str]], order: list[int]) -> dict[str, list[int]]:
    """The rows of each label, in `order`."""
    rows: dict[str, list[int]] = {}
    for i in order:
        for label in labels[i]:
            rows.setdefault(label, []).append(i)
    return rows


def fill_empty_sides(labels: list[list[str]], side: list[int], order: list[int]) -> None:
    """Where a label of two rows or more ended on one side only (its rows all placed earlier,
    by rarer labels they carry), move one of its rows across: one whose every label keeps a row
    on the side it leaves. A label no such move serves stays where it is."""
    for _, rows in sorted(rows_by_label(labels, order).items()):
        sides = Counter(side[i] for i in rows)
        if len(rows) < 2 or len(sides) == 2:
            continue
        here = side[rows[0]]
        count = Counter(name for i in order if side[i] == here for name in labels[i])
        movable = next((i for i in rows if all(count[name] >= 2 for name in labels[i])), None)
        if movable is not None:
            side[movable] = 1 - here


def multi_hot(labels: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, ...]:
    """True positives, labelled and predicted counts per label (columns) of 0/1 matrices."""
    labels, predicted = labels.astype(bool), predicted.astype(bool)
    return (labels & predicted).sum(0), labels.sum(0), predicted.sum(0)


def f1_of(metric: str, hits: np.ndarray, labelled: np.ndarray, guessed: np.ndarray
          ) -> np.ndarray:
    """micro-F1 (every label's decisions pooled) or macro-F1 (the mean of each label's F1, a
    label never labelled nor predicted left out, as scikit-learn's f1_score does with
    zero_division=0 over present labels) from per-label counts (the last axis);
    F1 = 2 TP / (labelled + predicted)."""
    seen = labelled + guessed
    if metric == "micro_f1":
        total = seen.sum(-1)
        return np.where(total > 0, 2 * hits.sum(-1) / np.maximum(total, 1), 1.0)
    present = seen > 0
    f1 = np.where(present, 2 * hits / np.maximum(seen, 1), 0.0)
    count = present.sum(-1)
    return np.where(count > 0, f1.sum(-1) / np.maximum(count, 1), 1.0)


def f1_at(metric: str, labels: np.ndarray, predicted: np.ndarray) -> float:
    """`f1_of` 0/1 matrices."""
    hits, labelled, guessed = multi_hot(labels, predicted)
    return float(f1_of(metric, hits, labelled, guessed))


def counts_at(truth: np.ndarray, probabilities: np.ndarray, weights: np.ndarray
              ) -> tuple[np.ndarray, ...]:
    """Each draw's (rows of `weights`: how often it drew each row) true positives and predicted
    counts per label at each of THRESHOLDS, [threshold, draw, label], and labelled counts,
    [draw, label]. In float32 the counts are exact (whole numbers far below 2**24) and twice
    as fast."""
    weights, truth = weights.astype(np.float32), truth.astype(np.float32)
    hits, guessed = [], []
    for threshold in THRESHOLDS:
        predicted = (probabilities >= threshold).astype(np.float32)
        hits.append(weights @ (truth * predicted))
        guessed.append(weights @ predicted)
    return (np.stack(hits).astype(float), np.stack(guessed).astype(float),
            (weights @ truth).astype(float))


# THRESHOLDS' indices, nearest DEFAULT_THRESHOLD first: argmax along them picks it among equals
NEAREST_HALF = np.argsort(np.abs(THRESHOLDS - DEFAULT_THRESHOLD), kind="stable")


def nearest_best(scores: np.ndarray) -> np.ndarray:
    """The index into THRESHOLDS of the highest of `scores` [threshold, draw], per draw; the one
    nearest 0.5 among equals."""
    return NEAREST_HALF[scores[NEAREST_HALF].argmax(0)]


def tune_thresholds(metric: str, hits: np.ndarray, guessed: np.ndarray, labelled: np.ndarray,
                    min_positives: int = MIN_POSITIVES
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(global threshold [draw], each label's threshold [draw, label], both indices into
    THRESHOLDS, and the score at them [draw]) from counts_at's counts. First the one threshold
    best for `metric` over every label (nearest 0.5 among equals); then each label with at least
    `min_positives` rows, in turn, gets the threshold that raises `metric` most with the others
    held, kept only where it scores strictly higher: a rarer label stays at the global one, whose
    few rows would tune its own to noise. So the score never falls below the global threshold's,
    nor that below 0.5's."""
    draws = np.arange(hits.shape[1])
    overall = nearest_best(f1_of(metric, hits, labelled[None], guessed))
    chosen = np.repeat(overall[:, None], hits.shape[2], axis=1)
    hit, guess = hits[overall, draws], guessed[overall, draws]  # [draw, label] at the choice
    score = f1_of(metric, hit, labelled, guess)
    for label in np.flatnonzero((labelled >= min_positives).any(0)):
        own = labelled[:, label] >= min_positives
        tried = label_scores(metric, hit, guess, labelled, label, hits[:, :, label],
                             guessed[:, :, label])
        best = nearest_best(tried)
        better = own & (tried[best, draws] > score + 1e-12)
        chosen[better, label] = best[better]
        hit[better, label] = hits[best, draws, label][better]
        guess[better, label] = guessed[best, draws, label][better]
        score = f1_of(metric, hit, labelled, guess)
    return overall, chosen, score


def label_scores(metric: str, hit: np.ndarray, guess: np.ndarray, labelled: np.ndarray,
                 label: int, label_hits: np.ndarray, label_guessed: np.ndarray) -> np.ndarray:
    """`metric` [threshold, draw] with `label`'s counts at each threshold and every other
    label's as they are (`hit`, `guess`: [draw, label]): the others' sums once, not per
    threshold, so tuning every label costs what one pass over the counts does."""
    seen = labelled + guess
    mine = labelled[:, label] + label_guessed  # [threshold, draw]
    if metric == "micro_f1":
        hits_rest = hit.sum(1) - hit[:, label]
        seen_rest = seen.sum(1) - seen[:, label]
        total = seen_rest + mine
        return np.where(total > 0, 2 * (hits_rest + label_hits) / np.maximum(total, 1), 1.0)
    present = seen > 0
    f1 = np.where(present, 2 * hit / np.maximum(seen, 1), 0.0)
    f1_rest = f1.sum(1) - f1[:, label]
    count = present.sum(1) - present[:, label] + (mine > 0)
    own = np.where(mine > 0, 2 * label_hits / np.maximum(mine, 1), 0.0)
    return np.where(count > 0, (f1_rest + own) / np.maximum(count, 1), 1.0)


def tuned_at(metric: str, labels: np.ndarray, probabilities: np.ndarray,
             min_positives: int = MIN_POSITIVES) -> tuple[float, np.ndarray, float]:
    """(global threshold, each label's threshold, score) tuned on these rows (tune_thresholds)."""
    counts = counts_at(labels, probabilities, np.ones((1, len(labels))))
    overall, chosen, score = tune_thresholds(metric, *counts, min_positives)
    return float(THRESHOLDS[overall[0]]), THRESHOLDS[chosen[0]], float(score[0])


def validation_details(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Micro precision and recall, micro- and macro-F1 and subset accuracy (every label of a
    row right) of 0/1 matrices."""
    hits, labelled, predicted_n = multi_hot(labels, predicted)
    return {
        "micro_f1": f1_at("micro_f1", labels, predicted),
        "macro_f1": f1_at("macro_f1", labels, predicted),
        "precision": float(hits.sum() / predicted_n.sum()) if predicted_n.sum() else 0.0,
        "recall": float(hits.sum() / labelled.sum()) if labelled.sum() else 0.0,
        "subset_accuracy": subset_accuracy(labels, predicted),
    }


def subset_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """The share of rows whose every label is right."""
    return float((labels.astype(bool) == predicted.astype(bool)).all(1).mean())


class MultiLabel(TextTask):
    """Texts or text pairs with any number of labels each (tags, emotions, topics)."""

    name = "multi-label"
    metrics = (
        Metric("micro_f1", MAXIMIZE),
        Metric("macro_f1", MAXIMIZE),
    )
    stratified = False  # the kind's own subsample and split keep the labels (iterative_split)
    tunes_on_validation = True
    reads_label_columns = True

    def __init__(self):
        self.separator_: str | None = None  # found in the training data's label column

    @classmethod
    def detect(cls, settings: DataSettings, model: str) -> str | None:
        """0/1 columns named by --label-columns; lists in the label column, or strings a
        separator splits in many rows."""
        if settings.label_columns:
            names = column_names(settings)
            return f"{settings.where('label_columns')} names {len(names)} columns, one per label"
        try:
            table = read_table(settings.train, settings.where("train"))
            values = column(table, settings.label_column, "", settings.train)
        except UsageError:
            return None  # the reading that follows says what is wrong
        where = f"the label column '{settings.label_column}'"
        if values and any(is_list(value) for value in values):
            return f"{where} holds lists of labels"
        if any(not isinstance(value, str) for value in values if not is_missing(value)):
            return None
        found = find_separator(values)
        if found is None:
            return None
        separator, rows = found
        return f"{where} holds labels separated by '{separator}' in {rows} of {len(values)} rows"

    def _read_split(self, source: str, settings: DataSettings, field_name: str, split: str):
        """The separator is found in the training file, and validation is split on it too;
        with --label-columns, a row's labels are the columns holding 1."""
        if settings.label_columns:
            where = settings.where(field_name)
            table = read_table(source, where, split)
            labels = labels_of_columns(table, settings, where, source)
            return texts_of(table, settings, where, source), labels
        if field_name == "train":
            table = read_table(source, settings.where(field_name), split)
            values = column(table, settings.label_column,
                            settings.where(field_name) + " / --label-column", source)
            if not any(is_list(value) for value in values):
                found = find_separator([v for v in values if isinstance(v, str)])
                self.separator_ = found[0] if found else None
        return super()._read_split(source, settings, field_name, split)

    def read(self, settings: DataSettings) -> Rows:
        rows = super().read(settings)
        notes = list(rows.notes)
        if self.separator_:
            notes.insert(0, f"labels: split on '{self.separator_}' in column "
                            f"'{settings.label_column}'")
        return Rows(rows.train_inputs, rows.train_labels, rows.val_inputs, rows.val_labels, notes)

    def parse_labels(self, values: list, settings: DataSettings, where: str, source: str):
        return label_sets(values, self.separator_, settings, where, source)

    def check_train_labels(self, labels: list, settings: DataSettings) -> None:
        names = {label for row in labels for label in row}
        if len(names) < 2:
            raise UsageError(
                f"{settings.where('train')}: {label_place(settings)} of "
                f"{settings.train} hold{'s' * (not settings.label_columns)} {len(names)} "
                f"distinct label"
                f"{'' if len(names) == 1 else 's'}; multi-label needs at least two (lists like "
                f"[\"a\", \"b\"], or names separated by ';', '|' or ',')."
            )

    def check_validation_labels(self, labels: list, train_labels: list,
                                settings: DataSettings) -> None:
        known = {label for row in train_labels for label in row}
        unseen = sorted({label for row in labels for label in row} - known)
        if unseen:
            raise UsageError(
                f"{settings.where('validation')}: label '{unseen[0]}' never occurs in the "
                f"training data; remove it from those rows or add examples of it to train."
            )

    def split_off_validation(self, inputs: list, labels: list, settings: DataSettings):
        counts = Counter(label for row in labels for label in row)
        rare = sorted(label for label, n in counts.items() if n < 2)
        if rare:
            raise UsageError(
                f"{settings.where('train')}: label '{rare[0]}' in {label_place(settings)} of "
                f"{settings.train} occurs in a single row, too few "
                f"to keep it in both training and validation; add rows with it, drop it from "
                f"that row, or give --validation."
            )
        kept, held = iterative_split(labels, settings.val_fraction, settings.seed)
        sides = [{label for i in part for label in labels[i]} for part in (kept, held)]
        one_sided = sorted(sides[0] ^ sides[1])
        if one_sided:
            raise UsageError(
                f"{settings.where('train')}: label '{one_sided[0]}' in {label_place(settings)} "
                f"of {settings.train} could not be kept in both "
                f"training and validation (its rows also carry other rare labels); add rows "
                f"with it, or give --validation."
            )
        return ([inputs[i] for i in kept], [inputs[i] for i in held],
                [labels[i] for i in kept], [labels[i] for i in held],
                ", every label on both sides")

    def subsample_rows(self, inputs: list, labels: list, limit: int | None, seed: int):
        """At most `limit` rows, chosen as a split is, so labels keep their share."""
        if limit is None or len(labels) <= limit:
            return inputs, labels
        _, kept = iterative_split(labels, limit / len(labels), seed)
        kept = kept[:limit]
        return [inputs[i] for i in kept], [labels[i] for i in kept]

    def label_names(self, rows: Rows, settings: DataSettings) -> list[str]:
        return sorted({label for row in rows.train_labels for label in row})

    def encode_labels(self, labels: list, label_names: list[str]) -> list[list[float]]:
        """Multi-hot rows of floats, as binary cross-entropy reads them; a label the head lacks
        (one a training subsample left out) is dropped."""
        index = {name: i for i, name in enumerate(label_names)}
        encoded = []
        for row in labels:
            hot = [0.0] * len(label_names)
            for label in row:
                if label in index:
                    hot[index[label]] = 1.0
            encoded.append(hot)
        return encoded

    def start_head(self, model, data) -> None:
        """Each output starts at its label's share of the training rows (its bias the log-odds;
        the weights stay small and random), as Lin et al. (2017) start a detector's rare
        classes: from zero every label starts at probability 0.5, and the first steps of a
        trial went on pushing most of them down."""
        shares = np.clip(np.mean(data.train.labels, axis=0), 1e-3, 1 - 1e-3)
        head = set(split_parameters(model).head)
        outputs = [module for name, module in model.named_modules()
                   if isinstance(module, nn.Linear) and module.out_features == len(shares)
                   and f"{name}.bias" in head]
        if outputs:
            with torch.no_grad():
                outputs[-1].bias.copy_(torch.from_numpy(np.log(shares / (1 - shares))))

    def head_settings(self) -> dict:
        return {"problem_type": "multi_label_classification"}

    def predictions(self, logits: torch.Tensor) -> list[list[float]]:
        """Each label's probability (the threshold is applied in scoring)."""
        return torch.sigmoid(logits.float()).tolist()

    def score(self, metric: str, labels: list, predictions: list) -> float:
        """The metric at the thresholds tuned on these rows (tune_thresholds): the thresholds
        export saves, so a trial's value is what its exported model scores on validation."""
        labels, predictions = np.asarray(labels, dtype=float), np.asarray(predictions, float)
        if not np.isfinite(predictions).all():
            return math.nan
        return tuned_at(metric, labels, predictions)[2]

    def scores_over(self, metric: str, labels: list, predictions: list,
                    draws: np.ndarray) -> np.ndarray:
        """Every draw at once, the values `score` gives (tested): each draw's counts are its rows'
        counts weighted by how often it drew them, at each threshold, and its thresholds are
        the draw's own. Calling `score` per draw took 0.9 s for 200 draws of 369 rows and 88
        labels, at every evaluation."""
        truth = np.asarray(labels, dtype=float)
        probabilities = np.asarray(predictions, dtype=float)
        if not np.isfinite(probabilities).all():
            return np.full(len(draws), math.nan)
        weights = np.stack([np.bincount(draw, minlength=len(truth)) for draw in draws])
        return tune_thresholds(metric, *counts_at(truth, probabilities, weights))[2]

    def decisions(self, metric: str, labels: list, predictions: list) -> list[list[int]]:
        """Each label's 0/1 decision at the thresholds `score` tunes on these rows."""
        probabilities = np.asarray(predictions, float)
        thresholds = tuned_at(metric, np.asarray(labels, dtype=float), probabilities)[1]
        return (probabilities >= thresholds).astype(int).tolist()

    def score_details(self, labels: list, predictions: list, label_names: list[str]) -> dict:
        """Micro-averaged precision and recall (every label's decisions pooled, as the default
        micro-F1 does), subset accuracy, and each label's precision, recall and F1."""
        labels, predictions = np.asarray(labels, dtype=int), np.asarray(predictions, dtype=int)
        return precision_recall(labels, predictions, label_names, "micro") | {
            "subset_accuracy": round(subset_accuracy(labels, predictions), DIGITS)}

    def tuned_on_validation(self, metric: str, labels: list, predictions: list,
                            label_names: list[str]) -> dict:
        """The decision thresholds (the global one, and one per label: its own where it had
        enough validation rows, else the global one), and what the model scores at them on
        validation."""
        labels, predictions = np.asarray(labels, dtype=float), np.asarray(predictions, float)
        overall, thresholds, _ = tuned_at(metric, labels, predictions)
        details = validation_details(labels, predictions >= thresholds)
        return {"decision_threshold": overall,
                "decision_thresholds": [float(t) for t in thresholds],
                "validation_scores": {name: round(value, DIGITS)
                                      for name, value in details.items()}}

    def tuned_lines(self, tuned: dict, label_names: list[str]) -> list[str]:
        scores, overall = tuned["validation_scores"], tuned["decision_threshold"]
        own = [f"{name} {threshold:.2f}" for name, threshold in
               zip(label_names, tuned.get("decision_thresholds", []), strict=False)
               if threshold != overall]
        return [
            f"- Decision threshold: {overall:.2f} on a label's sigmoid probability, tuned on "
            f"validation (`decision_threshold` in config.json)"
            + (f"; labels with at least {MIN_POSITIVES} validation rows got their own where it "
               f"scored higher: {', '.join(own)} (`decision_thresholds` in config.json, one per "
               f"label in id2label's order: predict a label where its probability reaches its "
               f"threshold)" if own else ""),
            "- At them on validation: " + ", ".join(
                f"{name.replace('_', ' ')} {value:.4f}" for name, value in scores.items()),
        ]

    def card_lines(self, label_names: list[str]) -> list[str]:
        return [f"- Labels (any number per text; sigmoid per label): {', '.join(label_names)}"]
