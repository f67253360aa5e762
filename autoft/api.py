"""autoft from Python: `search(...)` runs a study in this process on the path `autoft search`
takes (same storage, folder, report and best model), `load(study_dir)` reads a finished or
running study without writing to it; both give a `StudyResult`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from autoft import commands
from autoft.config import build_config, flat_settings, load_yaml, python_argument
from autoft.errors import UsageError
from autoft.export import export_marker, load_answer_model, read_marker
from autoft.files import full_disk_said
from autoft.record import TrialRecord
from autoft.report import nothing_to_show, summary_text
from autoft.storage import load_study, quiet_optuna, sqlite_path
from autoft.summary import build_summary, trial_entry

__all__ = ["StudyResult", "load", "search"]


@dataclass(frozen=True)
class StudyResult:
    """What a study found, read from its storage as summary.json is (`summary` holds it all).

    `best_*` describe the best feasible trial, as the report's "Best config" does. Where a soup
    of the best trials beat it, `soup` holds that soup (its members, score and audit), and the
    best model (`best_model_path`, `load_best_model`) is the soup: the study's answer.
    """

    study_dir: Path
    summary: dict = field(repr=False)
    trials: pd.DataFrame = field(repr=False)  # a row per trial, params as params_<name>
    price: pd.DataFrame = field(repr=False)  # the best score at each retention bar
    best_model_path: Path | None  # best_model/, while it holds the answer below
    answer: tuple | None = field(repr=False)  # (soup, trial) for load_answer_model; None: none
    attrs: dict = field(repr=False)  # the study's user attributes, which the model load reads

    @classmethod
    def read(cls, study: optuna.Study, study_dir: Path) -> StudyResult:
        summary = build_summary(study)
        trials = study.get_trials(deepcopy=False)
        best, soup = summary["best"], summary["soup"]
        answer = None
        if best is not None:
            trial = next(t for t in trials if t.number == best["number"])
            answer = (soup if soup and soup["answer"] else None, trial)
        folder = Path(study_dir) / "best_model"
        exported = answer is not None and read_marker(folder) == export_marker(
            study.study_name, *answer)
        return cls(Path(study_dir), summary, trials_frame(trials, study.user_attrs.get("audits")),
                   pd.DataFrame(summary.get("price") or []), folder if exported else None,
                   answer, study.user_attrs)

    @property
    def best_trial(self) -> int | None:
        return self._best("number")

    @property
    def best_config(self) -> dict | None:
        """Every param of the best trial, searched and fixed."""
        return self._best("params")

    @property
    def best_value(self) -> float | None:
        """The best trial's validation score, in `summary['metric']`."""
        return self._best("value")

    @property
    def audit_retention(self) -> float | None:
        """The best trial's retention on the held-out base data no trial was checked on."""
        audit = self._best("audit")
        return audit["retention"] if audit else None

    @property
    def audit_interval(self) -> tuple[float, float] | None:
        """The 95% bootstrap interval of `audit_retention`."""
        audit = self._best("audit")
        return (audit["low"], audit["high"]) if audit else None

    @property
    def soup(self) -> dict | None:
        """The soup of trials that is the study's answer, or None where none won."""
        return self.answer[0] if self.answer else None

    def _best(self, key: str) -> Any:
        best = self.summary["best"]
        return best[key] if best else None

    def load_best_model(self):
        """The best model (the soup where one won) and its tokenizer or image processor, built
        from the base model and the weights the study kept, in eval mode: ready to predict."""
        if self.answer is None:
            raise UsageError(nothing_to_show(self.summary))
        model, processor = load_answer_model(self.attrs, *self.answer)
        return model.eval(), processor

    def __str__(self) -> str:
        """The summary `autoft search` and `autoft report` print."""
        return summary_text(self.summary)


def trials_frame(trials: list[optuna.trial.FrozenTrial], audits: dict | None) -> pd.DataFrame:
    """A row per trial as summary.json describes one, with its failure's reason, and its params
    as params_<name> columns (the names of Optuna's trials_dataframe)."""
    rows = []
    for trial in trials:
        entry = trial_entry(trial, audits)
        params = entry.pop("params")
        rows.append(entry | {"fail_reason": TrialRecord.of(trial).fail_reason}
                    | {f"params_{name}": value for name, value in sorted(params.items())})
    return pd.DataFrame(rows)


def search(study_file: str | Path | None = None, **settings: Any) -> StudyResult:
    """Run (or resume) a study here, as `autoft search` does, and return what it found.

    `settings` are a study file's fields (`base` a mapping: kind, data, min_retention, ...),
    winning over the file's. Bad input raises UsageError, a study with no best config
    NothingToShow (after its report; `load` reads it), Ctrl-C KeyboardInterrupt (after its
    report; the same call resumes).
    """
    if threading.current_thread() is not threading.main_thread():
        raise UsageError(
            "autoft.search runs in the main thread: it stops trials cleanly on Ctrl-C and at "
            "the time limit through signals, which only the main thread receives; call it there."
        )
    file_settings = load_yaml(study_file) if study_file else {}
    config = build_config(file_settings, study_file, flat_settings(settings, python_argument),
                          python_argument)
    quiet_optuna()
    with full_disk_said(config.name):
        study = commands.search(config)
    return StudyResult.read(study, config.study_dir)


def load(study_dir: str | Path, storage: str | None = None) -> StudyResult:
    """A study folder's result, finished or still running, read without writing anything (no
    audit, no report, stale trials left as stored); `storage`: its URL where it is not the
    folder's SQLite file (PostgreSQL)."""
    study_dir = Path(study_dir)
    if storage is None and not sqlite_path(study_dir).is_file():
        raise UsageError(
            f"{study_dir} holds no study (no study.db); give a study folder that autoft made, "
            f"and storage= for one whose storage is PostgreSQL."
        )
    study = load_study(study_dir.name, str(study_dir.parent), storage, read_only=True)
    return StudyResult.read(study, study_dir)
