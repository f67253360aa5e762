"""End-to-end searches on a tiny real BERT and a real CSV: the budget is a total across restarts,
trial 0 is the default config, summary.json and the best model are written and load back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from autoft.cli import main
from autoft.summary import build_summary

LEARNABLE_SPACE = """\
learning_rate: {low: 1.0e-3, high: 5.0e-3, log: true, default: 2.0e-3}
head_lr_multiplier: {value: 5}
batch_size: {choices: [16, 32], default: 16}
trainable_layers: {low: 0, high: max, default: max}
epochs: {value: 4}
weight_decay: {value: 0.0}
warmup_ratio: {value: 0.0}
"""


def search(tiny_model_dir, tiny_csv, tmp_path, n_trials: int, *extra: str) -> int:
    space = tmp_path / "space.yaml"
    space.write_text(LEARNABLE_SPACE)
    return main(["search", "--model", str(tiny_model_dir), "--train", str(tiny_csv),
                 "--space", str(space), "--n-trials", str(n_trials), "--study", "tiny",
                 "--studies-dir", str(tmp_path / "studies"), *extra])


def load(tmp_path: Path) -> optuna.Study:
    storage = f"sqlite:///{tmp_path / 'studies' / 'tiny' / 'study.db'}"
    return optuna.load_study(study_name="tiny", storage=storage)


@pytest.mark.slow
def test_search_writes_summary_and_a_loadable_best_model(tiny_model_dir, tiny_csv, tmp_path):
    assert search(tiny_model_dir, tiny_csv, tmp_path, 3) == 0
    folder = tmp_path / "studies" / "tiny"
    summary = json.loads((folder / "summary.json").read_text())
    study = load(tmp_path)
    first = study.trials[0]
    assert first.params == {"learning_rate": 2.0e-3, "batch_size": 16, "trainable_layers": 2}
    assert summary["default"]["value"] == first.value
    assert summary["best"]["value"] == max(t.value for t in study.trials if t.value is not None)
    assert summary["best"]["value"] >= summary["default"]["value"]
    assert summary["best"]["value"] > 0.8, "the tiny task is learnable: the search must find it"
    assert "trainable_layers" in summary["best"]["params"]
    counts = summary["counts"]
    assert counts["complete"] + counts["pruned"] + counts["failed"] == 3
    attrs = study.trials[0].user_attrs
    for key in ("evaluations", "best_value", "train_seconds", "samples_per_second",
                "trainable_parameters", "device", "checkpoint"):
        assert key in attrs, key
    steps = [e["step"] for e in attrs["evaluations"]]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 2, steps
    # four evaluations with the default forgetting check, fewer only when a rule stopped it
    assert len(steps) == 4 or attrs.get("stop_reason"), attrs.get("stop_reason")
    # the best evaluation that kept the forgetting bar (or a mix of it): at most the best one
    assert attrs["best_value"] == first.value
    assert first.value <= max(e["value"] for e in attrs["evaluations"])

    model = AutoModelForSequenceClassification.from_pretrained(folder / "best_model")
    assert model.config.id2label == {0: "neg", 1: "pos"}
    assert (folder / "best_model" / "README.md").is_file()
    soup = summary["soup"]  # the answer when a soup of the best trials beat the best trial
    trained = load_file((soup if soup and soup["answer"] else summary["best"])["checkpoint"])
    exported = dict(model.named_parameters())
    for name, tensor in trained.items():
        assert torch.equal(exported[name].detach(), tensor), name


@pytest.mark.slow
def test_rerun_resumes_to_the_total_budget(tiny_model_dir, tiny_csv, tmp_path):
    assert search(tiny_model_dir, tiny_csv, tmp_path, 2) == 0
    first_numbers = [t.number for t in load(tmp_path).trials]
    assert search(tiny_model_dir, tiny_csv, tmp_path, 2) == 0
    assert [t.number for t in load(tmp_path).trials] == first_numbers, "budget already spent"
    assert search(tiny_model_dir, tiny_csv, tmp_path, 4) == 0
    study = load(tmp_path)
    assert len(study.trials) == 4
    counts = build_summary(study)["counts"]
    assert counts["complete"] + counts["pruned"] == 4


@pytest.mark.slow
def test_cli_entry_point_runs_a_study_file(tiny_model_dir, tiny_csv, tmp_path):
    """`autoft search study.yaml`, as a user types it, in its own process."""
    space = tmp_path / "space.yaml"
    space.write_text(LEARNABLE_SPACE)
    study_file = tmp_path / "my-study.yaml"
    study_file.write_text(f"name: fromfile\nmodel: {tiny_model_dir}\ntrain: {tiny_csv}\n"
                          f"space: {space}\nn_trials: 1\nmetric: accuracy\n")
    done = subprocess.run(
        [sys.executable, "-m", "autoft", "search", str(study_file), "--studies-dir",
         str(tmp_path / "studies")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Best config (trial 0)" in done.stdout
    assert (tmp_path / "studies" / "fromfile" / "best_model" / "config.json").is_file()


def test_a_night_of_failed_trials_exits_3_with_their_reason(
    tiny_model_dir, tiny_csv, tmp_path, capsys
):
    """Every trial's loss overflows: the study ends with nothing to show, which a script must
    tell from success, and says how to run new trials."""
    space = tmp_path / "nan.yaml"
    space.write_text(LEARNABLE_SPACE.replace(
        "{low: 1.0e-3, high: 5.0e-3, log: true, default: 2.0e-3}", "{value: 1.0e+6}"))
    code = main(["search", "--model", str(tiny_model_dir), "--train", str(tiny_csv), "--space",
                 str(space), "--n-trials", "3", "--study", "nan", "--studies-dir",
                 str(tmp_path / "studies")])
    assert code == 3
    error = capsys.readouterr().err
    assert "no trial completed; 3 failed, 3 of them with \"training loss became" in error
    # the failures used the budget: the same command would run none, so the flag and number
    assert "run the same command with --n-trials 6 (its 3 trials used the budget of 3" in error
    summary = json.loads((tmp_path / "studies" / "nan" / "summary.json").read_text())
    assert summary["counts"]["failed"] == 3 and summary["best"] is None
    assert next(iter(summary["failures"])).startswith("training loss became")


@pytest.mark.slow
def test_a_bar_no_trial_can_reach_exits_3_and_keeps_the_trials(
    tiny_model_dir, tiny_csv, tmp_path, capsys
):
    """Every trial trains a layer at a rate that forgets and no mix back toward the untouched
    weights is tried, so none keeps all of drift's similarity (at most 1): a bar of 1 holds out
    every trial. (A bar above 1 is refused before any trial: test_advice.)"""
    space = tmp_path / "layers.yaml"
    space.write_text(LEARNABLE_SPACE.replace("low: 0, high: max", "low: 1, high: max")
                     .replace("{low: 1.0e-3, high: 5.0e-3, log: true, default: 2.0e-3}",
                              "{value: 1.0e-2}") + "interpolation_mixes: []\n")
    code = main(["search", "--model", str(tiny_model_dir), "--train", str(tiny_csv), "--space",
                 str(space), "--n-trials", "2", "--study", "tiny", "--studies-dir",
                 str(tmp_path / "studies"), "--base-kind", "drift", "--base-data", str(tiny_csv),
                 "--min-retention", "1"])
    assert code == 3
    error = capsys.readouterr().err
    assert "no trial kept 100% of the base-task skill; lower --min-retention" in error
    assert "or run the same command with --n-trials 4 (its 2 trials used the budget" in error
    study = load(tmp_path)
    assert len(study.trials) == 2 and all(t.state.is_finished() for t in study.trials)
    assert (tmp_path / "studies" / "tiny" / "report.html").is_file()


def test_a_space_of_six_configs_runs_each_once_then_says_so(
    tiny_model_dir, sentiment_rows, write_csv, open_sqlite_study, tmp_path, capsys
):
    """A space of six configs with nine trials: TPE ran one config 4 times out of 9, each time
    with the same result. Each runs once; the study says so up front and ends."""
    train = write_csv(tmp_path / "train.csv", sentiment_rows(60))
    space = tmp_path / "six.yaml"
    space.write_text(
        "learning_rate: {value: 1.0e-3}\nhead_lr_multiplier: {value: 10}\n"
        "batch_size: {choices: [8, 16]}\ntrainable_layers: {low: 0, high: max, default: 0}\n"
        "epochs: {value: 1}\nweight_decay: {value: 0.0}\nwarmup_ratio: {value: 0.0}\n"
        "adapter: {value: freeze}\n")
    studies = tmp_path / "studies"
    args = ["search", "--model", str(tiny_model_dir), "--train", str(train), "--space",
            str(space), "--studies-dir", str(studies), "--study", "six", "--base-kind", "none",
            "--devices", "cpu", "--n-trials", "9"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "the search space holds 6 configs, fewer than the 9 trials asked" in out
    trials = open_sqlite_study(studies, "six").trials
    configs = {(t.params["batch_size"], t.params["trainable_layers"]) for t in trials}
    assert len(trials) == 6 and len(configs) == 6
