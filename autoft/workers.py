"""Worker processes: one per device slot, the loop that starts trials atomically within the study's
budget, per-trial logs, and the parent that forwards signals to its workers and reads their ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from datetime import datetime
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from autoft.devices import Slot, device_slots
from autoft.files import disk_full_sentence, is_disk_full
from autoft.objective import Objective
from autoft.prepare import prepare_study
from autoft.prepared import Prepared
from autoft.record import TrialRecord
from autoft.sampler import policies
from autoft.schedule import (
    budget_left,
    check_not_stopped,
    fail_stale_trials,
    queue_next_config,
    repeated_failure,
)
from autoft.signals import Stop
from autoft.storage import (
    HEARTBEAT_SECONDS,
    StartLock,
    open_storage,
    quiet_optuna,
    recorded_config,
    redact,
    storage_url,
)
from autoft.train import TrialFailed

log = logging.getLogger("autoft")

HARD_LIMIT_FACTOR = 1.1
WAIT_SECONDS = min(5, HEARTBEAT_SECONDS)  # how often a worker with nothing to start looks again
INTERRUPTED_EXIT = 130


class TrialLogHandler(logging.FileHandler):
    """A trial's log file that, once it cannot be written (a full disk), says so in one line
    and falls silent: logging's default prints a traceback for every later line."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        log.removeHandler(self)
        error = sys.exc_info()[1]
        stream, self.stream = self.stream, None  # closing would flush the unwritten line again
        with contextlib.suppress(OSError):
            stream.close()
        reason = "the disk is full" if is_disk_full(error) else str(error)
        log.warning("autoft: the trial log %s cannot be written (%s); the trial's lines go on "
                    "to the screen only.", self.baseFilename, reason)


@contextlib.contextmanager
def trial_log(path: Path):
    """Everything autoft logs while the trial runs also goes to the trial's own file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = TrialLogHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


@contextlib.contextmanager
def long_lived_objects_frozen():
    """While a worker runs trials, what exists when they start (modules, the prepared study, the
    objective) lives as long as the worker: the collection Optuna runs after each trial
    (`gc_after_trial`) skips it instead of walking half a million objects (0.22 s a trial here
    with MiniLM loaded; under a millisecond frozen). Garbage is collected first, so none is kept."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def trial_log_path(study_dir: Path, number: int) -> Path:
    return study_dir / "logs" / f"trial-{number:04d}.log"


class TrialRunner:
    """What study.optimize calls for one trial: frees the start lock (the trial now exists),
    labels the trial with its worker, logs to the trial's file, and makes an unexpected error
    fail only that trial, with its reason, counting toward the budget so a bug cannot loop."""

    def __init__(self, objective, study_dir: Path, slot: Slot, lock: StartLock, stop: Stop):
        self.objective = objective
        self.study_dir = study_dir
        self.lock = lock
        self.stop = stop
        self.worker = {"host": socket.gethostname(), "pid": os.getpid(), "device": slot.device}

    def __call__(self, trial: optuna.Trial) -> float:
        self.lock.release()
        TrialRecord.write(trial, worker=self.worker)
        retry_of = TrialRecord.of(trial).retry_of
        with trial_log(trial_log_path(self.study_dir, trial.number)):
            log.info(
                "trial %d started on %s (pid %d)%s",
                trial.number,
                self.worker["device"],
                self.worker["pid"],
                f" (trial {retry_of}'s config again: it did not finish)" if retry_of is not None
                else "",
            )
            try:
                with self.stop.trial():  # only here does a signal interrupt at once
                    value = self.objective(trial)
            except optuna.TrialPruned:
                log.info("trial %d pruned", trial.number)
                raise
            except TrialFailed as failed:
                log.warning("trial %d failed: %s", trial.number, failed)
                raise
            except KeyboardInterrupt:
                TrialRecord.write(trial, fail_reason="interrupted")  # its config runs again
                log.warning("trial %d interrupted", trial.number)
                raise
            except Exception as error:
                log.exception("trial %d failed with an unexpected error", trial.number)
                TrialRecord.write(trial, fail_reason=f"{type(error).__name__}: {error}"[:500],
                                  counts_toward_budget=True)
                raise
            log.info("trial %d finished: %s", trial.number, value)
            return value


