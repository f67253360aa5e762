"""Target data: read a table (CSV, JSON Lines, Parquet, a saved `datasets` folder or a hub name),
check its columns and labels, split it stratified, choose metric and max length, and tokenize once.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from autoft.config import StudyConfig
from autoft.errors import UsageError

log = logging.getLogger("autoft")

IMBALANCE_RATIO = 1.5
MAX_LENGTH_PERCENTILE = 98


@dataclass(frozen=True)
class Split:
    """One tokenized split: token ids per example (unpadded), label indices, and the segment ids
    of each token where the tokenizer gives them (BERT-style pairs: 0 for the first text, 1 for
    the second); None where it gives none, or in data prepared before autoft kept them."""

    input_ids: list[list[int]]
    labels: list[int]
    token_type_ids: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class TargetData:
    """What every trial trains and evaluates on, plus the choices made while preparing it."""

    train: Split
    validation: Split
    label_names: list[str]
    metric: str
    max_length: int
    notes: list[str]


def read_table(source: str, where: str, split: str = "train") -> datasets.Dataset:
    """Load a table from a file, a saved `datasets` folder, or the hub; never an empty one."""
    path = Path(source)
    try:
        if path.is_dir():
            table = datasets.load_from_disk(str(path))
            if isinstance(table, datasets.DatasetDict):
                table = _pick_split(table, split, where, source)
        elif path.is_file():
            table = datasets.Dataset.from_pandas(read_frame(path), preserve_index=False)
        else:
            table = datasets.load_dataset(source, split=split)
    except UsageError:
        raise
    except Exception as error:  # the loaders raise many kinds; the user needs one sentence
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"{where}: could not read {source} ({reason}); check the file.") from None
    if len(table) == 0:
        raise UsageError(f"{where}: {source} holds no rows; give a file with data in it.")
    return table


def read_frame(path: Path) -> pd.DataFrame:
    """A CSV, TSV, JSON (Lines) or Parquet file as written: 'NA' stays a text, not a gap."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", keep_default_na=False,
                           encoding_errors="replace")
    if suffix in (".jsonl", ".json"):
        return pd.read_json(path, lines=suffix == ".jsonl", dtype=False, convert_dates=False)
    if suffix == ".parquet":
        return pd.read_parquet(path)
    raise UsageError(
        f"{path}: unknown data format '{suffix}'; use .csv, .tsv, .jsonl, .json or .parquet."
    )


def _pick_split(table: datasets.DatasetDict, split: str, where: str, source: str):
    if split in table:
        return table[split]
    raise UsageError(
        f"{where}: {source} has splits {', '.join(table)} but no '{split}'; save that split."
    )


def _column(table: datasets.Dataset, name: str, where: str, source: str) -> list:
    if name not in table.column_names:
        raise UsageError(
            f"{where}: {source} has no column '{name}' (it has {', '.join(table.column_names)}); "
            f"name the right one."
        )
    return table[name]


def _texts(table, config: StudyConfig, where: str, source: str) -> list:
    """The text of each row, or (text, pair) tuples; see `_text_column` for what is refused."""
    first = _text_column(table, config.text_column, where + " / --text-column", source)
    if not config.text_pair_column:
        return first
    second = _text_column(table, config.text_pair_column, where + " / --text-pair-column", source)
    return list(zip(first, second, strict=True))


def _text_column(table, name: str, where: str, source: str) -> list[str]:
    """A text column as strings. A row without a value is refused, naming its line (it would
    become the text 'nan'); a column with no text at all is refused (it trains at chance); some
    empty texts are counted in a warning."""
    values = _column(table, name, where, source)
    missing = next((i for i, value in enumerate(values) if _is_missing(value)), None)
    if missing is not None:
        raise UsageError(
            f"{where}: {_row_name(source, missing)} of {source} has no '{name}'; give it a text "
            f"or drop that row."
        )
    texts = [str(value) for value in values]
    empty = [i for i, text in enumerate(texts) if not text.strip()]
    if len(empty) == len(texts):
        raise UsageError(
            f"{where}: every '{name}' in {source} is empty, so nothing could be learned; name the "
            f"column that holds the text."
        )
    if empty:
        log.warning(
            "%s: %d of %d texts in '%s' of %s are empty (the first on %s); those rows are "
            "learned from no text.", where, len(empty), len(texts), name, source,
            _row_name(source, empty[0]),
        )
    return texts


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _row_name(source: str, index: int) -> str:
    """Where the user finds row `index` (0-based) of a table: its line in a CSV or JSON Lines
    file (JSON Lines skips blank lines, so they are counted here), else its row number."""
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix == ".jsonl" and path.is_file():
        with path.open(encoding="utf-8", errors="replace") as handle:
            lines = (number for number, line in enumerate(handle, 1) if line.strip())
            return f"line {next(itertools.islice(lines, index, None))}"
    if suffix in (".csv", ".tsv") and path.is_file():
        return f"line {index + 2}"
    return f"row {index + 1}"


