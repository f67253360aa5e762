"""A study folder knows whose it is (autoft.study_folder): a damaged study.db, a damaged derived
file, another study's name or a race on a new name never writes over a study's trials, and the
refusal says what the folder holds. Real searches, real SQLite files, real processes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autoft.cli import main
from autoft.study_folder import IDENTITY


@pytest.fixture
def study(tiny_model_dir, sentiment_rows, write_csv, write_space, tmp_path, capsys):
    """One finished one-trial study 's' and the command line that made it."""
    train = write_csv(tmp_path / "train.csv", sentiment_rows(80))
    space = write_space(tmp_path / "space.yaml", epochs=1)
    args = ["search", "--model", str(tiny_model_dir), "--train", str(train), "--space",
            str(space), "--studies-dir", str(tmp_path / "studies"), "--study", "s",
            "--base-kind", "none", "--devices", "cpu", "--n-trials", "1"]
    assert main(args) == 0
    capsys.readouterr()
    return tmp_path / "studies" / "s", args


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a folder's trials and best model, by path."""
    return {str(path.relative_to(folder)): path.read_bytes()
            for sub in ("trials", "best_model") for path in sorted((folder / sub).rglob("*"))
            if path.is_file()}


def test_an_emptied_study_db_is_refused_and_the_trials_stay(study, capsys):
    """A bad copy left study.db at 0 bytes: the same search used to start a new study there and
    write over trial 0's results and the best model."""
    folder, args = study
    before = snapshot(folder)
    (folder / "study.db").write_bytes(b"")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "study.db is empty (0 bytes)" in err and "restore study.db from a backup" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert snapshot(folder) == before
    assert (folder / "study.db").stat().st_size == 0


def test_a_damaged_prepared_fingerprint_is_prepared_again(study, capsys):
    """16 bytes of noise in prepared/fingerprint: the sentence blamed the user's data and advised
    deleting the folder, trials and all; the folder's identity and the storage both say the
    inputs are the study's, so the derived data is prepared again and the study goes on."""
    folder, args = study
    (folder / "prepared" / "fingerprint").write_bytes(b"\x00garbage-garbage")
    assert main([*args[:-1], "2"]) == 0
    out = capsys.readouterr().out
    assert "does not match the study's inputs (damaged?); preparing the data again" in out
    assert (folder / "trials" / "0001").is_dir()


def test_a_copied_folder_under_another_name_is_refused(study, capsys):
    folder, args = study
    shutil.copytree(folder, folder.parent / "t")
    copied = [*args]
    copied[copied.index("s")] = "t"
    assert main(copied) == 2
    err = capsys.readouterr().err
    assert "holds study 's'" in err and "nothing was changed" in err, err


def test_a_damaged_identity_is_written_again(study, capsys):
    folder, args = study
    (folder / IDENTITY).write_text("{not json")
    assert main([*args[:-1], "2"]) == 0
    assert "was damaged; written again" in capsys.readouterr().out
    assert json.loads((folder / IDENTITY).read_text())["study"] == "s"


RACER = """
import sys
from autoft.cli import build_parser, config_from_args
from autoft.errors import UsageError
from autoft.prepare import prepare_study
args = build_parser().parse_args(sys.argv[1:])
try:
    prepare_study(config_from_args(args), echo=lambda line: None)
except UsageError as error:
    sys.exit(f"refused: {error}")
"""


def test_two_searches_racing_on_a_new_name_one_owns_the_folder(
    tiny_model_dir, sentiment_rows, write_csv, cli_env, tmp_path
):
    """Both start at once with other data: the loser was refused only after writing its data
    into prepared/, and the owner's resume then read the loser's labels. The first claim wins,
    the loser writes nothing."""
    trains = [write_csv(tmp_path / f"train{seed}.csv", sentiment_rows(80, seed=seed))
              for seed in (0, 1)]
    runs = [subprocess.Popen(
        [sys.executable, "-c", RACER, "search", "--model", str(tiny_model_dir), "--train",
         str(train), "--studies-dir", str(tmp_path / "studies"), "--study", "s",
         "--base-kind", "none"],
        env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for train in trains]
    ends = [run.communicate(timeout=300) for run in runs]
    codes = [run.returncode for run in runs]
    assert sorted(codes) == [0, 1], ends
    loser = codes.index(1)
    assert "other data or model settings" in ends[loser][1], ends[loser]
    folder = tmp_path / "studies" / "s"
    owner = json.loads((folder / IDENTITY).read_text())["inputs"]
    assert (folder / "prepared" / "fingerprint").read_text() == owner

