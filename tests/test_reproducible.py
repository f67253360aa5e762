"""A trial's result is a function of its params and the study seed alone: the same config scores
the same, with the same saved weights, as trial 0, as a later trial after others ran in the same
process (building the prefix cache, training other heads) and as a retry; and the same study run
twice from scratch (the second run's process state differs) gives the same trials. On a tiny
BERT saved without a head, as all-MiniLM-L6-v2 is, so every trial's head is new.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import TrialState
from safetensors.torch import load_file

from autoft.config import build_config
from autoft.objective import Objective
from autoft.prepare import prepare_study
from autoft.schedule import queue_next_config
from autoft.storage import open_study
from autoft.study_facts import record_study_facts

SPACE = """\
learning_rate: {low: 1.0e-3, high: 5.0e-3, log: true, default: 2.0e-3}
head_lr_multiplier: {value: 5}
batch_size: {choices: [16, 32], default: 16}
trainable_layers: {low: 0, high: max, default: 1}
epochs: {value: 2}
weight_decay: {value: 0.01}
warmup_ratio: {value: 0.1}
"""
CONFIG = {"learning_rate": 2.0e-3, "batch_size": 16, "trainable_layers": 1}
OTHERS = [
    {"learning_rate": 4.0e-3, "batch_size": 32, "trainable_layers": 0},
    {"learning_rate": 1.5e-3, "batch_size": 16, "trainable_layers": 2},
]


@pytest.fixture(scope="module")
def headless_model(tmp_path_factory, save_tiny_bert) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("headless"), head=None)


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory, sentiment_rows, write_csv) -> Path:
    return write_csv(tmp_path_factory.mktemp("small") / "train.csv", sentiment_rows(120))


def _start(model: Path, train: Path, folder: Path, name: str) -> tuple[optuna.Study, Objective]:
    """A new study on this process's CPU, as `autoft search` makes it (trial 0 the default)."""
    folder.mkdir(parents=True, exist_ok=True)
    space = folder / "space.yaml"
    space.write_text(SPACE)
    flags = {"model": str(model), "train": str(train), "name": name, "space": str(space),
             "studies_dir": str(folder / "studies"), "n_trials": 20, "pruner_startup_trials": 100}
    config = build_config({}, None, flags)
    prepared = prepare_study(config, echo=lambda line: None)
    study = open_study(config)
    record_study_facts(study, prepared)
    return study, Objective(prepared, torch.device("cpu"))


def _scores(trial: optuna.trial.FrozenTrial) -> list[tuple]:
    """What each evaluation measured (not how long it took)."""
    return [(e["step"], e["value"], e["train_loss"]) for e in trial.user_attrs["evaluations"]]


def _run_enqueued(study: optuna.Study, objective: Objective, params: dict) -> None:
    study.enqueue_trial(params)
    study.optimize(objective, n_trials=1)


def test_one_config_scores_the_same_first_later_and_retried(headless_model, small_csv, tmp_path):
    study, objective = _start(headless_model, small_csv, tmp_path, "positions")
    queue_next_config(study)  # as a worker does before each trial: trial 0 is the default
    study.optimize(objective, n_trials=1)
    for other in OTHERS:
        _run_enqueued(study, objective, other)
    _run_enqueued(study, objective, CONFIG)
    study.enqueue_trial(CONFIG)
    failed = study.ask()
    study.tell(failed, state=TrialState.FAIL)  # as an interrupted or stale attempt ends
    RetryFailedTrialCallback(max_retry=1)(study, study.trials[failed.number])
    study.optimize(objective, n_trials=1)

    runs = [t for t in study.trials if t.params == CONFIG and t.state == TrialState.COMPLETE]
    assert [t.number for t in runs] == [0, 3, 5]
    assert runs[-1].system_attrs.get("failed_trial") == failed.number, "the last is a retry"
    assert [t.user_attrs["cache_note"] for t in runs] == ["built", "reused", "reused"]
    assert _scores(runs[1]) == _scores(runs[2]) == _scores(runs[0])
    assert runs[1].value == runs[2].value == runs[0].value
    assert len({t.user_attrs["seed"] for t in runs}) == 1
    weights = [load_file(t.user_attrs["checkpoint"]) for t in runs]
    assert weights[0].keys() == weights[1].keys() == weights[2].keys()
    for name, tensor in weights[0].items():
        assert torch.equal(weights[1][name], tensor) and torch.equal(weights[2][name], tensor), name


@pytest.mark.slow
def test_the_same_study_run_twice_gives_the_same_trials(headless_model, small_csv, tmp_path):
    runs = []
    for attempt in ("first", "second"):
        study, objective = _start(headless_model, small_csv, tmp_path / attempt, "twice")
        study.optimize(objective, n_trials=2)
        runs.append([(t.params, t.state, _scores(t)) for t in study.trials])
    assert len(runs[0]) == 2
    assert runs[0] == runs[1]
