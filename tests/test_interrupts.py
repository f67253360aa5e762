"""Stopping and starting a study with real processes on real SQLite: an interrupted config runs
again (the default first), Ctrl-C still writes the report, a new study can be created by two
processes at once, a bad storage URL stops before anything is loaded, recorded paths are absolute,
a signal never cuts a storage call in half.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy import event

from autoft.cli import main
from autoft.schedule import budget_used
from autoft.signals import Stop
from autoft.storage import open_storage

START_1 = "starts:\n  - {learning_rate: 1.0e-3, trainable_layers: 0}\n"


def wait_for_log(path: Path, pattern: str, process: subprocess.Popen, limit: float = 240) -> None:
    end = time.time() + limit
    while time.time() < end:
        assert process.poll() is None, process.communicate()
        if path.is_file() and re.search(pattern, path.read_text()):
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never showed {pattern!r}")


def communicate_or_dump(process: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """The process's output once it ends; if it has not ended in `timeout`, where each of its
    threads stood (autoft's SIGUSR1 dump), then it is killed and the test fails with that."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGUSR1)
        time.sleep(2)
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"still running {timeout} s after the signal; its threads:\n{err[-6000:]}")


def search_in_its_default_trial(name, tiny_model_dir, slow_csv, tmp_path, cli_env, search_args,
                                wait_for_trial_in_progress, write_space):
    """A two-trial `autoft search` process, its command and studies folder, once its default
    trial is training."""
    space = write_space(tmp_path / "space.yaml", epochs=3, batch=8, starts=START_1)
    studies = tmp_path / "studies"
    args = search_args(tiny_model_dir, slow_csv, space, studies, name, 2, "cpu")
    process = subprocess.Popen(args, env=cli_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert wait_for_trial_in_progress(studies, name, process) == 0
    return args, studies, process


@pytest.mark.slow
def test_sigint_during_the_default_trial_runs_its_config_again_first(
    tiny_model_dir, slow_csv, tmp_path, cli_env, open_sqlite_study, search_args,
    wait_for_trial_in_progress, write_space
) -> None:
    args, studies, process = search_in_its_default_trial(
        "again", tiny_model_dir, slow_csv, tmp_path, cli_env, search_args,
        wait_for_trial_in_progress, write_space)
    process.send_signal(signal.SIGINT)
    out, err = communicate_or_dump(process, timeout=120)
    assert process.returncode == 130, out + err
    assert "Traceback" not in out + err
    assert "interrupted; run the same command again to resume" in err
    # one word for it everywhere: the screen said "failed (interrupted)" beside "0 failed"
    assert "trial 0 interrupted (its config runs again on resume)" in out + err
    assert "failed (interrupted)" not in out + err
    summary = json.loads((studies / "again" / "summary.json").read_text())
    assert summary["counts"]["interrupted"] == 1 and summary["counts"]["failed"] == 0
    assert summary["default"] is None

    status = subprocess.run(
        ["python", "-m", "autoft", "status", "--study", "again", "--studies-dir", str(studies)],
        env=cli_env(), capture_output=True, text=True, timeout=120)
    assert "did not finish: trial 0; their configs run again" in status.stdout, status

    result = subprocess.run(args, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    study = open_sqlite_study(studies, "again")
    interrupted, retry, start = sorted(study.get_trials(), key=lambda t: t.number)
    assert interrupted.user_attrs["fail_reason"] == "interrupted"
    assert retry.user_attrs["retry_of"] == 0 and retry.params == interrupted.params
    assert retry.state == TrialState.COMPLETE
    assert start.params["trainable_layers"] == 0, "the space's next start came after the retry"
    assert budget_used(study) == 2
    summary = json.loads((studies / "again" / "summary.json").read_text())
    assert summary["default"]["number"] == 1 and summary["default"]["value"] is not None


@pytest.mark.slow
def test_a_sigint_after_the_last_trial_still_writes_the_report_and_best_model(
    tiny_model_dir, tiny_csv, tmp_path, cli_env, open_sqlite_study, search_args, write_space
) -> None:
    space = write_space(tmp_path / "space.yaml", epochs=1)
    studies = tmp_path / "studies"
    args = search_args(tiny_model_dir, tiny_csv, space, studies, "late", 1, "cpu")
    process = subprocess.Popen(args, env=cli_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_for_log(studies / "late" / "logs" / "trial-0000.log", "trial 0 started", process)
    while not open_sqlite_study(studies, "late").get_trials(states=(TrialState.COMPLETE,)):
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, out + err
    assert "Traceback" not in out + err
    assert json.loads((studies / "late" / "summary.json").read_text())["best"]["number"] == 0
    assert (studies / "late" / "best_model" / "config.json").is_file()


def _open_when_told(url: str, go) -> None:
    go.wait()
    open_storage(url)


@pytest.mark.slow
def test_processes_creating_one_sqlite_storage_at_once_all_succeed(tmp_path) -> None:
    """Forked at once and released together, several rounds: without the file lock one process
    in most rounds fails on Alembic's version row (UNIQUE constraint failed)."""
    context = multiprocessing.get_context("fork")
    for round_ in range(4):
        url = f"sqlite:///{tmp_path / f'round{round_}.db'}"
        go = context.Event()
        processes = [context.Process(target=_open_when_told, args=(url, go)) for _ in range(4)]
        for process in processes:
            process.start()
        time.sleep(0.5)
        go.set()
        for process in processes:
            process.join(60)
        assert [p.exitcode for p in processes] == [0, 0, 0, 0], f"round {round_}"


@pytest.mark.slow
def test_two_searches_creating_the_same_study_at_once_both_finish(
    tiny_model_dir, tiny_csv, tmp_path, cli_env, open_sqlite_study, search_args, write_space
) -> None:
    space = write_space(tmp_path / "space.yaml", epochs=1, starts=START_1)
    studies = tmp_path / "studies"
    args = search_args(tiny_model_dir, tiny_csv, space, studies, "twice", 3, "cpu")
    processes = [subprocess.Popen(args, env=cli_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output
    study = open_sqlite_study(studies, "twice")
    trials = study.get_trials()
    assert budget_used(study) == 3 and len(trials) == 3
    assert sorted(t.user_attrs.get("start", -1) for t in trials) == [-1, 0, 1], "each start once"


@pytest.mark.parametrize("url", ["postgresql://nobody@127.0.0.1:1/none", "nosuchdb://x/y"])
def test_a_bad_storage_url_stops_before_anything_is_loaded(
    tiny_model_dir, tiny_csv, tmp_path, capsys, url
) -> None:
    studies = tmp_path / "studies"
    code = main(["search", "--model", str(tiny_model_dir), "--train", str(tiny_csv),
                 "--studies-dir", str(studies), "--study", "bad", "--storage", url])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("autoft: Cannot open storage") and len(err.strip().splitlines()) == 1
    assert not studies.exists(), "nothing prepared or written"


def test_a_relative_model_path_is_recorded_absolute_and_exports_from_elsewhere(
    tiny_model_dir, tiny_csv, tmp_path, monkeypatch, open_sqlite_study, write_space
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a path taken for a hub name fails at once
    space = write_space(tmp_path / "space.yaml", epochs=1)
    studies = tmp_path / "studies"
    monkeypatch.chdir(tiny_model_dir.parent)
    assert main(["search", "--model", tiny_model_dir.name, "--train", str(tiny_csv),
                 "--space", os.path.relpath(space, tiny_model_dir.parent),
                 "--studies-dir", str(studies), "--study", "rel", "--n-trials", "1",
                 "--devices", "cpu"]) == 0
    study = open_sqlite_study(studies, "rel")
    assert study.user_attrs["model"] == str(tiny_model_dir)
    assert Path(study.user_attrs["config"]["space"]).is_absolute()
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--study", "rel", "--studies-dir", str(studies), "out"]) == 0
    assert (tmp_path / "out" / "config.json").is_file()


def test_a_signal_inside_a_storage_call_interrupts_when_it_returns(tmp_path) -> None:
    """SIGINT lands, as it may, inside SQLAlchemy while a trial reports: right after a SELECT of
    the report's transaction. Raised there, the KeyboardInterrupt left the SQLite connection
    holding the write lock: the trial stayed RUNNING and every later write waited out the 60 s
    busy timeout and failed (a search that had not ended 120 s after Ctrl-C). Now the report is
    written whole, the trial is interrupted as it returns, and the database stays writable."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    stop = Stop()
    storage = open_storage(url, stop)
    study = optuna.create_study(storage=storage, study_name="shield")
    armed, landed = [], []

    @event.listens_for(storage.engine, "after_cursor_execute")
    def signal_here(conn, cursor, statement, *args) -> None:
        if armed and not landed and statement.lstrip().upper().startswith("SELECT"):
            landed.append(statement)
            os.kill(os.getpid(), signal.SIGINT)

    def objective(trial: optuna.Trial) -> float:
        with stop.trial():
            trial.report(0.5, 0)
            armed.append(True)
            trial.report(0.6, 1)
            time.sleep(30)  # not reached: the interrupt comes as the report returns
        return 1.0

    stop.install()
    started = time.time()
    try:
        with pytest.raises(KeyboardInterrupt):
            study.optimize(objective, n_trials=1)
    finally:
        stop.uninstall()
    assert landed and time.time() - started < 10
    trial = study.get_trials()[0]
    assert trial.state == TrialState.FAIL and trial.intermediate_values == {0: 0.5, 1: 0.6}
    other = RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 1}})
    other.set_study_user_attr(study._study_id, "written", True)  # "database is locked" before



@pytest.mark.slow
def test_a_closed_terminal_ends_the_search_as_sigterm_does(
    tiny_model_dir, slow_csv, tmp_path, cli_env, open_sqlite_study, search_args,
    wait_for_trial_in_progress, write_space
) -> None:
    """SIGHUP (a closed terminal or ssh connection) killed the search at once: no report, the
    trial left RUNNING, and the resume ran a new config before the default's. Here the screen
    is gone too (the pipes closed before the hang-up), as it is after a closed ssh session."""
    _, studies, process = search_in_its_default_trial(
        "hup", tiny_model_dir, slow_csv, tmp_path, cli_env, search_args,
        wait_for_trial_in_progress, write_space)
    process.stdout.close()
    process.stderr.close()
    process.send_signal(signal.SIGHUP)
    assert process.wait(timeout=120) == 130
    summary = json.loads((studies / "hup" / "summary.json").read_text())
    assert summary["counts"]["interrupted"] == 1 and summary["counts"]["failed"] == 0
    (trial,) = open_sqlite_study(studies, "hup").trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"] == "interrupted"
