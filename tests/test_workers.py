"""Tests for autoft.workers: device slots, and real worker processes on SQLite that keep the budget
exact, survive kill -9 and SIGINT, and fail a NaN trial alone.
"""

from __future__ import annotations

import gc
import logging
import signal
import subprocess
import sys
import time
import weakref

import optuna
import pytest
from optuna.trial import TrialState

from autoft.cli import main
from autoft.devices import Slot, device_slots
from autoft.errors import UsageError
from autoft.schedule import budget_used, queue_next_config
from autoft.signals import Stop
from autoft.storage import redact, storage_url
from autoft.workers import long_lived_objects_frozen


class Node:
    """One object of a reference cycle, which only the collector frees."""


def test_trials_run_with_long_lived_objects_frozen_and_garbage_collected_first() -> None:
    kept = Node()
    cycle = Node()
    cycle.loop = cycle
    gone = weakref.ref(cycle)
    del cycle
    with long_lived_objects_frozen():
        assert gone() is None, "garbage from before is collected, not frozen"
        assert gc.get_freeze_count() > 0
        trial_garbage = Node()
        trial_garbage.loop = trial_garbage
        during = weakref.ref(trial_garbage)
        del trial_garbage
        gc.collect()  # what Optuna's gc_after_trial does
        assert during() is None, "a trial's own garbage is still collected"
    assert gc.get_freeze_count() == 0 and kept is not None


def test_auto_on_a_cpu_machine_is_one_worker_with_every_core() -> None:
    assert device_slots("auto", cores=2, gpus=0) == [Slot("cpu", 2)]
    assert device_slots("auto", cores=8, gpus=0) == [Slot("cpu", 4), Slot("cpu", 4)]


def test_cpu_n_splits_the_cores() -> None:
    assert device_slots("cpu:3", cores=8, gpus=0) == [Slot("cpu", 2)] * 3


