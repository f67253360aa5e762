"""Tables of data, whatever the task: read a file (CSV, TSV, JSON Lines, Parquet), a saved
`datasets` folder or a hub name; take a column, a text column; name a row as the user finds it.
And `TargetData`, what every trial of a study trains and evaluates on, in the task's own splits.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import charset_normalizer
import datasets
import pandas as pd

from autoft.errors import UsageError

log = logging.getLogger("autoft")


@dataclass(frozen=True)
class TargetData:
    """What every trial trains and evaluates on (splits of the task's own kind: text's are
    autoft.tasks.text.Split), plus the choices made while preparing it. `task` names the
    autoft.tasks kind that made it and reads it (data prepared before tasks: classification)."""

    train: object
    validation: object
    label_names: list[str]
    metric: str
    max_length: int | None
    notes: list[str] = field(default_factory=list)
    task: str = "text-classification"


# The last table read, by (source, split, the file's size and mtime): task detection and the read
# that follows ask for the same table two or three times in a row while a study is prepared.
_last_table: dict[tuple, datasets.Dataset] = {}


def read_table(source: str, where: str, split: str = "train") -> datasets.Dataset:
    """Load a table from a file, a saved `datasets` folder, or the hub; never an empty one."""
    path = Path(source)
    stat = path.stat() if path.exists() else None
    key = (source, split, stat and (stat.st_size, stat.st_mtime_ns))
    if key not in _last_table:
        table = _load_table(source, where, split)
        _last_table.clear()
        _last_table[key] = table
    return _last_table[key]


def _load_table(source: str, where: str, split: str) -> datasets.Dataset:
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
    """A CSV, TSV, JSON (Lines) or Parquet file as written: in its own encoding (`file_text`),
    a CSV with the delimiter it uses (a tab-separated file named .csv), 'NA' a text, not a gap;
    a name used twice is refused."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        text = file_text(path)
        sep = "\t" if suffix == ".tsv" else delimiter(text)
        _check_unique(next(csv.reader(io.StringIO(text), delimiter=sep), []), path, "header")
        return pd.read_csv(io.StringIO(text), sep=sep, keep_default_na=False)
    if suffix in (".jsonl", ".json"):
        text = file_text(path)
        _check_unique_keys(text, path)
        frame = pd.read_json(io.StringIO(text), lines=suffix == ".jsonl", dtype=False,
                             convert_dates=False)
        _check_lists_or_not(frame, path)
        return frame
    if suffix == ".parquet":
        return pd.read_parquet(path)
    raise UsageError(
        f"{path}: unknown data format '{suffix}'; use .csv, .tsv, .jsonl, .json or .parquet."
    )


def delimiter(text: str) -> str:
    """The delimiter the csv module's Sniffer reads in a CSV's first lines: a comma, a tab, a
    semicolon (a European Excel's) or a bar; a comma where it cannot tell (one column)."""
    try:
        return csv.Sniffer().sniff(text[:65536], delimiters=",\t;|").delimiter
    except csv.Error:
        return ","