def run_trials(
    study: optuna.Study,
    runner: TrialRunner,
    n_trials: int,
    deadline: float | None = None,
) -> None:
    """Start trials until the study's total budget is used, the deadline passes or a stop comes.

    While the rest of the budget is held by other workers' running trials, wait rather than
    leave: if one of those workers died, its trial turns stale after the grace period and this
    worker runs the retry, so the study still ends with exactly `n_trials` finished trials.
    Trials failing alike again and again stop it too (`study.repeated_failure`): a bug cannot loop.
    """
    lock, stop = runner.lock, runner.stop
    since = datetime.now()
    while not stop.requested:
        if deadline is not None and time.time() >= deadline:
            log.info("timeout reached: no new trials are started")
            return
        lock.acquire()
        try:
            fail_stale_trials(study)
            if repeated_failure(study, since):
                return  # whoever started the workers says why (study.check_not_stopped)
            if budget_left(study, n_trials) > 0:
                if not queue_next_config(study,
                                         None if deadline is None else deadline - time.time()):
                    log.info("every config of the search space has run: no new trial starts")
                    return
                study.optimize(runner, n_trials=1, catch=(Exception,), gc_after_trial=True)
                continue
        finally:
            lock.release()
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return
        stop.sleep(WAIT_SECONDS)


def work(
    prepared: Prepared,
    url: str,
    slot: Slot,
    deadline: float | None = None,
    hard_deadline: float | None = None,
    sampler_and_pruner: tuple | None = None,
) -> bool:
    """Run the study's trials on one slot until the budget is used; True if SIGINT or SIGTERM
    stopped it.

    The study must exist and `prepared` is what the process that started this worker prepared
    (`autoft search` or `autoft worker`), so a worker neither hashes the inputs nor loads the
    model to check them again. `sampler_and_pruner` are the study's own where this worker runs in
    the process that opened it; otherwise they are built here, once.
    """
    config = prepared.config
    if slot.visible is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = slot.visible  # before anything initialises CUDA
    torch.set_num_threads(slot.threads)
    stop = Stop()
    stop.install(hard_deadline)
    runner = None
    try:
        try:
            storage = open_storage(url, stop)  # a signal never cuts a storage call in half
            sampler, pruner = sampler_and_pruner or policies(config)
            study = optuna.load_study(study_name=config.name, storage=storage, sampler=sampler,
                                      pruner=pruner)
            objective = Objective(prepared, torch.device(slot.torch_device))
            runner = TrialRunner(objective, config.study_dir, slot, StartLock(storage, config.name),
                                 stop)
            with long_lived_objects_frozen():
                run_trials(study, runner, config.n_trials, deadline)
        except KeyboardInterrupt:
            pass  # raised by Stop inside a trial, which is already recorded as interrupted
        # Stop stays installed until here: a second Ctrl-C (the terminal signals every worker,
        # and the parent forwards its own) must not cut this short with a traceback.
        if stop.requested and runner is not None:
            fail_own_running_trials(config.name, url, runner.worker)
    finally:
        stop.uninstall()
    return stop.signalled


def fail_own_running_trials(name: str, url: str, worker: dict) -> None:
    """Record as interrupted a trial of this worker that the stop left RUNNING.

    A signal that lands inside a storage write can leave the trial's own FAIL unwritten; the
    heartbeat would find it stale only after the grace period, so a prompt resume would wait.
    A fresh connection writes what the interrupted one could not.
    """
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url))
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if TrialRecord.of(frozen).worker == worker:
                trial = optuna.trial.Trial(study, frozen._trial_id)
                TrialRecord.write(trial, fail_reason="interrupted")
                study.tell(frozen.number, state=TrialState.FAIL)
                log.warning("trial %d interrupted", frozen.number)
    except Exception as error:  # the storage is unreachable: the heartbeat will find it stale
        log.warning("could not record the interrupted trial (%s); it is retried once stale", error)


def _child_main(prepared, url, slot, index, deadline, hard_deadline) -> None:
    """Entry point of a spawned worker process, handed the parent's prepared study; its exit
    code says how it ended."""
    logging.basicConfig(level=logging.INFO, format=f"[worker {index} {slot.device}] %(message)s")
    quiet_optuna()
    try:
        interrupted = work(prepared, url, slot, deadline, hard_deadline)
    except Exception as error:
        if not is_disk_full(error):
            raise
        log.error("autoft: %s", disk_full_sentence(error, prepared.config.name))
        raise SystemExit(1) from None  # the parent says how its workers ended
    raise SystemExit(INTERRUPTED_EXIT if interrupted else 0)


