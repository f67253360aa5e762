"""`autoft export` and `autoft report` against one real study made by `autoft search` with a
model folder that carries its own Python code (--trust-remote-code): no export inside a study
folder or over its inputs, even with --overwrite; nothing built on a changed model folder, and
the model's code run only where the user allowed it again; a failed trial refused in one true
sentence; a missing best model written by the report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autoft.cli import main
from autoft.record import TrialRecord

# The model's own code: it says in a file (named by the environment) each time it is imported.
CODE = '''import os

from transformers import BertForSequenceClassification

if os.environ.get("CODE_RAN_LOG"):
    with open(os.environ["CODE_RAN_LOG"], "a") as log:
        log.write("{tag}\\n")


class CodedBert(BertForSequenceClassification):
    pass
'''


def write_code(model: Path, tag: str) -> None:
    (model / "coded.py").write_text(CODE.format(tag=tag))


def autoft(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoft", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def coded_study(tmp_path_factory, save_tiny_bert, sentiment_rows, write_csv, write_space,
                cli_env):
    """A finished study: trial 0 (the default, learning rate 1e6) failed, trial 1 complete;
    returns (studies folder, model folder, space file, environment); the environment's
    CODE_RAN_LOG collects the model code's imports."""
    here = tmp_path_factory.mktemp("coded")
    model = save_tiny_bert(here / "model")
    write_code(model, "original")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "coded.CodedBert"}
    (model / "config.json").write_text(json.dumps(config))
    train = write_csv(here / "train.csv", sentiment_rows(80))
    (here / "spaces").mkdir()
    space = write_space(here / "spaces" / "space.yaml",
                        learning_rate="{choices: [1.0e-3, 1.0e+6], default: 1.0e+6}",
                        starts="starts:\n  - {learning_rate: 1.0e-3}\n")
    env = {**cli_env(), "CODE_RAN_LOG": str(here / "code-ran.log")}
    done = autoft("search", "--model", model, "--train", train, "--space", space,
                  "--studies-dir", here / "studies", "--study", "coded", "--n-trials", "2",
                  "--base-kind", "none", "--devices", "cpu", "--trust-remote-code", env=env)
    assert done.returncode == 0, done.stderr
    return here / "studies", model, space, env


def code_runs(env: dict) -> list[str]:
    log = Path(env["CODE_RAN_LOG"])
    runs = log.read_text().split() if log.is_file() else []
    log.unlink(missing_ok=True)
    return runs


def export_args(studies: Path, out: Path, *flags: str) -> list[str]:
    return ["export", "--study", "coded", "--studies-dir", str(studies), "--trust-remote-code",
            *flags, str(out)]


def test_export_never_writes_inside_a_study_folder_or_over_its_space(coded_study, capsys):
    studies, _, space, _ = coded_study
    other = studies / "other"  # another study's folder
    shutil.copytree(studies / "coded", other, ignore=shutil.ignore_patterns("best_model"))
    before = sorted(str(p) for p in studies.rglob("*")) + sorted(map(str, space.parent.iterdir()))
    for out, words in [(studies / "coded" / "trials", "lies in the study's own folder"),
                       (studies / "coded" / "logs", "lies in the study's own folder"),
                       (other, f"is study folder {other}"),
                       (other / "trials", f"lies in study folder {other}"),
                       (studies, f"holds the study's own folder {studies / 'coded'}"),
                       (space.parent, "holds the study's search space")]:
        for flags in ((), ("--overwrite",)):
            assert main(export_args(studies, out, *flags)) == 2, out
            error = capsys.readouterr().err
            assert f"autoft: Cannot export into {out}: it {words}" in error, error
            assert len(error.strip().splitlines()) == 1, error
    after = sorted(str(p) for p in studies.rglob("*")) + sorted(map(str, space.parent.iterdir()))
    assert after == before
    shutil.rmtree(other)


def test_a_failed_trial_is_refused_in_one_true_sentence(coded_study, tmp_path, capsys):
    studies, _, _, _ = coded_study
    assert main(export_args(studies, tmp_path / "zero", "--trial", "0")) == 2
    assert capsys.readouterr().err.strip() == (
        "autoft: Trial 0 failed: training loss became nan (not finite), so it has no weights "
        "to export; trial 1 can be exported.")
    assert not (tmp_path / "zero").exists()


def test_a_running_or_interrupted_trial_is_refused_in_one_true_sentence(
    coded_study, tmp_path, capsys
):
    """A running trial records its weights before its full check ends (autoft.study), so an
    export in that window would ship weights nobody has checked yet, as if final."""
    studies, _, _, _ = coded_study
    study = optuna.load_study(study_name="coded",
                              storage=f"sqlite:///{studies / 'coded' / 'study.db'}")
    running = study.ask()
    TrialRecord.write(running, checkpoint=TrialRecord.of(study.trials[1]).checkpoint,
                      best_value=1.0, best_step=2)
    out = tmp_path / "running"
    assert main(export_args(studies, out, "--trial", str(running.number))) == 2
    assert capsys.readouterr().err.strip() == (
        f"autoft: Trial {running.number} is still running, so it has no final weights yet; "
        f"trial 1 can be exported.")
    TrialRecord.write(running, fail_reason="interrupted")  # as a signal ends a trial
    study.tell(running, state=TrialState.FAIL)
    assert main(export_args(studies, out, "--trial", str(running.number))) == 2
    assert capsys.readouterr().err.strip() == (
        f"autoft: Trial {running.number} was interrupted (its config runs again when the study "
        f"resumes), so it has no weights to export; trial 1 can be exported.")
    assert not out.exists()


def test_the_models_code_runs_only_with_consent_and_only_as_the_study_ran_it(
    coded_study, tmp_path
):
    studies, model, _, env = coded_study
    code_runs(env)
    shutil.rmtree(studies / "coded" / "best_model")  # so the report would build it
    for command in (["export", tmp_path / "plain"], ["report"]):
        done = autoft(command[0], "--study", "coded", "--studies-dir", studies, *command[1:],
                      env=env)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert "was made with --trust-remote-code" in done.stderr, done.stderr
        assert "given --trust-remote-code too" in done.stderr, done.stderr
        assert code_runs(env) == []
    assert autoft(*export_args(studies, tmp_path / "allowed"), env=env).returncode == 0
    assert code_runs(env) == ["original"]
    assert (tmp_path / "allowed" / "coded.py").read_text() == (model / "coded.py").read_text()
    original = (model / "coded.py").read_text()
    write_code(model, "changed")
    try:
        for command in (["export", "--trust-remote-code", tmp_path / "changed"],
                        ["report", "--trust-remote-code"]):
            done = autoft(command[0], "--study", "coded", "--studies-dir", studies,
                          *command[1:], env=env)
            assert done.returncode == 2, (command, done.stderr)
            assert (f"autoft: The model folder {model} is not the one study 'coded' trained "
                    f"on") in done.stderr, done.stderr
            assert code_runs(env) == []
        assert not (tmp_path / "changed").exists()
    finally:
        (model / "coded.py").write_text(original)


def test_report_writes_a_missing_best_model(coded_study, capsys):
    """After a full disk stopped a search before its best model, the report writes it."""
    studies, _, _, _ = coded_study
    best_model = studies / "coded" / "best_model"
    shutil.rmtree(best_model, ignore_errors=True)
    assert main(["report", "--study", "coded", "--studies-dir", str(studies),
                 "--trust-remote-code"]) == 0
    assert f"Best model: {best_model}" in capsys.readouterr().out
    assert json.loads((best_model / ".autoft-export.json").read_text()) == {
        "study": "coded", "trial": 1}
