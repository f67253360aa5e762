"""Reading base-task data: tables or one text a line, preservation texts, rated pairs (a table
of pairs or documents with a ratings matrix), questions with answers, checked with one-sentence
errors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from autoft.config import BaseTaskConfig
from autoft.data import file_text, read_frame
from autoft.errors import UsageError
from autoft.forgetting.base import TABLE_SUFFIXES, pick
from autoft.forgetting.split import BaseSplit


def is_table(path: str) -> bool:
    return path.lower().endswith(TABLE_SUFFIXES)


def read_table(path: str) -> pd.DataFrame:
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


def read_lines(path: str) -> list[str]:
    """Non-empty lines of a text file, in its own encoding (autoft.data.file_text: older corpora
    such as lee.cor are Latin-1)."""
    _require_file(path)
    decoded = file_text(Path(path)).splitlines()  # \x85 and \u2028 end lines too
    lines = [line.strip() for line in decoded if line.strip()]
    if not lines:
        raise UsageError(f"{path} is empty; give a file with one base-task text per line.")
    return lines


def _require_file(path: str) -> None:
    if Path(path).is_dir():
        raise UsageError(
            f"Base-task data {path} is a folder, but a text model's base task reads a file: "
            "point base.data (--base-data) at a text file (one text a line) or a table (.csv, "
            ".tsv, .jsonl, .json, .parquet)."
        )
    if not Path(path).is_file():
        raise UsageError(f"Base-task file {path} does not exist; check base.data.")


def table_column(frame: pd.DataFrame, path: str, column: str | None, setting: str) -> list:
    if column not in frame.columns:
        have = ", ".join(map(str, frame.columns))
        raise UsageError(
            f"{path} has no column '{column}' (it has {have}); name one of those with "
            f"--base-{setting.replace('_', '-')} (base.{setting} in a study file)."
        )
    return frame[column].tolist()


def read_texts(config: BaseTaskConfig) -> list[str]:
    """Every text of the file: one per line, or the `text_column` of a table."""
    if not is_table(config.data):
        return read_lines(config.data)
    frame = read_table(config.data)
    texts = table_column(frame, config.data, config.text_column, "text_column")
    return [str(text) for text in texts]


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
    return read_texts(dataclasses.replace(config, data=str(path)))


def _text_items(config: BaseTaskConfig) -> list[tuple[str, ...]]:
    """The base data's items as the checks count them, each with its texts (one, or a pair)."""
    if not is_table(config.data):
        return [(line,) for line in read_lines(config.data)]
    frame = read_table(config.data)
    pair = config.text_pair_column if config.kind in ("similarity", "qa") else None
    columns = [config.text_column, pair]
    return list(zip(*(map(str, frame[c]) for c in columns if c in frame.columns), strict=True))




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


def read_pairs(config: BaseTaskConfig) -> tuple[str, int, Callable[[list[int]], _Pairs]]:
    """A table of pairs, or documents with a ratings matrix: its unit, how many units it holds,
    and the pair set of any chosen units."""
    if config.ratings:
        docs = read_texts(config)
        ratings = _read_ratings(config.ratings, len(docs), config.data)

        def take(rows: list[int]) -> _Pairs:
            return _pairs_from_matrix(pick(docs, rows), ratings[np.ix_(rows, rows)])

        return "documents", len(docs), take
    else:
        if not config.text_pair_column:
            raise UsageError(
                f"Similarity on {config.data} needs pairs: name its columns with "
                f"--base-text-column, --base-text-pair-column and --base-score-column (base.* "
                f"in a study file), or give --base-ratings (a document × document matrix)."
            )
        frame = read_table(config.data)
        first, second = (
            [str(text) for text in table_column(frame, config.data, column, setting)]
            for column, setting in (
                (config.text_column, "text_column"),
                (config.text_pair_column, "text_pair_column"),
            )
        )
        gold = _numbers(
            table_column(frame, config.data, config.score_column, "score_column"),
            config.data,
            config.score_column,
        )

        def take(rows: list[int]) -> _Pairs:
            return _pairs_from_rows(pick(first, rows), pick(second, rows), gold[rows])

        return "pairs", len(gold), take


# Question and answer columns a `qa` table may hold without naming them, in this order of choice.
QA_COLUMNS = (("question", "answer"), ("prompt", "response"))


def find_pair_columns(config: BaseTaskConfig) -> dict[str, str] | None:
    """A table of pairs whose columns no setting names: for similarity, exactly two text columns
    and one numeric column (the pair in the table's order, and the score); for qa, question and
    answer (or prompt and response) columns, else exactly two text columns in the table's order.
    None when it holds no such columns."""
    if (config.kind not in ("similarity", "qa") or config.ratings or config.text_pair_column
            or not is_table(config.data)):
        return None
    frame = read_table(config.data)
    numeric = [
        column for column in frame.columns
        if pd.api.types.is_numeric_dtype(frame[column])
        and not pd.api.types.is_bool_dtype(frame[column])
    ]
    texts = [
        column for column in frame.columns
        if column not in numeric and frame[column].map(lambda value: isinstance(value, str)).all()
    ]
    if config.kind == "qa":
        named = [pair for pair in QA_COLUMNS if set(pair) <= set(frame.columns)]
        pair = named[0] if named else texts if len(texts) == 2 else None
        return pair and {"text_column": str(pair[0]), "text_pair_column": str(pair[1])}
    if len(texts) != 2 or len(numeric) != 1:
        return None
    return {"text_column": str(texts[0]), "text_pair_column": str(texts[1]),
            "score_column": str(numeric[0])}


def read_questions(config: BaseTaskConfig) -> tuple[list[str], list[str]]:
    """The questions and gold answers of a table: base.text_column and base.text_pair_column,
    or the columns `find_pair_columns` finds; an empty cell is refused."""
    if not is_table(config.data):
        raise UsageError(
            f"Base-task kind 'qa' needs a table of questions and answers, not {config.data}; "
            f"give a CSV or JSON Lines file with question and answer columns."
        )
    if not config.text_pair_column:
        found = find_pair_columns(config)
        if not found:
            raise UsageError(
                f"{config.data} has no question and answer columns; name them with "
                f"--base-text-column and --base-text-pair-column (base.* in a study file)."
            )
        config = dataclasses.replace(config, **found)
    frame = read_table(config.data)
    columns = []
    for column, setting in ((config.text_column, "text_column"),
                            (config.text_pair_column, "text_pair_column")):
        values = table_column(frame, config.data, column, setting)
        empty = next((row for row, value in enumerate(values, 1) if _blank(value)), None)
        if empty is not None:
            raise UsageError(
                f"{config.data} row {empty} has an empty '{column}'; fill it or drop the row."
            )
        columns.append([str(value).strip() for value in values])
    return columns[0], columns[1]


def _blank(value) -> bool:
    """An empty cell: missing (None, NaN) or only whitespace."""
    return value is None or (isinstance(value, float) and value != value) or not str(value).strip()


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
