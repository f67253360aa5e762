"""Nothing mixed: a study's trials all train on the inputs the study was made with, wherever it
is resumed from, and two processes on one study never sample the same config for two trials.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest

from autoft.cli import build_parser, config_from_args, main
from autoft.errors import UsageError
from autoft.prepare import prepare_study
from autoft.study_folder import IDENTITY
from autoft.trials import trial_config


def flags_config(model: Path, train: Path, studies: Path):
    args = build_parser().parse_args(
        ["search", "--model", str(model), "--train", str(train), "--studies-dir", str(studies),
         "--study", "s", "--space", "quick"])
    return config_from_args(args)


def test_an_edit_that_keeps_size_and_modification_time_is_seen(tiny_model_dir, tiny_csv,
                                                                tmp_path):
    """`cp -p` or `touch -r` after an edit: same size, same mtime, other content."""
    train = Path(shutil.copy(tiny_csv, tmp_path / "train.csv"))
    config = flags_config(tiny_model_dir, train, tmp_path / "studies")
    prepare_study(config, echo=lambda line: None)
    stamp = train.stat()
    content = train.read_bytes()
    train.write_bytes(content.replace(b"good", b"fine", 1))  # same length
    os.utime(train, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert train.stat().st_size == stamp.st_size
    with pytest.raises(UsageError, match="other data or model settings"):
        prepare_study(config, echo=lambda line: None)


def test_other_data_is_refused_by_the_storage_when_prepared_is_gone(
    tiny_model_dir, sentiment_rows, write_csv, write_space, tmp_path, capsys
):
    """The fingerprint beside the data can be deleted; the one in the storage cannot be
    missed: the resumed search refuses before any trial, and the first trials stay as they were."""
    train = write_csv(tmp_path / "train.csv", sentiment_rows(80))
    space = write_space(tmp_path / "space.yaml", epochs=1)
    args = ["search", "--model", str(tiny_model_dir), "--train", str(train), "--space",
            str(space), "--studies-dir", str(tmp_path / "studies"), "--study", "s",
            "--n-trials", "1"]
    assert main(args) == 0
    shutil.rmtree(tmp_path / "studies" / "s" / "prepared")
    (tmp_path / "studies" / "s" / IDENTITY).unlink()  # the folder's own record, gone too
    write_csv(train, sentiment_rows(80, seed=1))
    capsys.readouterr()
    assert main([*args[:-1], "2"]) == 2
    error = capsys.readouterr().err
    assert "was run on other data or model settings" in error
    assert "train.csv (64 training and 16 validation examples" in error
    storage = f"sqlite:///{tmp_path / 'studies' / 's' / 'study.db'}"
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 1


@pytest.mark.slow
def test_two_searches_on_one_sqlite_study_sample_different_configs(
    tiny_model_dir, tiny_csv, write_space, search_args, cli_env, tmp_path
):
    """Both processes seeded their sampler with the study seed, so each one's first sampled
    trial drew the same numbers: trials 1 and 2 ran one config twice."""
    space = write_space(tmp_path / "space.yaml", epochs=1)
    args = search_args(tiny_model_dir, tiny_csv, space, tmp_path / "studies", "s", 4, "cpu")
    runs = [subprocess.Popen(args, env=cli_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    for run in runs:
        output, _ = run.communicate(timeout=300)
        assert run.returncode == 0, output
    storage = f"sqlite:///{tmp_path / 'studies' / 's' / 'study.db'}"
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert len(trials) == 4
    sampled = [tuple(sorted(trial_config(t).items())) for t in trials
               if "start" not in t.user_attrs]
    assert len(sampled) >= 2, "the two processes ran the default config only"
    assert len(set(sampled)) == len(sampled), sampled


def test_other_base_data_is_other_inputs(tiny_model_dir, tiny_csv, tmp_path):
    """The base model's skill is measured once on the base files and kept: base files edited
    since would be scored against a base score of other texts."""
    base = tmp_path / "base.txt"
    base.write_text("\n".join(f"a plain base text number {i} about the weather" for i in range(40)))
    args = build_parser().parse_args(
        ["search", "--model", str(tiny_model_dir), "--train", str(tiny_csv), "--studies-dir",
         str(tmp_path / "studies"), "--study", "s", "--space", "quick", "--base-kind", "drift",
         "--base-data", str(base)])
    prepare_study(config_from_args(args), echo=lambda line: None)
    base.write_text(base.read_text().replace("weather", "harbour"))
    with pytest.raises(UsageError, match="other data or model settings"):
        prepare_study(config_from_args(args), echo=lambda line: None)
