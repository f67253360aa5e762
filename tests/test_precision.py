"""Tests for the precision setting: bf16 autocast or float32 as asked, checked before any trial,
recorded by every trial and stated in the summary."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from autoft import precision as precisions
from autoft.cli import main as cli_main
from autoft.config import build_config
from autoft.data import TargetData
from autoft.model import freeze, load_model
from autoft.precision import precision_name, set_precision
from autoft.report import summary_text
from autoft.summary import build_summary
from autoft.tasks.text import Split
from autoft.train import TrialParams, train_trial

CPU = torch.device("cpu")
PARAMS = TrialParams(learning_rate=1e-3, head_lr_multiplier=5.0, batch_size=8,
                     trainable_layers=2, epochs=1, weight_decay=0.0, warmup_ratio=0.0)


@pytest.fixture
def precision(monkeypatch):
    """Sets this process's precision for one test and puts the old one back after."""
    monkeypatch.setattr(precisions, "_precision", precisions._precision)
    return set_precision


def tiny_data() -> TargetData:
    ids = [[2] + [5 + (i * 7 + j) % 20 for j in range(3 + i % 5)] for i in range(24)]
    split = Split(ids, [i % 2 for i in range(24)])
    return TargetData(split, split, ["neg", "pos"], "accuracy", 16, [])


@pytest.mark.parametrize(("asked", "dtype"), [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_a_trial_trains_in_the_precision_asked_for(
    tiny_model_dir: Path, precision, asked: str, dtype: torch.dtype
) -> None:
    """The dtype the classifier's matrix product gives in training and evaluation is the one
    asked for, on the CPU too, and the trial's record names it."""
    precision(asked)
    model, _ = load_model(str(tiny_model_dir), ["neg", "pos"])
    freeze(model, PARAMS.trainable_layers)
    seen = set()
    model.classifier.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    result = train_trial(model, tiny_data(), PARAMS, CPU, 0, 0, lambda _e: None)
    assert result.evaluations and seen == {dtype}
    assert precision_name(CPU) == asked


def test_auto_is_bf16_exactly_where_the_cpu_has_bf16_instructions(precision) -> None:
    precision("auto")
    expected = "bf16" if precisions.cpu_has_native_bf16() else "fp32"
    assert precision_name(CPU) == expected


def test_the_summary_states_the_precision(tiny_study) -> None:
    """The tiny study ran under auto: every trial recorded what that meant on this CPU."""
    study, _ = tiny_study
    summary = build_summary(study)
    expected = "bf16" if precisions.cpu_has_native_bf16() else "fp32"
    assert {t.user_attrs["precision"] for t in study.trials} == {expected}
    assert summary["precision"] == [expected]
    assert f"Trials computed in {expected}" in summary_text(summary)


def test_an_unknown_precision_is_refused_before_any_trial(tmp_path: Path, tiny_model_dir: Path,
                                                          tiny_csv: Path, capsys) -> None:
    study_file = tmp_path / "s.yaml"
    study_file.write_text(yaml.safe_dump({"model": str(tiny_model_dir), "train": str(tiny_csv),
                                          "precision": "fp16", "studies_dir": str(tmp_path)}))
    assert cli_main(["search", str(study_file)]) == 2
    error = capsys.readouterr().err
    assert "field precision" in error and "unknown precision 'fp16'" in error
    assert not (tmp_path / "study").exists()
    flags = build_config({}, None, {"model": str(tiny_model_dir), "train": str(tiny_csv),
                                    "precision": "fp32"})
    assert flags.precision == "fp32"