def run_workers(
    prepared: Prepared,
    url: str,
    slots: list[Slot],
    deadline: float | None = None,
    hard_deadline: float | None = None,
    sampler_and_pruner: tuple | None = None,
) -> bool:
    """Run the study on every slot and wait for all; True if a signal stopped it.

    Every worker trains on `prepared`, this process's prepared study, handed to it whole (pickled
    with its arguments): a worker neither reads the data, hashes the inputs nor loads the model
    to prepare it again. A single CPU slot runs in this process (no start-up cost), with this
    process's `sampler_and_pruner` where given. Otherwise each slot gets a process
    from multiprocessing's forkserver: a clean server process that imports autoft once but never
    touches CUDA, and forks each worker, which sets CUDA_VISIBLE_DEVICES before its first CUDA
    call. Spawned workers would each import torch and transformers again (about 11 CPU-seconds
    each here); forking this process could copy CUDA or OpenMP state. joblib's loky backend
    spawns too, and suits map-style tasks: on an interrupt it kills its workers outright, so a
    running trial could not record `interrupted`. Here the parent forwards SIGINT, SIGTERM and
    SIGHUP to its workers, which stop cleanly, and reads each exit code. Workers share only the
    storage.
    """
    log.info(
        "%d worker%s on %s; storage %s",
        len(slots),
        "s" if len(slots) > 1 else "",
        ", ".join(slot.device for slot in slots),
        redact(url),
    )
    if len(slots) == 1 and slots[0].visible is None:
        return work(prepared, url, slots[0], deadline, hard_deadline, sampler_and_pruner)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # autoft, torch and transformers, imported once
    processes = [
        context.Process(
            target=_child_main,
            args=(prepared, url, slot, index, deadline, hard_deadline),
            name=f"autoft-worker-{index}",
        )
        for index, slot in enumerate(slots)
    ]
    for process in processes:
        process.start()
    signalled = []

    def forward(signum: int, frame) -> None:
        signalled.append(signum)
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signum)

    previous = {sig: signal.signal(sig, forward)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        for process in processes:
            process.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for index, process in enumerate(processes):
        if process.exitcode not in (0, INTERRUPTED_EXIT):
            log.warning(
                "worker %d (%s) ended with exit code %s; its running trial, if any, is retried "
                "once found stale",
                index,
                slots[index].device,
                process.exitcode,
            )
    return bool(signalled) or any(p.exitcode == INTERRUPTED_EXIT for p in processes)


def time_limits(timeout: float | None) -> tuple[float | None, float | None]:
    """When to stop starting trials (the timeout) and when to interrupt running ones (the
    timeout plus 10%), as clock times shared by every worker of this run."""
    if not timeout:
        return None, None
    now = time.time()
    return now + timeout, now + timeout * HARD_LIMIT_FACTOR


def join_study(
    study: optuna.Study,
    studies_dir: str,
    storage: str | None,
    devices: str | None = None,
    trials_per_gpu: int | None = None,
    timeout: float | None = None,
) -> bool:
    """Run an existing study's trials on this machine's devices; True if a signal stopped it.

    The config comes from the storage (recorded by `autoft search`); devices and the timeout are
    this machine's own. The prepared data comes from the local study folder, prepared again
    (deterministically, from the same data files) when this machine has none yet; either way
    prepare_study checks here, once for all this machine's workers, that this machine's inputs
    are those the study's trials trained on (the fingerprint the storage records).
    """
    recorded = recorded_config(study, studies_dir, storage)
    config = dataclasses.replace(
        recorded,
        devices=devices or "auto",
        trials_per_gpu=trials_per_gpu or recorded.trials_per_gpu,
        timeout=timeout,
    )
    slots = device_slots(config.devices, config.trials_per_gpu)
    prepared = prepare_study(config)
    since = datetime.now()
    interrupted = run_workers(prepared, storage_url(config), slots, *time_limits(config.timeout))
    if not interrupted:
        check_not_stopped(study, since, config.n_trials)
    return interrupted


