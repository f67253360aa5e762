"""autoft from Python: `autoft.search` runs a study in this process and returns what its storage
and summary.json hold; `autoft.load` reads the same from the folder, writing nothing, also while
a trial runs; errors are UsageError sentences; `import autoft` brings no torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState
from transformers import AutoModelForSequenceClassification

import autoft
from autoft.trials import best_feasible, full_params


@pytest.mark.slow
def test_search_in_process_returns_what_the_storage_and_summary_hold(
    tiny_model_dir, tiny_csv, tmp_path, write_space, open_sqlite_study
) -> None:
    """Settings from a study file (paths relative to it) and from keywords, which win."""
    shutil.copy(tiny_csv, tmp_path / "train.csv")
    write_space(tmp_path / "space.yaml")
    study_file = tmp_path / "study.yaml"
    study_file.write_text(f"model: {tiny_model_dir}\ntrain: train.csv\nspace: space.yaml\n"
                          "n_trials: 9\nbase: {kind: drift, data: train.csv}\n")
    studies = tmp_path / "studies"
    result = autoft.search(study_file, n_trials=3, name="api", studies_dir=str(studies),
                           devices="cpu", base={"min_retention": 0.5})

    study = open_sqlite_study(studies, "api")
    summary = json.loads((studies / "api" / "summary.json").read_text())
    assert json.loads(json.dumps(result.summary, default=str)) == summary
    assert summary["counts"]["complete"] + summary["counts"]["pruned"] == 3
    assert study.user_attrs["base"]["min_retention"] == 0.5
    best = best_feasible(study)
    assert result.study_dir == studies / "api"
    assert (result.best_trial, result.best_value) == (best.number, best.value)
    assert result.best_config == full_params(best) == summary["best"]["params"]
    audit = study.user_attrs["audits"][str(best.number)]
    assert result.audit_retention == audit["retention"]
    assert result.audit_interval == (audit["low"], audit["high"])
    assert audit["low"] <= audit["retention"] <= audit["high"]
    pd.testing.assert_frame_equal(result.price, pd.DataFrame(summary["price"]))
    assert result.price["users_bar"].sum() == 1

    trials = study.get_trials()
    frame = result.trials
    assert list(frame["number"]) == [t.number for t in trials]
    assert list(frame["state"]) == [t.state.name.lower() for t in trials]
    for trial, (_, row) in zip(trials, frame.iterrows(), strict=True):
        assert row["retention"] == trial.user_attrs.get("retention")
        assert {k[7:]: v for k, v in row.items() if k.startswith("params_")} == full_params(trial)
        if trial.state == TrialState.COMPLETE:
            assert row["value"] == trial.value

    soup = summary["soup"]
    assert result.soup == (soup if soup and soup["answer"] else None)
    assert result.best_model_path == studies / "api" / "best_model"
    model, tokenizer = result.load_best_model()
    assert not model.training
    texts = ["the film was good", "a very nasty day"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    exported = AutoModelForSequenceClassification.from_pretrained(result.best_model_path).eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, exported(**batch).logits)
    assert f"Best config (trial {best.number})" in str(result)

    stored = {p: p.stat().st_mtime_ns for p in (studies / "api").rglob("*")}
    loaded = autoft.load(studies / "api")
    assert {p: p.stat().st_mtime_ns for p in (studies / "api").rglob("*")} == stored
    assert loaded.summary == result.summary
    pd.testing.assert_frame_equal(loaded.trials, result.trials)
    pd.testing.assert_frame_equal(loaded.price, result.price)
    assert (loaded.best_model_path, loaded.audit_interval) == (result.best_model_path,
                                                               result.audit_interval)


def test_load_reads_a_running_study_as_stored(tiny_study, tmp_path) -> None:
    """A trial running (asked, not told): load shows it, fails nothing, writes nothing."""
    _, folder = tiny_study
    shutil.copytree(folder, tmp_path / "tiny")
    storage = f"sqlite:///{tmp_path / 'tiny' / 'study.db'}"
    running = optuna.load_study(study_name="tiny", storage=storage).ask()
    stored = (tmp_path / "tiny" / "study.db").read_bytes()
    result = autoft.load(tmp_path / "tiny")
    assert (tmp_path / "tiny" / "study.db").read_bytes() == stored
    assert result.summary["counts"]["running"] == 1
    assert result.trials.iloc[-1][["number", "state"]].tolist() == [running.number, "running"]
    assert result.best_trial is not None and result.best_model_path is None  # none exported


def test_bad_input_is_a_usage_error_naming_the_argument(tiny_model_dir, tiny_csv,
                                                        tmp_path) -> None:
    with pytest.raises(autoft.UsageError, match=r"^autoft.search\(modle=...\): unknown setting"):
        autoft.search(modle=str(tiny_model_dir), train=str(tiny_csv))
    with pytest.raises(autoft.UsageError, match=r"^autoft.search\(base=\{'kind': ...\}\): "
                                                r"unknown base-task kind 'similar'"):
        autoft.search(model=str(tiny_model_dir), train=str(tiny_csv),
                      base={"kind": "similar", "data": str(tiny_csv)})
    with pytest.raises(autoft.UsageError, match="^No model given; pass autoft.search"):
        autoft.search(train=str(tiny_csv))
    with pytest.raises(autoft.UsageError, match="holds no study"):
        autoft.load(tmp_path)


@pytest.mark.slow
def test_import_autoft_brings_no_torch() -> None:
    code = "import sys, autoft; print(sorted({'torch', 'optuna', 'autoft.api'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"