def _labels(table, config: StudyConfig, where: str, source: str) -> list[str]:
    values = _column(table, config.label_column, where + " / --label-column", source)
    if any(value is None or value == "" or (isinstance(value, float) and math.isnan(value))
           for value in values):
        raise UsageError(
            f"{where}: column '{config.label_column}' of {source} has empty labels; fill or "
            f"drop those rows."
        )
    return [str(value) for value in values]


def _subsample(texts: list, labels: list[str], limit: int | None, seed: int):
    """Keep at most `limit` rows, stratified, so the class mix stays the same."""
    if limit is None or len(labels) <= limit:
        return texts, labels
    counts = Counter(labels)
    stratify = labels if min(counts.values()) >= 2 and limit >= len(counts) else None
    kept_texts, _, kept_labels, _ = train_test_split(
        texts, labels, train_size=limit, stratify=stratify, random_state=seed
    )
    return kept_texts, kept_labels


def _check_stratified_split(config: StudyConfig, labels: list[str]) -> None:
    """A stratified split needs every class on both sides; refused, not made another way, since
    a validation set missing classes would score the search on a different task. (Every class has
    two rows by now, so some fraction always works.)"""
    rows, classes = len(labels), len(set(labels))
    held_out = math.ceil(config.val_fraction * rows)  # as scikit-learn rounds it
    if classes <= held_out <= rows - classes:
        return
    low = math.ceil(classes / rows * 1000) / 1000
    high = math.floor((rows - classes) / rows * 1000) / 1000
    raise UsageError(
        f"{config.where('train')}: --val-fraction {config.val_fraction} holds out {held_out} of "
        f"{rows} rows, but a stratified split needs one row of each of the {classes} classes on "
        f"each side; use a --val-fraction from {low} to {high}, or give --validation."
    )


def load_target(config: StudyConfig) -> tuple[list, list[str], list, list[str], list[str]]:
    """Read train (and validation, or split it off train); returns texts, labels and notes."""
    notes: list[str] = []
    train_table = read_table(config.train, config.where("train"))
    train_texts = _texts(train_table, config, config.where("train"), config.train)
    train_labels = _labels(train_table, config, config.where("train"), config.train)
    classes = sorted(set(train_labels))
    if len(classes) < 2:
        raise UsageError(
            f"{config.where('train')}: column '{config.label_column}' of {config.train} has only "
            f"one class ('{classes[0]}'); a classifier needs at least two."
        )
    if config.validation:
        val_table = read_table(config.validation, config.where("validation"), "validation")
        val_texts = _texts(val_table, config, config.where("validation"), config.validation)
        val_labels = _labels(val_table, config, config.where("validation"), config.validation)
        unseen = sorted(set(val_labels) - set(classes))
        if unseen:
            raise UsageError(
                f"{config.where('validation')}: label '{unseen[0]}' never occurs in the training "
                f"data; remove those rows or add examples of it to train."
            )
    else:
        counts = Counter(train_labels)
        rare = [label for label, n in counts.items() if n < 2]
        if rare:
            raise UsageError(
                f"{config.where('train')}: class '{rare[0]}' has a single example, too few to "
                f"split off validation; add examples or give --validation."
            )
        _check_stratified_split(config, train_labels)
        train_texts, val_texts, train_labels, val_labels = train_test_split(
            train_texts,
            train_labels,
            test_size=config.val_fraction,
            stratify=train_labels,
            random_state=config.seed,
        )
    train_texts, train_labels = _subsample(
        train_texts, train_labels, config.max_train_samples, config.seed
    )
    val_texts, val_labels = _subsample(val_texts, val_labels, config.max_val_samples, config.seed)
    if not config.validation:
        capped = f", at most {config.max_val_samples}" if config.max_val_samples else ""
        notes.append(
            f"validation: {len(val_labels)} rows held out of {Path(config.train).name}, stratified "
            f"({config.val_fraction:.0%}{capped}), since no --validation was given"
        )
    return train_texts, train_labels, val_texts, val_labels, notes


