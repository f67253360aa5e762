"""A full disk, made real on a small tmpfs: the run stops with one sentence and exit code 3,
leaves no temporary file behind and keeps every completed trial; a trial that cannot save its
weights fails alone, with that reason."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from autoft.cache import PrefixCache
from autoft.cli import main
from autoft.config import build_config
from autoft.objective import Objective
from autoft.prepare import prepare_study
from autoft.schedule import queue_next_config
from autoft.storage import open_study
from autoft.study_facts import record_study_facts
from autoft.workers import trial_log


def leftovers(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if ".tmp" in p.name]


@pytest.mark.slow
def test_a_search_on_a_full_disk_says_so_in_one_sentence_and_keeps_its_trials(
    tiny_model_dir, tiny_csv, tmp_path, small_disk, fill_disk, write_space, capsys
) -> None:
    studies = small_disk("16m")
    space = write_space(tmp_path / "space.yaml", epochs=1)
    args = ["search", "--model", str(tiny_model_dir), "--train", str(tiny_csv), "--space",
            str(space), "--n-trials", "1", "--study", "tiny", "--studies-dir", str(studies)]
    assert main(args) == 0
    folder = studies / "tiny"
    for name in ("report.html", "report.md", "summary.json"):
        (folder / name).unlink()
    fill_disk(studies, leave=64 * 1024)
    capsys.readouterr()
    assert main(args) == 3
    error = capsys.readouterr().err.strip()
    assert error.startswith("autoft: could not write ") and "the disk is full" in error, error
    assert "`autoft report --study tiny`" in error and len(error.splitlines()) == 1, error
    assert leftovers(folder) == []
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{folder / 'study.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]
    (studies / "filler").unlink()
    assert main(["report", "--study", "tiny", "--studies-dir", str(studies)]) == 0
    assert (folder / "report.html").is_file()


def test_a_trial_that_cannot_save_its_weights_fails_alone_with_that_reason(
    tiny_model_dir, tiny_csv, tmp_path, small_disk, fill_disk
) -> None:
    studies = small_disk("4m")
    flags = {"model": str(tiny_model_dir), "train": str(tiny_csv), "name": "full",
             "studies_dir": str(studies), "space": "quick", "n_trials": 2,
             "storage": f"sqlite:///{tmp_path / 'study.db'}"}  # the storage has room
    config = build_config({}, None, flags)
    prepared = prepare_study(config, echo=lambda line: None)
    study = open_study(config)
    record_study_facts(study, prepared)
    objective = Objective(prepared, torch.device("cpu"))
    fill_disk(studies)
    queue_next_config(study)
    study.optimize(objective, n_trials=1, catch=(Exception,))
    failed = study.trials[-1]
    assert failed.state == TrialState.FAIL
    checkpoint = studies / "full" / "trials" / "0000" / "trainable.safetensors"
    assert failed.user_attrs["fail_reason"] == (
        f"could not save its weights to {checkpoint}: the disk is full")
    assert leftovers(studies / "full") == []
    (studies / "filler").unlink()
    study.optimize(objective, n_trials=1, catch=(Exception,))
    assert study.trials[-1].state == TrialState.COMPLETE  # the study goes on


def test_the_cache_on_a_nearly_full_disk_states_real_figures(
    small_disk, make_data, fresh_model, tiny_model_dir, pad_id
) -> None:
    folder = small_disk("4m")
    use = PrefixCache(folder / "cache").states_for(
        fresh_model(tiny_model_dir, 1), make_data(), 1, torch.device("cpu"), pad_id)
    assert use.states is None
    assert re.search(r"can spare: \d+\.\d MiB free, and autoft leaves 1\.00 GiB of a disk "
                     r"free$", use.note), use.note


def test_a_trial_log_on_a_full_disk_says_so_once(small_disk, fill_disk, capsys,
                                                  caplog) -> None:
    disk = small_disk("1m")
    path = disk / "logs" / "trial-0000.log"
    with trial_log(path):
        fill_disk(disk)
        for i in range(3):
            logging.getLogger("autoft").warning("line %d", i)  # each line is flushed
    assert "Logging error" not in capsys.readouterr().err
    said = [r.getMessage() for r in caplog.records if "cannot be written" in r.getMessage()]
    assert said == [f"autoft: the trial log {path} cannot be written (the disk is full); the "
                    "trial's lines go on to the screen only."]


def test_sqlite_s_own_full_disk_error_is_a_full_disk(small_disk, fill_disk):
    """SQLite says "database or disk is full" in an error that is no OSError; it gets the
    same sentence as any full disk, naming the study's storage."""
    import sqlite3

    from autoft.files import disk_full_sentence, is_disk_full

    disk = small_disk("1m")
    connection = sqlite3.connect(disk / "study.db")
    connection.execute("CREATE TABLE attrs (value BLOB)")
    connection.commit()
    fill_disk(disk)
    try:
        connection.execute("INSERT INTO attrs VALUES (?)", (b"x" * 200_000,))
        connection.commit()
    except sqlite3.OperationalError as error:
        full = error
    else:
        raise AssertionError("the write to a full disk succeeded")
    assert is_disk_full(full)
    sentence = disk_full_sentence(full, "s")
    assert sentence.startswith("could not write the study's storage: the disk is full "
                               "(database or disk is full); every completed trial is kept")


def test_a_full_study_db_at_a_trial_s_end_is_one_sentence(small_disk, fill_disk) -> None:
    """The disk fills while a trial runs, so Optuna's tell of it fails on SQLite's full file;
    its cleanup then raises "AssertionError: Should not reach." from the failure, which autoft
    printed as a 60-line traceback. It is a full disk, said in one sentence."""
    from autoft.errors import NothingToShow
    from autoft.files import full_disk_said

    folder = small_disk("4m")
    study = optuna.create_study(storage=f"sqlite:///{folder / 'study.db'}", study_name="s")

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("started", True)
        fill_disk(folder)
        trial.set_user_attr("notes", "x" * 100_000)  # the trial's own records fill the last pages
        return 1.0

    with pytest.raises(NothingToShow, match=r"could not write the study's storage: the disk is "
                                            r"full \(database or disk is full\)"):
        with full_disk_said("s"):
            study.optimize(objective, n_trials=1)
