"""A study on PostgreSQL run by several worker processes at once, `autoft search` on one "machine"
and `autoft worker` on another (its own studies folder): the budget holds and no password leaks;
the job-array recipes of examples/ run as their tasks would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from autoft.config import build_config
from autoft.prepare import prepare_study
from autoft.schedule import budget_used
from autoft.storage import open_storage, open_study, with_installed_driver
from autoft.study_facts import record_study_facts

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SERVER = "127.0.0.1:5432/test"
PASSWORD = "s3cret-never-shown"


def server_answers() -> str | None:
    """None when the PostgreSQL server answers, else why not."""
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(with_installed_driver(f"postgresql://postgres@{SERVER}"))
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except Exception as error:  # no driver, no server, no database: all mean 'cannot test'
        return str(error).splitlines()[0]
    return None


@pytest.fixture
def postgres_url():
    """A password-bearing URL to the test database (trust auth ignores the password); the study
    made under a unique name is deleted afterwards."""
    reason = server_answers()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs PostgreSQL at {SERVER}: {reason}")
        pytest.skip(f"no PostgreSQL server answers at {SERVER}: {reason}")
    name = f"pg-{uuid.uuid4().hex[:10]}"
    url = f"postgresql://postgres:{PASSWORD}@{SERVER}"
    storage = open_storage(url)
    yield url, name, storage
    try:
        optuna.delete_study(study_name=name, storage=storage)
    except KeyError:
        pass
    storage.engine.dispose()


@pytest.mark.slow
def test_search_and_a_second_machine_s_workers_share_a_postgres_study(
    postgres_url, tiny_model_dir, tmp_path, sentiment_rows, write_csv, cli_env, search_args,
    write_space
) -> None:
    """The study is made first (as `autoft search` makes it), then a resumed search with two
    workers and `autoft worker` with one, from another studies folder, run it together."""
    url, name, storage = postgres_url
    train = write_csv(tmp_path / "train.csv", sentiment_rows(400))
    # Trials of a few seconds each: long enough that no one process can take all eight before
    # the others have started (the search's workers start last: a forkserver, then a fork each).
    space = write_space(tmp_path / "space.yaml", epochs=10, batch=8)
    here, there = tmp_path / "here", tmp_path / "there"
    args = search_args(tiny_model_dir, train, space, here, name, 8, "cpu:2") + ["--storage", url]
    config = build_config({}, None, {
        "model": str(tiny_model_dir), "train": str(train), "space": str(space), "n_trials": 8,
        "name": name, "studies_dir": str(here), "storage": url, "devices": "cpu",
        "base_kind": "none"})  # as search_args gives it
    record_study_facts(open_study(config), prepare_study(config, echo=lambda line: None))

    search = subprocess.Popen(args, env=cli_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    worker = subprocess.Popen(
        [sys.executable, "-m", "autoft", "worker", "--study", name, "--storage", url,
         "--studies-dir", str(there), "--devices", "cpu"],
        env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    search_output, _ = search.communicate(timeout=300)
    worker_output, _ = worker.communicate(timeout=300)
    assert search.returncode == 0, search_output
    assert worker.returncode == 0, worker_output

    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials()
    assert budget_used(study) == 8
    assert len(trials) == 8 and all(t.state.is_finished() for t in trials)
    pids = {t.user_attrs["worker"]["pid"] for t in trials}
    assert worker.pid in pids, "the joining worker ran no trial"
    assert len(pids) >= 2, "the search's workers ran no trial"
    assert (there / name / "prepared" / "target.json").is_file(), "the worker prepared locally"

    shown = search_output + worker_output
    assert "postgres:***@127.0.0.1" in shown
    written = [p.read_text() for folder in (here, there) for p in folder.rglob("*")
               if p.is_file() and p.suffix in (".json", ".log", ".md", ".html")]
    attrs = json.dumps([study.user_attrs] + [t.user_attrs for t in trials])
    for text in [shown, attrs, *written]:
        assert PASSWORD not in text
    assert study.user_attrs["config"]["storage"] == f"postgresql://postgres:***@{SERVER}"
    assert (here / name / "summary.json").is_file()


@pytest.mark.slow
def test_an_interrupted_default_runs_again_first_on_postgres_with_two_workers(
    postgres_url, tiny_model_dir, tmp_path, sentiment_rows, write_csv, cli_env, search_args,
    wait_for_trial_in_progress, write_space
) -> None:
    """Ctrl-C during trial 0 (the default config); the resumed search's two workers take the
    next trials under the advisory lock: the default's config exactly once, and first."""
    import signal

    from optuna.trial import TrialState

    url, name, storage = postgres_url
    train = write_csv(tmp_path / "train.csv", sentiment_rows(400))
    space = write_space(tmp_path / "space.yaml", epochs=3, batch=8)
    args = search_args(tiny_model_dir, train, space, tmp_path, name, 3, "cpu") + ["--storage", url]
    search = subprocess.Popen(args, env=cli_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    assert wait_for_trial_in_progress(tmp_path, name, search) == 0
    search.send_signal(signal.SIGINT)
    output, _ = search.communicate(timeout=120)
    assert search.returncode == 130, output
    assert "Traceback" not in output

    resume = subprocess.run(search_args(tiny_model_dir, train, space, tmp_path, name, 3, "cpu:2")
                            + ["--storage", url], env=cli_env(),
                            capture_output=True, text=True, timeout=300)
    assert resume.returncode == 0, resume.stdout + resume.stderr
    study = optuna.load_study(study_name=name, storage=storage)
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    assert trials[0].user_attrs["fail_reason"] == "interrupted"
    assert [t.number for t in trials if t.user_attrs.get("retry_of") == 0] == [1]
    assert trials[1].params == trials[0].params and trials[1].state == TrialState.COMPLETE
    assert budget_used(study) == 3
    summary = json.loads((tmp_path / name / "summary.json").read_text())
    assert summary["default"]["number"] == 1


def test_a_second_machine_with_other_data_is_refused(
    postgres_url, tiny_model_dir, tmp_path, sentiment_rows, write_csv, write_space
) -> None:
    """A PostgreSQL study continued from another folder (no prepared/ there) with a data file
    of the same name but other content: the storage, not the folder, says it is not the same."""
    from autoft.errors import UsageError

    url, name, storage = postgres_url
    space = write_space(tmp_path / "space.yaml")
    here, there = tmp_path / "here", tmp_path / "there"
    for folder, seed in ((here, 0), (there, 1)):
        folder.mkdir()
        write_csv(folder / "train.csv", sentiment_rows(80, seed=seed))

    def config(folder):
        return build_config({}, None, {
            "model": str(tiny_model_dir), "train": str(folder / "train.csv"),
            "space": str(space), "name": name, "studies_dir": str(folder / "studies"),
            "storage": url})

    record_study_facts(open_study(config(here)), prepare_study(config(here), echo=print))
    with pytest.raises(UsageError, match="was run on other data or model settings"):
        prepare_study(config(there), echo=print)
    assert not (there / "studies" / name / "prepared").exists()


@pytest.mark.slow
def test_job_array_tasks_share_a_postgres_study_and_lose_nothing_to_a_kill(
    postgres_url, tiny_model_dir, tmp_path, sentiment_rows, write_csv, cli_env, write_space,
    wait_for_trial_in_progress
) -> None:
    """The example recipes run as their tasks would, all started at once, each in its own
    folder, sharing only the storage URL and the study name: the sbatch file's task 0 (`autoft
    search`) and task 1, and the Kubernetes Job's pod 2 (`autoft worker`, waiting until task 0
    has created the study). Task 1 is killed with SIGKILL mid-trial: its trial is found stale
    and runs again, and the study ends with exactly its budget."""
    url, name, storage = postgres_url
    write_csv(tmp_path / "train.csv", sentiment_rows(400))
    write_space(tmp_path / "space.yaml", epochs=6, batch=8)
    study_file = tmp_path / "study.yaml"
    study_file.write_text(f"model: {tiny_model_dir}\ntrain: train.csv\nspace: space.yaml\n"
                          "n_trials: 6\ndevices: cpu\n")
    shared = tmp_path / "shared"
    env = cli_env() | {"AUTOFT_STORAGE": url, "AUTOFT_STUDY": name,
                       "AUTOFT_STUDY_FILE": str(study_file), "AUTOFT_FOLDERS": str(shared),
                       "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    pod = yaml.safe_load((EXAMPLES / "kubernetes" / "autoft-workers.yaml").read_text())
    container = pod["spec"]["template"]["spec"]["containers"][0]
    sbatch = ["bash", str(EXAMPLES / "slurm" / "autoft-workers.sbatch")]
    commands = [(sbatch, {"SLURM_ARRAY_TASK_ID": "0"}), (sbatch, {"SLURM_ARRAY_TASK_ID": "1"}),
                ([*container["command"], *container["args"]], {"JOB_COMPLETION_INDEX": "2"})]
    tasks = []
    for index, (command, task_env) in enumerate(commands):
        (tmp_path / f"node-{index}").mkdir()
        tasks.append(subprocess.Popen(command, cwd=tmp_path / f"node-{index}",
                                      env=env | task_env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    try:
        number = wait_for_trial_in_progress(shared / "task-1", name, tasks[1])
        tasks[1].send_signal(signal.SIGKILL)  # exec'd: the task's process is autoft itself
        tasks[1].wait(timeout=30)
        outputs = [task.communicate(timeout=300)[0] for task in (tasks[0], tasks[2])]
    finally:
        for task in tasks:
            task.kill()
    assert [tasks[0].returncode, tasks[2].returncode] == [0, 0], "\n".join(outputs)

    study = optuna.load_study(study_name=name, storage=storage)
    trials = {t.number: t for t in study.get_trials()}
    victim = trials[number]
    assert victim.state == TrialState.FAIL and victim.user_attrs["worker"]["pid"] == tasks[1].pid
    retries = [t for t in trials.values() if t.user_attrs.get("retry_of") == number]
    assert len(retries) == 1 and retries[0].params == victim.params
    assert retries[0].state.is_finished()
    assert budget_used(study) == 6
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert {t.user_attrs["worker"]["pid"] for t in trials.values()} >= {
        tasks[0].pid, tasks[2].pid}, "the search and the pod both ran trials"
    assert (shared / "task-0" / name / "best_model").is_dir()
    assert all(PASSWORD not in output for output in outputs)


def test_a_postgres_study_folder_run_without_its_storage_is_refused(
    postgres_url, tiny_model_dir, tiny_csv, tmp_path, capsys
) -> None:
    """The same command once without --storage (a natural slip) made a second, SQLite study in
    the folder, which ran from trial 0 over the first one's trial folders; status there said
    only 'no study'. The folder's identity names the storage, never its password."""
    from autoft.cli import main

    url, name, _ = postgres_url
    studies = tmp_path / "studies"
    args = ["--study", name, "--studies-dir", str(studies)]
    search = ["search", "--model", str(tiny_model_dir), "--train", str(tiny_csv),
              "--base-kind", "none", *args]
    config = build_config({}, None, {"model": str(tiny_model_dir), "train": str(tiny_csv),
                                     "name": name, "studies_dir": str(studies),
                                     "storage": url, "base_kind": "none"})
    record_study_facts(open_study(config), prepare_study(config, echo=print))
    capsys.readouterr()
    assert main(search) == 2
    err = capsys.readouterr().err
    redacted = url.replace(PASSWORD, "***")
    assert f"stored in {redacted}, not its own study.db" in err, err
    assert f"pass --storage {redacted}" in err and PASSWORD not in err
    assert not (studies / name / "study.db").exists()
    assert main(["status", *args]) == 2
    err = capsys.readouterr().err
    assert f"is stored in {redacted}; pass --storage" in err, err