def choose_metric(config: StudyConfig, labels: list[str]) -> tuple[str, str | None]:
    """macro-F1 when the classes are unbalanced (accuracy would reward ignoring small ones)."""
    if config.metric != "auto":
        return config.metric, None
    counts = Counter(labels)
    ratio = max(counts.values()) / min(counts.values())
    if ratio > IMBALANCE_RATIO:
        return "macro_f1", (
            f"metric: macro_f1, since the largest class is {ratio:.1f}× the "
            f"smallest (accuracy would reward ignoring small classes)"
        )
    return "accuracy", f"metric: accuracy, since the classes are balanced (ratio {ratio:.1f})"


def choose_max_length(config: StudyConfig, lengths: list[int], model_limit: int):
    """Cover nearly every example without padding everything to the model's limit."""
    if config.max_length is not None:
        return min(config.max_length, model_limit), None
    covering = int(np.percentile(lengths, MAX_LENGTH_PERCENTILE))
    chosen = min(model_limit, max(16, 8 * math.ceil(covering / 8)))
    return chosen, (
        f"max_length: {chosen} tokens, which covers {MAX_LENGTH_PERCENTILE}% of the "
        f"training texts whole (model limit {model_limit})"
    )


def tokenize(tokenizer, texts: list, max_length: int | None) -> dict[str, list[list[int]]]:
    """The tokenizer's outputs per text (input_ids, and token_type_ids where it makes them),
    truncated; padding and the attention mask happen per batch in training."""
    if texts and isinstance(texts[0], tuple):
        first, second = zip(*texts, strict=True)
        return tokenizer(
            list(first), list(second), truncation=max_length is not None, max_length=max_length
        )
    return tokenizer(list(texts), truncation=max_length is not None, max_length=max_length)


def tokenize_split(tokenizer, texts: list, labels: list[int], max_length: int) -> Split:
    """A split as training reads it: every per-token input the tokenizer makes for the model."""
    encoded = tokenize(tokenizer, texts, max_length)
    return Split(encoded["input_ids"], labels, encoded.get("token_type_ids"))


def model_length_limit(tokenizer, model_config) -> int:
    """The longest input the model accepts (tokenizers often report a huge placeholder)."""
    limits = [
        getattr(model_config, "max_position_embeddings", None),
        getattr(model_config, "n_positions", None),
        tokenizer.model_max_length,
    ]
    usable = [limit for limit in limits if isinstance(limit, int) and 0 < limit < 100_000]
    return min(usable) if usable else 512


def tokenize_target(config: StudyConfig, table: tuple, tokenizer, model_config) -> TargetData:
    """Everything trials share about the target task (from `load_target`), computed once."""
    train_texts, train_labels, val_texts, val_labels, notes = table
    label_names = sorted(set(train_labels))
    index = {name: i for i, name in enumerate(label_names)}
    metric, metric_note = choose_metric(config, train_labels)
    limit = model_length_limit(tokenizer, model_config)
    untruncated = tokenize(tokenizer, train_texts[:5000], None)["input_ids"]
    full_lengths = [len(ids) for ids in untruncated]
    max_length, length_note = choose_max_length(config, full_lengths, limit)
    notes += [note for note in (metric_note, length_note) if note]
    return TargetData(
        train=tokenize_split(
            tokenizer, train_texts, [index[x] for x in train_labels], max_length
        ),
        validation=tokenize_split(
            tokenizer, val_texts, [index[x] for x in val_labels], max_length
        ),
        label_names=label_names,
        metric=metric,
        max_length=max_length,
        notes=notes,
    )
