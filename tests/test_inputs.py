"""Inputs that used to go wrong quietly or loop: a study resumed after its data file was written
again or its prepared data damaged, some texts empty, a base task of pairs given by flags, a
failure that repeats in every trial, a file in another encoding or with another delimiter.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import time
from datetime import datetime
from pathlib import Path

import optuna
import pytest
import torch

from autoft.cli import build_parser, config_from_args
from autoft.data import read_table
from autoft.devices import Slot
from autoft.errors import UsageError
from autoft.forgetting.readers import read_lines
from autoft.objective import Objective
from autoft.prepare import prepare_study
from autoft.schedule import check_not_stopped
from autoft.signals import Stop
from autoft.storage import StartLock, open_storage, open_study, storage_url
from autoft.study_facts import record_study_facts
from autoft.tasks import get_task
from autoft.workers import TrialRunner, run_trials


def flags_config(model: Path, train: Path, tmp_path: Path, *extra: str):
    """The config `autoft search` builds from these flags."""
    args = build_parser().parse_args(
        ["search", "--model", str(model), "--train", str(train), "--studies-dir",
         str(tmp_path / "studies"), "--study", "s", "--space", "quick", *extra])
    return config_from_args(args)


def prepare(config) -> list[str]:
    lines: list[str] = []
    prepare_study(config, echo=lines.append)
    return lines


def rewrite(path: Path, content: bytes) -> None:
    """Write the file again, as a nightly export does: new modification time."""
    before = path.stat().st_mtime_ns
    path.write_bytes(content)
    os.utime(path, ns=(before + 5 * 10**9, before + 5 * 10**9))


def test_data_written_again_with_the_same_content_resumes(tiny_model_dir, tiny_csv, tmp_path):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    train = shutil.copy(tiny_csv, tmp_path / "train.csv")
    config = flags_config(model, Path(train), tmp_path)
    prepare(config)
    rewrite(Path(train), Path(train).read_bytes())
    rewrite(model / "config.json", (model / "config.json").read_bytes())
    assert any(line.startswith("Reusing the data prepared earlier") for line in prepare(config))
    rewrite(Path(train), Path(train).read_bytes().replace(b"good", b"fine", 1))
    with pytest.raises(UsageError, match="other data or model settings"):
        prepare(config)


def test_damaged_prepared_data_is_prepared_again(tiny_model_dir, tiny_csv, tmp_path):
    config = flags_config(tiny_model_dir, tiny_csv, tmp_path)
    prepare(config)
    target = config.study_dir / "prepared" / "target.json"
    whole = target.read_text()
    target.write_text(whole[: len(whole) // 2])
    lines = prepare(config)
    assert "target.json is damaged" in lines[0] and "preparing the data again" in lines[0]
    assert target.read_text() == whole


def test_some_empty_texts_are_counted_in_a_warning(
    tiny_model_dir, tmp_path, caplog, sentiment_rows, write_csv
):
    rows = sentiment_rows(60)
    for row in rows[::3]:
        row["text"] = ""
    train = write_csv(tmp_path / "gaps.csv", rows)
    with caplog.at_level(logging.WARNING, logger="autoft"):
        prepare(flags_config(tiny_model_dir, train, tmp_path))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("20 of 60 texts in 'text' of" in w and "first on line 2" in w for w in warnings), \
        warnings
    rows = sentiment_rows(8)
    rows[1]["text"] += "\nand a second line"  # quoted: the rows after it start a line later
    rows[5]["text"] = ""
    train = write_csv(tmp_path / "spans.csv", rows)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="autoft"):
        prepare(flags_config(tiny_model_dir, train, tmp_path, "--study", "spans",
                             "--val-fraction", "0.5"))
    assert any("first on line 8" in w for w in warnings_of(caplog)), warnings_of(caplog)


@pytest.fixture
def write_pairs(sentiment_rows, write_csv):
    """write_pairs(path, with_id=False): a table of text pairs with a score column."""

    def write(path: Path, with_id: bool = False) -> Path:
        words = [row["text"] for row in sentiment_rows(24)]
        rows = [{"text_a": words[i], "text_b": words[i + 1], "score": float(i % 5)}
                for i in range(len(words) - 1)]
        if with_id:
            rows = [{"id": i, **row} for i, row in enumerate(rows)]
        return write_csv(path, rows)

    return write


def test_base_pairs_table_found_from_the_command_line(
    tiny_model_dir, tiny_csv, tmp_path, write_pairs
):
    pairs = write_pairs(tmp_path / "pairs.csv")
    config = flags_config(tiny_model_dir, tiny_csv, tmp_path, "--base-kind", "similarity",
                          "--base-data", str(pairs))
    lines = prepare(config)
    assert any("pairs from columns 'text_a' and 'text_b' of pairs.csv, scores from 'score'"
               in line for line in lines), lines
    assert any(line.startswith("  base similarity_spearman") for line in lines), lines


def test_base_pairs_columns_named_by_flags(tiny_model_dir, tiny_csv, tmp_path, write_pairs):
    """With an id column too the table is not plain enough to guess: the flags name the columns."""
    pairs = write_pairs(tmp_path / "pairs.csv", with_id=True)
    base = ["--base-kind", "similarity", "--base-data", str(pairs)]
    with pytest.raises(UsageError, match="--base-text-pair-column"):
        prepare(flags_config(tiny_model_dir, tiny_csv, tmp_path, *base))
    config = flags_config(tiny_model_dir, tiny_csv, tmp_path, *base, "--base-text-column",
                          "text_a", "--base-text-pair-column", "text_b", "--base-score-column",
                          "score")
    assert any(line.startswith("  base similarity_spearman") for line in prepare(config))


@pytest.mark.slow
def test_a_failure_repeating_stops_the_study(tiny_model_dir, tiny_csv, tmp_path):
    """Every trial fails alike (here: no evaluation, with the interval check bypassed); the study
    stops after three with one sentence instead of starting trials until the deadline."""
    config = flags_config(tiny_model_dir, tiny_csv, tmp_path, "--n-trials", "20",
                          "--max-train-samples", "32", "--cache", "off")
    prepared = prepare_study(config, echo=lambda line: None)
    record_study_facts(open_study(config), prepared)
    storage = open_storage(storage_url(config))
    study = optuna.load_study(study_name=config.name, storage=storage)
    broken = dataclasses.replace(
        prepared, config=dataclasses.replace(prepared.config, eval_every_samples=10**6))
    objective = Objective(broken, torch.device("cpu"))
    lock = StartLock(storage, config.name)
    runner = TrialRunner(objective, config.study_dir, Slot("cpu", 1), lock, Stop())
    since = datetime.now()
    run_trials(study, runner, config.n_trials, deadline=time.time() + 90)
    failed = [t for t in study.get_trials() if t.state.name == "FAIL"]
    assert len(failed) == 3, [t.user_attrs.get("fail_reason") for t in failed]
    with pytest.raises(UsageError, match=r"trials 0, 1, 2 all failed with \"training ended"):
        check_not_stopped(study, since, config.n_trials)


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_some_unknown_word_pieces_are_counted_in_a_warning(
    tiny_model_dir, tmp_path, caplog, sentiment_rows, write_csv
):
    """One word in every fourth text is outside the tiny vocabulary: 1 piece in 21."""
    rows = sentiment_rows(60)
    for row in rows[::4]:
        row["text"] += " zebra"
    train = write_csv(tmp_path / "zebra.csv", rows)
    with caplog.at_level(logging.WARNING, logger="autoft"):
        prepare(flags_config(tiny_model_dir, train, tmp_path))
    counts = [re.search(r"reads (\d+) of (\d+) word pieces .* as unknown \(\[UNK\]\)", w)
              for w in warnings_of(caplog)]
    unknown, pieces = next(map(int, c.groups()) for c in counts if c)
    assert unknown > 0 and abs(unknown / pieces - 1 / 21) < 0.01


def test_a_table_in_another_encoding_is_read_in_it(tiny_model_dir, tmp_path, caplog,
                                                  sentiment_rows, write_csv):
    """Windows-1252 lines in a UTF-8 file (as the demo's tweets have) and a UTF-16 file (as Excel
    saves 'Unicode text') once read as U+FFFD with a warning, or as "Couldn't cast"."""
    rows = sentiment_rows(40)
    rows[3]["text"] += " café"
    rows[9]["text"] += " naïve “quoted”"
    text = write_csv(tmp_path / "utf8.csv", rows).read_text(encoding="utf-8")
    mixed = tmp_path / "mixed.csv"
    lines = text.splitlines(keepends=True)
    mixed.write_bytes(b"".join(line.encode("cp1252" if i == 10 else "utf-8")
                               for i, line in enumerate(lines)))
    wide = tmp_path / "wide.csv"
    wide.write_bytes(text.encode("utf-16"))
    with caplog.at_level(logging.WARNING, logger="autoft"):
        for train in (mixed, wide):
            config = flags_config(tiny_model_dir, train, tmp_path, "--study", train.stem)
            read = get_task("text-classification").read(config)
            assert sorted(read.train_inputs + read.val_inputs) == sorted(r["text"] for r in rows)
    assert warnings_of(caplog) == []


def test_a_csv_separated_by_tabs_is_read_by_its_delimiter(tmp_path, sentiment_rows):
    """A tab-separated file named .csv was "has no column label (it has text<TAB>label)"."""
    rows = sentiment_rows(20)
    train = tmp_path / "tabs.csv"
    train.write_text("text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in rows))
    table = read_table(str(train), "--train")
    assert table.column_names == ["text", "label"] and table["label"] == [r["label"] for r in rows]


def test_base_text_lines_not_utf8_are_read_in_their_encoding(tmp_path, caplog):
    texts = tmp_path / "base.txt"
    texts.write_bytes("a café in town\nplain text\n".encode() + b"na\xefve caf\xe9\n")
    with caplog.at_level(logging.WARNING, logger="autoft"):
        assert read_lines(str(texts)) == ["a café in town", "plain text", "naïve café"]
    assert warnings_of(caplog) == []