def file_text(path: Path) -> str:
    """The file's text: UTF-8 as it should be; else in the encoding charset-normalizer finds
    for it (a UTF-16 export), where some lines are UTF-8 and some are not (the demo's tweets)
    for the lines that are not, so no byte becomes U+FFFD."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    encoding = legacy_encoding(raw, path)
    if encoding.startswith(("utf_16", "utf_32")):
        return raw.decode(encoding)
    lines = raw.splitlines(keepends=True)
    other = [line for line in lines if not _is_utf8(line)]
    encoding = legacy_encoding(b"".join(other), path)
    log.debug("%s: %d of %d lines read as %s", path, len(other), len(lines), encoding)
    return "".join(line.decode("utf-8-sig") if _is_utf8(line) else line.decode(encoding)
                   for line in lines)


def legacy_encoding(data: bytes, path: Path) -> str:
    """charset-normalizer's encoding for bytes that are not UTF-8; among its equally good
    guesses Windows-1252, the commonest, where a few accented letters cannot tell them apart
    (it ranks those alphabetically, which read 'naïve' as Urdu)."""
    matches = list(charset_normalizer.from_bytes(data))
    if not matches:
        raise UsageError(f"{path}: is not text in any encoding autoft knows (charset-normalizer "
                         f"finds none); save it as UTF-8 text.")
    best = [m.encoding for m in matches
            if (m.chaos, m.coherence) == (matches[0].chaos, matches[0].coherence)]
    return "cp1252" if "cp1252" in best else best[0]


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _check_unique(names: list[str], path: Path, where: str) -> None:
    """pandas would rename a second 'text' to 'text.1' and the first would be read silently."""
    twice = [name for name, count in Counter(names).items() if count > 1]
    if twice:
        raise UsageError(
            f"{path}: the {where} names the column '{twice[0]}' twice, so autoft cannot tell "
            f"which one to read; rename or drop one of them."
        )


def _check_lists_or_not(frame: pd.DataFrame, path: Path) -> None:
    """A column of lists with a single value in some row (a multi-label row written "pos", not
    ["pos"]): pyarrow refuses it in its own words, naming no row."""
    for name in frame.columns:
        values = frame[name].tolist()
        lists = [isinstance(value, list) for value in values]
        single = next((i for i, value in enumerate(values)
                       if not lists[i] and not is_missing(value)), None)
        if any(lists) and single is not None:
            raise UsageError(
                f"{path}: {row_name(str(path), single)} holds {values[single]!r} in column "
                f"'{name}', where {row_name(str(path), lists.index(True))} holds a list; write "
                f"it as a list too, as [{json.dumps(values[single])}]."
            )


def _check_unique_keys(text: str, path: Path) -> None:
    """A JSON object that names a key twice keeps only the last value, silently: a row of JSON
    Lines or of a JSON array is refused, naming the line it starts on."""
    decoder = json.JSONDecoder(object_pairs_hook=_unique_pairs)
    between = re.compile(r"\s*" if path.suffix.lower() == ".jsonl" else r"[\s,\[\]]*")
    position = between.match(text).end()  # an array's rows are read one by one, as a file's
    while position < len(text):
        try:
            position = between.match(text, decoder.raw_decode(text, position)[1]).end()
        except _KeyTwice as twice:
            raise UsageError(
                f"{path}: the row on line {text.count(chr(10), 0, position) + 1} names "
                f"'{twice}' twice, so autoft cannot tell which value to read; rename or drop one "
                f"of them."
            ) from None
        except ValueError:
            return  # not valid JSON: pandas says so in the read's own sentence


class _KeyTwice(Exception):
    """A JSON object names this key twice."""


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _KeyTwice(key)
        seen.add(key)
    return dict(pairs)


def _pick_split(table: datasets.DatasetDict, split: str, where: str, source: str):
    if split in table:
        return table[split]
    raise UsageError(
        f"{where}: {source} has splits {', '.join(table)} but no '{split}'; save that split."
    )


def column(table: datasets.Dataset, name: str, where: str, source: str) -> list:
    if name not in table.column_names:
        raise UsageError(
            f"{where}: {source} has no column '{name}' (it has {', '.join(table.column_names)}); "
            f"name the right one."
        )
    return table[name]


def text_column(table, name: str, where: str, source: str) -> list[str]:
    """A text column as strings. A row without a value is refused, naming its line (it would
    become the text 'nan'); a column with no text at all is refused (it trains at chance); some
    empty texts are counted in a warning."""
    values = column(table, name, where, source)
    missing = next((i for i, value in enumerate(values) if is_missing(value)), None)
    if missing is not None:
        raise UsageError(
            f"{where}: {row_name(source, missing)} of {source} has no '{name}'; give it a text "
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
            row_name(source, empty[0]),
        )
    return texts


def is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def row_name(source: str, index: int) -> str:
    """Where the user finds row `index` (0-based) of a table: its line in a CSV or JSON Lines
    file (JSON Lines skips blank lines, and a CSV's quoted text may span lines, so they are
    counted here), else its row number."""
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix == ".jsonl" and path.is_file():
        with path.open(encoding="utf-8", errors="replace") as handle:
            lines = (number for number, line in enumerate(handle, 1) if line.strip())
            return f"line {next(itertools.islice(lines, index, None))}"
    if suffix in (".csv", ".tsv") and path.is_file():  # a quoted text may span lines
        text = file_text(path)
        reader = csv.reader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else
                            delimiter(text))
        ends = (reader.line_num for row in reader if row)  # the line each row ends on
        return f"line {next(itertools.islice(ends, index, None)) + 1}"
    return f"row {index + 1}"


