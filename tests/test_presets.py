"""Tests for presets and the beginner path: one word picks space, budget and pruner (explicit
settings win), and `autoft search --model M --train FILE` says what it chose and why."""

from pathlib import Path

import pytest

from autoft.cli import main
from autoft.config import build_config
from autoft.errors import UsageError
from autoft.pruning import make_pruner


def config(tiny_model_dir, tiny_csv, file_settings=None, **flags):
    base = {"model": str(tiny_model_dir), "train": str(tiny_csv)}
    return build_config(file_settings or {}, "study.yaml" if file_settings else None,
                        {**base, **flags})


@pytest.mark.parametrize(("preset", "space", "n_trials", "startup", "warmup"), [
    ("quick", "quick", 8, 2, 0), ("default", "default", 20, 3, 0),
    ("thorough", "thorough", 60, 8, 1),
])
def test_preset_chooses_space_budget_and_pruner(
    tiny_model_dir, tiny_csv, preset, space, n_trials, startup, warmup
) -> None:
    chosen = config(tiny_model_dir, tiny_csv, preset=preset)
    assert (chosen.space, chosen.n_trials) == (space, n_trials)
    pruner = make_pruner(chosen.pruner, chosen.pruner_startup, chosen.pruner_warmup_steps)
    assert (pruner.n_startup_trials, pruner.n_warmup_steps) == (startup, warmup)
    assert chosen.where("n_trials") == f"preset '{preset}'"


def test_flags_and_the_study_file_win_over_the_preset(tiny_model_dir, tiny_csv) -> None:
    chosen = config(tiny_model_dir, tiny_csv, {"preset": "thorough", "space": "quick"},
                    n_trials=5)
    assert (chosen.space, chosen.n_trials, chosen.pruner_startup) == ("quick", 5, 8)
    assert chosen.where("n_trials") == "--n-trials"


def test_unknown_preset_names_the_flag_and_the_choices(tiny_model_dir, tiny_csv) -> None:
    with pytest.raises(UsageError, match=r"--preset: unknown preset 'fast'; use one of quick, "):
        config(tiny_model_dir, tiny_csv, preset="fast")


@pytest.mark.slow
def test_model_and_train_alone_choose_validation_metric_and_length_and_say_why(
    tiny_model_dir, tmp_path: Path, monkeypatch, capsys, sentiment_rows, write_csv
) -> None:
    rows = sentiment_rows(120)
    unbalanced = [r for r in rows if r["label"] == "pos"] + [
        r for r in rows if r["label"] == "neg"][:20]
    data = write_csv(tmp_path / "reviews.csv", unbalanced)
    monkeypatch.chdir(tmp_path)
    assert main(["search", "--model", str(tiny_model_dir), "--train", str(data),
                 "--n-trials", "2", "--devices", "cpu"]) == 0
    said = capsys.readouterr().out
    choices = [
        "chose validation: 16 rows held out of reviews.csv, stratified (20%), since no "
        "--validation was given",
        "chose metric: macro_f1, since the largest class is 3.0× the smallest",
        "chose max_length: 16 tokens, which covers 98% of the training texts whole",
    ]
    report = (tmp_path / "studies" / "study" / "report.md").read_text()
    for choice in choices:
        assert choice in said and choice in report
    assert "used search space 'default', a budget of 2 trials" in report
    assert (tmp_path / "studies" / "study" / "report.html").is_file()
