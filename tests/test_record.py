"""Tests for autoft.record: a trial writes its record through TrialRecord into a real SQLite
storage, and a reloaded study reads it back typed, as plain user attributes to any other client."""

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autoft.record import FIELDS, TrialRecord


def storage_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'study.db'}"


def test_a_record_written_by_a_trial_reads_back_typed_from_a_reloaded_study(tmp_path) -> None:
    study = optuna.create_study(study_name="recorded", storage=storage_url(tmp_path),
                                direction="maximize")
    study.enqueue_trial({"x": 0.5}, user_attrs=TrialRecord.attrs(start=0))

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        TrialRecord.write(trial, params={"x": x, "epochs": 3}, seed=7, cache_used=False)
        for step in (1, 2):  # written as it trains, each evaluation read back by the next
            evaluations = TrialRecord.of(trial).evaluations
            TrialRecord.write(trial, evaluations=[*evaluations, {"step": step, "value": x}],
                              quick_retention=[*TrialRecord.of(trial).quick_retention, 0.9])
        TrialRecord.write(trial, retention=0.95, retention_interval=[0.9, 1.0],
                          constraint=[-0.05])
        return x

    study.optimize(objective, n_trials=1)

    trial = optuna.load_study(study_name="recorded", storage=storage_url(tmp_path)).trials[0]
    record = TrialRecord.of(trial)
    assert record.start == 0 and record.params == {"x": 0.5, "epochs": 3} and record.seed == 7
    assert record.evaluations == [{"step": 1, "value": 0.5}, {"step": 2, "value": 0.5}]
    assert record.quick_retention == [0.9, 0.9]
    assert record.retention == 0.95 and record.retention_interval == [0.9, 1.0]
    assert record.cache_used is False and record.constraint == [-0.05]
    # what optuna-dashboard shows: the same plain user attributes, under the field names
    assert trial.user_attrs["retention"] == 0.95 and set(trial.user_attrs) <= FIELDS


def test_absent_attributes_read_as_the_fields_defaults(tmp_path) -> None:
    study = optuna.create_study(study_name="bare", storage=storage_url(tmp_path))
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL,
                                              user_attrs={"an_older_key": 1}))
    record = TrialRecord.of(study.trials[0])
    assert record == TrialRecord()  # an attribute that is no field is left out
    assert record.retention is None and record.fail_reason is None and record.start is None
    assert record.evaluations == [] and record.params == {} and record.constraint == []
    assert record.counts_toward_budget is False


def test_a_misspelled_field_raises_and_writes_nothing(tmp_path) -> None:
    study = optuna.create_study(study_name="typo", storage=storage_url(tmp_path))
    trial = study.ask()
    with pytest.raises(TypeError, match="retension"):
        TrialRecord.write(trial, retention=0.9, retension=0.9)
    with pytest.raises(TypeError, match="retryof"):
        TrialRecord.attrs(retryof=3)
    assert study.trials[0].user_attrs == {}
    with pytest.raises(AttributeError):
        _ = TrialRecord.of(study.trials[0]).retension  # and a reader's, where it reads