def test_auto_packs_trials_on_every_gpu(monkeypatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    slots = device_slots("auto", trials_per_gpu=2, cores=16, gpus=2)
    assert [(s.device, s.visible, s.torch_device) for s in slots] == [
        ("cuda:0", "0", "cuda:0"), ("cuda:0", "0", "cuda:0"),
        ("cuda:1", "1", "cuda:0"), ("cuda:1", "1", "cuda:0"),
    ]
    assert {s.threads for s in slots} == {4}


def test_a_gpu_list_keeps_the_parents_visible_numbering(monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7")
    slots = device_slots("cuda:0, cuda:2", cores=4, gpus=3)
    assert [(s.device, s.visible) for s in slots] == [("cuda:0", "4"), ("cuda:2", "7")]


@pytest.mark.parametrize(
    ("devices", "gpus", "message"),
    [
        ("gpu", 1, "is not a device list"),
        ("cuda:0,cpu", 1, "is not a device list"),
        ("cuda:1", 1, "cuda:1 does not exist (visible CUDA GPUs: cuda:0 to cuda:0)"),
        ("cuda:0", 0, "cuda:0 does not exist (visible CUDA GPUs: none)"),
        ("cuda:0,cuda:0", 2, "names a GPU twice"),
        ("cpu:0", 0, "asks for no worker"),
        ("cuda", 0, "none is visible"),
    ],
)
def test_bad_device_strings_name_the_flag_and_the_fix(devices, gpus, message) -> None:
    with pytest.raises(UsageError, match="^--devices: ") as error:
        device_slots(devices, cores=4, gpus=gpus)
    assert message in str(error.value)


def test_redact_hides_only_the_password() -> None:
    url = "postgresql://alice:p%40ss@db.example:5432/studies"
    assert redact(url) == "postgresql://alice:***@db.example:5432/studies"
    assert redact("sqlite:////tmp/x/study.db") == "sqlite:////tmp/x/study.db"


def test_a_nan_trial_fails_alone_with_its_reason(
    tiny_model_dir, tiny_csv, tmp_path, open_sqlite_study, write_space
) -> None:
    """Trial 0 trains at learning rate 1e6, so its loss overflows; trial 1 is sane."""
    from autoft.config import build_config
    from autoft.prepare import prepare_study
    from autoft.storage import open_study
    from autoft.study_facts import record_study_facts
    from autoft.workers import work

    space = write_space(
        tmp_path / "space.yaml",
        learning_rate="{choices: [1.0e-3, 1.0e+6], default: 1.0e+6}",
        starts="starts:\n  - {learning_rate: 1.0e-3}\n",
    )
    config = build_config({}, None, {
        "model": str(tiny_model_dir), "train": str(tiny_csv), "space": str(space),
        "n_trials": 2, "name": "nan", "studies_dir": str(tmp_path / "studies")})
    prepared = prepare_study(config, echo=lambda line: None)
    record_study_facts(open_study(config), prepared)
    assert work(prepared, storage_url(config), Slot("cpu", 1)) is False
    study = open_sqlite_study(tmp_path / "studies", "nan")
    first, second = sorted(study.get_trials(), key=lambda t: t.number)
    assert first.state == TrialState.FAIL
    assert first.params["learning_rate"] == 1.0e6
    assert "not finite" in first.user_attrs["fail_reason"]
    assert second.state == TrialState.COMPLETE
    assert budget_used(study) == 2
    log_text = (tmp_path / "studies" / "nan" / "logs" / "trial-0000.log").read_text()
    assert "trial 0 failed: training loss became" in log_text


@pytest.mark.slow
def test_three_workers_end_with_exactly_the_budget(
    tiny_model_dir, tiny_csv, tmp_path, capsys, cli_env, open_sqlite_study, search_args,
    write_space
) -> None:
    space = write_space(tmp_path / "space.yaml", epochs=6)  # long enough for every worker to join
    studies = tmp_path / "studies"
    lines = tiny_csv.read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b"e", b"\xe9", 1)  # one Latin-1 line: read as such, no
    train = tmp_path / "train.csv"  # worker's reading it again as base data says a word
    train.write_bytes(b"".join(lines))
    drift = ["--base-kind", "drift", "--base-data", str(train), "--min-retention", "0"]
    result = subprocess.run(
        search_args(tiny_model_dir, train, space, studies, "three", 7, "cpu:3",
                    checked=True) + drift,
        env=cli_env(), capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "database is locked" not in output
    assert "UTF-8" not in output, output
    assert "3 workers on cpu, cpu, cpu" in output
    study = open_sqlite_study(studies, "three")
    trials = study.get_trials()
    assert budget_used(study) == 7
    assert len(trials) == 7 and all(t.state.is_finished() for t in trials)
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) >= 2
    for trial in trials:
        log_text = (studies / "three" / "logs" / f"trial-{trial.number:04d}.log").read_text()
        assert f"trial {trial.number} started on cpu" in log_text
    assert main(["status", "--study", "three", "--studies-dir", str(studies)]) == 0
    status = capsys.readouterr().out
    assert "of 7 · 0 running" in status


@pytest.mark.slow
def test_a_killed_lone_worker_s_trial_is_seen_stale_at_once_and_retried_clean(
    tiny_model_dir, slow_csv, tmp_path, cli_env, open_sqlite_study, search_args,
    wait_for_trial_in_progress, write_space
) -> None:
    """kill -9 of the only worker: within two heartbeats `autoft status` shows its trial as not
    finished, not running; on resume its config runs again with none of its measurements (the
    forgetting check's per-evaluation history would otherwise add up)."""
    space = write_space(tmp_path / "space.yaml", epochs=3, batch=8)
    studies = tmp_path / "studies"
    args = search_args(tiny_model_dir, slow_csv, space, studies, "killed", 3, "cpu",
                       checked=True) + [
        "--base-kind", "drift", "--base-data", str(slow_csv)]
    process = subprocess.Popen(args, env=cli_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    number = wait_for_trial_in_progress(studies, "killed", process)
    study = open_sqlite_study(studies, "killed")
    while "quick_retention" not in study.get_trials()[number].user_attrs:
        assert process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    victim = study.get_trials()[number]
    assert victim.state == TrialState.RUNNING

    time.sleep(2.5)  # two heartbeats of AUTOFT_HEARTBEAT_SECONDS=1, and a half
    status = subprocess.run(
        [sys.executable, "-m", "autoft", "status", "--study", "killed", "--studies-dir",
         str(studies)], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert "0 running" in status.stdout, status.stdout + status.stderr
    assert f"did not finish: trial {number}; their configs run again" in status.stdout
    assert study.get_trials()[number].state == TrialState.FAIL

    result = subprocess.run(args, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    trials = study.get_trials()
    retries = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(retries) == 1
    retry = retries[0]
    assert retry.state.is_finished() and retry.params == victim.params
    assert len(retry.user_attrs["quick_retention"]) == len(retry.user_attrs["evaluations"])
    assert retry.user_attrs["worker"]["pid"] != process.pid
    assert budget_used(study) == 3
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


@pytest.mark.slow
def test_sigint_marks_running_trials_interrupted_and_the_study_resumes(
    tiny_model_dir, slow_csv, tmp_path, cli_env, open_sqlite_study, search_args,
    wait_for_trial_in_progress, write_space
) -> None:
    space = write_space(tmp_path / "space.yaml", epochs=3, batch=8)
    studies = tmp_path / "studies"
    args = search_args(tiny_model_dir, slow_csv, space, studies, "sigint", 3, "cpu:2")
    process = subprocess.Popen(args, env=cli_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_for_trial_in_progress(studies, "sigint", process)
    process.send_signal(signal.SIGINT)  # to the parent only: it forwards to its workers
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, out + err
    assert "interrupted; run the same command again to resume" in err
    assert "Traceback" not in out + err
    study = open_sqlite_study(studies, "sigint")
    first_run = study.get_trials()
    interrupted = [t for t in first_run if t.user_attrs.get("fail_reason") == "interrupted"]
    assert interrupted and all(t.state == TrialState.FAIL for t in interrupted)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert budget_used(study) < 3

    # the devices may change between runs; the study is the same
    resume = search_args(tiny_model_dir, slow_csv, space, studies, "sigint", 3, "cpu")
    result = subprocess.run(resume, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert budget_used(study) == 3
    assert not study.get_trials(states=(TrialState.RUNNING,))
    trials = study.get_trials()
    rerun = [t for t in interrupted if t.params]  # a trial stopped before sampling ran nothing
    for stopped in rerun:  # with two workers, two configs were lost before
        again = [t for t in trials if t.user_attrs.get("retry_of") == stopped.number]
        assert len(again) == 1 and again[0].params == stopped.params, stopped.number
    resumed = [t for t in trials if t.number >= len(first_run)]
    assert all("retry_of" in t.user_attrs for t in resumed[:len(rerun)]), "retries come first"


@pytest.mark.slow
def test_the_hard_time_limit_interrupts_a_running_trial(
    tiny_model_dir, slow_csv, tmp_path, open_sqlite_study, write_space
) -> None:
    """Past the timeout no trial starts; past the hard limit the running one is interrupted."""
    from autoft.config import build_config
    from autoft.prepare import prepare_study
    from autoft.storage import open_study
    from autoft.study_facts import record_study_facts
    from autoft.workers import work

    space = write_space(tmp_path / "space.yaml", epochs=500, batch=8)  # far past the limit
    config = build_config({}, None, {
        "model": str(tiny_model_dir), "train": str(slow_csv), "space": str(space),
        "n_trials": 3, "name": "hard", "studies_dir": str(tmp_path / "studies"),
        "base_kind": "none"})  # a worker with a check to set up may not ask a trial in 1 s
    prepared = prepare_study(config, echo=lambda line: None)
    record_study_facts(open_study(config), prepared)
    now = time.time()
    assert work(prepared, storage_url(config), Slot("cpu", 1), now + 1, now + 4) is False
    trials = open_sqlite_study(tmp_path / "studies", "hard").get_trials()
    assert [(t.state, t.user_attrs.get("fail_reason")) for t in trials] == [
        (TrialState.FAIL, "interrupted")
    ]
    assert time.time() - now < 30
    study = open_sqlite_study(tmp_path / "studies", "hard")
    queue_next_config(study)  # what the next worker does before it asks for a trial
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [(t.user_attrs["retry_of"], t.system_attrs["fixed_params"]) for t in waiting] == [
        (0, trials[0].params)
    ]


def test_an_interrupt_a_weakref_callback_swallowed_is_delivered_again(capfd) -> None:
    """A signal can land while the garbage collector runs a weakref callback, whose exceptions
    Python only prints: the interrupt must still stop the trial, and print nothing."""
    stop = Stop()
    stop.install()

    class Thing:
        pass

    try:
        with pytest.raises(KeyboardInterrupt), stop.trial():
            thing = Thing()
            ref = weakref.ref(thing, lambda _ref: stop._on_signal(signal.SIGINT, None))
            del thing  # the callback runs now and raises, as the signal handler would there
            assert ref() is None and stop.requested
            time.sleep(2)  # the trial's own code, where the interrupt arrives again
    finally:
        stop.uninstall()
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.slow
def test_status_reads_the_storage_without_torch(tiny_study) -> None:
    """`autoft status` imports what reading the storage needs, not the training stack (13 s)."""
    _, folder = tiny_study
    code = ("import sys; from autoft.cli import main; "
            f"code = main(['status', '--study', 'tiny', '--studies-dir', {str(folder.parent)!r}]); "
            "print(code, sorted({'torch', 'transformers', 'matplotlib'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert "Study 'tiny': " in done.stdout
    assert done.stdout.splitlines()[-1] == "0 []"


DEFAULT = {"learning_rate": 1e-4, "head_lr_multiplier": 10.0, "batch_size": 32,
           "trainable_layers": 1, "epochs": 1, "weight_decay": 0.01, "warmup_ratio": 0.1}


def study_with_starts(tmp_path, starts: list[dict]) -> optuna.Study:
    """A real SQLite study with the facts a search records, and start 0 finished at 2 ms a
    sample with its one top layer (1 ms a sample per layer and head)."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="s")
    for key, value in {"starts": starts, "default_params": DEFAULT, "train_examples": 1000,
                       "depth": 6}.items():
        study.set_user_attr(key, value)
    evaluation = {"step": 1, "samples_seen": 1000, "value": 0.5, "train_seconds": 2.0}
    study.add_trial(optuna.trial.create_trial(
        value=0.5, user_attrs={"start": 0, "params": DEFAULT, "evaluations": [evaluation]}))
    return study


def test_a_start_that_cannot_finish_before_the_timeout_is_skipped_and_said(tmp_path, caplog):
    """Full depth for 2 epochs would train about 1 ms x 7 x 2,000 samples = 14 s: with 10 s
    left it is skipped (said, and recorded), and the next start, about 3 s, runs instead."""
    starts = [DEFAULT, {"trainable_layers": 6, "epochs": 2}, {"trainable_layers": 2}]
    study = study_with_starts(tmp_path, starts)
    with caplog.at_level(logging.INFO, logger="autoft"):
        queue_next_config(study, seconds_left=10.0)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [(t.user_attrs["start"], t.system_attrs["fixed_params"]) for t in waiting] == [
        (2, {"trainable_layers": 2})]
    why = "it would train for about 14s and 10s are left before the timeout"
    assert study.user_attrs["skipped_starts"] == {"1": why}
    assert f"start 1 (top 6/6 layers, lr 1.0e-04 (head ×10), batch 32, 2 epochs) is skipped: " \
           f"{why}" in caplog.text


def test_without_a_timeout_every_start_runs(tmp_path):
    starts = [DEFAULT, {"trainable_layers": 6, "epochs": 2}]
    study = study_with_starts(tmp_path, starts)
    queue_next_config(study, seconds_left=None)
    assert [t.user_attrs["start"] for t in study.get_trials(states=(TrialState.WAITING,))] == [1]
    assert "skipped_starts" not in study.user_attrs


def test_a_worker_trains_on_what_its_parent_prepared_and_a_changed_input_is_refused(
    tiny_model_dir, tmp_path, monkeypatch, write_csv, sentiment_rows, open_sqlite_study
) -> None:
    """The default space offers LoRA, which prepare_study checks on the loaded model: a worker
    handed the prepared study starts its first trial without hashing an input or loading the
    model (the trial loads it to train; with no forgetting check, which would load the
    untouched model to observe it first); `autoft worker` on inputs that changed is refused."""
    import autoft.prepare
    from autoft.config import build_config
    from autoft.prepare import prepare_study
    from autoft.storage import load_study, open_study
    from autoft.study_facts import record_study_facts
    from autoft.workers import TrialRunner, join_study, work

    train = write_csv(tmp_path / "train.csv", sentiment_rows(120))
    studies = tmp_path / "studies"
    config = build_config({}, None, {
        "model": str(tiny_model_dir), "train": str(train), "space": "default",
        "n_trials": 1, "name": "once", "studies_dir": str(studies), "base_kind": "none"})
    prepared = prepare_study(config, echo=lambda line: None)
    assert "lora" in prepared.space.values_of("adapter")
    record_study_facts(open_study(config), prepared)

    calls = []
    task_class = type(prepared.task)
    load_model, run_trial = task_class.load_model, TrialRunner.__call__
    monkeypatch.setattr(autoft.prepare, "_file_digest",
                        lambda *args: calls.append("hash") or "hashed")
    monkeypatch.setattr(task_class, "load_model",
                        lambda *args: calls.append("model") or load_model(*args))
    monkeypatch.setattr(TrialRunner, "__call__",
                        lambda *args: calls.append("trial") or run_trial(*args))
    assert work(prepared, storage_url(config), Slot("cpu", 1)) is False
    assert calls[:2] == ["trial", "model"], calls  # nothing before the first trial
    assert "hash" not in calls
    assert open_sqlite_study(studies, "once").trials[0].state == TrialState.COMPLETE

    monkeypatch.undo()
    write_csv(train, sentiment_rows(120, seed=1))  # other rows under the same name
    with pytest.raises(UsageError, match="other data or model settings"):
        join_study(load_study("once", str(studies), None), str(studies), None, devices="cpu:1")
