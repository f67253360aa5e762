"""Worker processes: device discovery and slots, one process per slot, the loop that starts trials
atomically within the study's budget, per-trial logs, and clean stops on signals and time limits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import multiprocessing
import os
import re
import signal
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import optuna
from optuna.trial import TrialState

from autoft.config import StudyConfig
from autoft.errors import UsageError
from autoft.study import (
    COUNTS_TOWARD_BUDGET,
    HEARTBEAT_SECONDS,
    RETRY_OF,
    budget_left,
    make_pruner,
    make_sampler,
    open_storage,
    queue_next_config,
    redact,
    repeated_failure,
    sqlite_lock,
    to_run_again,
)
from autoft.train import TrialFailed

log = logging.getLogger("autoft")

HARD_LIMIT_FACTOR = 1.1
CORES_PER_CPU_WORKER = 4
WAIT_SECONDS = min(5, HEARTBEAT_SECONDS)  # how often a worker with nothing to start looks again
INTERRUPTED_EXIT = 130


@dataclass(frozen=True)
class Slot:
    """One place a trial runs: a device, the torch threads it may use, and for a GPU the value of
    CUDA_VISIBLE_DEVICES that pins the worker to that card (it then sees it as cuda:0)."""

    device: str
    threads: int
    visible: str | None = None

    @property
    def torch_device(self) -> str:
        return "cpu" if self.visible is None else "cuda:0"


def cpu_cores() -> int:
    """The cores this process may use: its CPU affinity (a container or taskset may allow fewer
    than exist), capped by OMP_NUM_THREADS when set, the usual way to cap a job's threads."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(cores or 1, int(cap))) if cap.isdigit() and int(cap) > 0 else cores or 1


def visible_gpus() -> int:
    """CUDA GPUs this process sees; counting them does not create a CUDA context."""
    import torch

    return torch.cuda.device_count()


def device_slots(
    devices: str,
    trials_per_gpu: int = 1,
    where: str = "--devices",
    cores: int | None = None,
    gpus: int | None = None,
) -> list[Slot]:
    """The slots for auto, cpu, cpu:N, cuda or cuda:0,cuda:2, checked against this machine.

    `auto` takes every visible GPU, `trials_per_gpu` slots on each (a small model leaves a card
    mostly idle, so several trials fill it). Without a GPU, `auto` splits the cores into workers
    of CORES_PER_CPU_WORKER cores: one trial's small batches do not keep many threads busy, so
    more workers finish more trials (benchmarks/workers.py on a quiet 2-core machine: one 2-thread
    worker 807 trials/hour, two 1-thread workers 1,044), while each worker costs a process start
    and its own copy of the model. `cpu:N` chooses N workers explicitly.
    """
    if trials_per_gpu < 1:
        raise UsageError(f"--trials-per-gpu: {trials_per_gpu} must be a positive whole number.")
    cores = cores or cpu_cores()
    gpus = visible_gpus() if gpus is None else gpus
    spec = devices.strip().lower().replace(" ", "")
    if spec == "auto":
        spec = "cuda" if gpus else f"cpu:{max(1, cores // CORES_PER_CPU_WORKER)}"
    if spec == "cuda":
        if not gpus:
            raise UsageError(f"{where}: 'cuda' asks for GPUs, but none is visible; use cpu.")
        spec = ",".join(f"cuda:{k}" for k in range(gpus))
    cpu = re.fullmatch(r"cpu(?::(\d+))?", spec)
    if cpu:
        workers = int(cpu.group(1) or 1)
        if workers < 1:
            raise UsageError(f"{where}: '{devices}' asks for no worker; use cpu:1 or more.")
        return [Slot("cpu", max(1, cores // workers)) for _ in range(workers)]
    indices = [_cuda_index(part, devices, where, gpus) for part in spec.split(",")]
    if len(set(indices)) != len(indices):
        raise UsageError(
            f"{where}: '{devices}' names a GPU twice; use --trials-per-gpu to run several "
            f"trials on one card."
        )
    threads = max(1, cores // (len(indices) * trials_per_gpu))
    return [
        Slot(f"cuda:{k}", threads, _physical_gpu(k))
        for k in indices
        for _ in range(trials_per_gpu)
    ]


def _cuda_index(part: str, devices: str, where: str, gpus: int) -> int:
    match = re.fullmatch(r"cuda:(\d+)", part)
    if not match:
        raise UsageError(
            f"{where}: '{devices}' is not a device list; write auto, cpu, cpu:4, cuda or "
            f"cuda:0,cuda:2."
        )
    index = int(match.group(1))
    if index >= gpus:
        seen = f"cuda:0 to cuda:{gpus - 1}" if gpus else "none"
        raise UsageError(
            f"{where}: {part} does not exist (visible CUDA GPUs: {seen}); name one of those, "
            f"or use auto or cpu."
        )
    return index


def _physical_gpu(index: int) -> str:
    """The card the parent calls cuda:index, as CUDA_VISIBLE_DEVICES names it for a child."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
    visible = [v for v in visible if v]
    return visible[index] if visible else str(index)


class StartLock:
    """Makes 'check the budget, then ask for a trial' one step across every worker of a study.

    Without it two workers both see one trial left and both start one. Optuna's ask is several
    transactions, so a database transaction cannot cover it; a lock the workers share can. For
    SQLite (one machine) that is an fcntl lock on a file beside the database: the kernel frees
    it when a worker dies, even by kill -9. For PostgreSQL (many machines) it is a session-level
    advisory lock keyed by the study name: the server frees it when the worker's connection
    closes. Other databases get no lock and may overshoot by a trial per extra worker.
    """

    def __init__(self, storage: optuna.storages.RDBStorage, study_name: str):
        self.engine = storage.engine
        self.dialect = storage.engine.dialect.name
        digest = hashlib.sha256(f"autoft:{study_name}".encode()).digest()
        self.key = int.from_bytes(digest[:8], "big", signed=True)
        self._held: object | None = None
        if self.dialect not in ("sqlite", "postgresql"):
            log.warning(
                "%s storage: trials start without a lock, so the budget may be overshot "
                "by up to one trial per extra worker.",
                self.dialect,
            )

    def acquire(self) -> None:
        if self.dialect == "sqlite":
            self._held = contextlib.ExitStack()
            self._held.enter_context(sqlite_lock(self.engine.url.database))
        elif self.dialect == "postgresql":
            from sqlalchemy import text

            connection = self.engine.connect()
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": self.key})
            self._held = connection
        else:
            self._held = True

    def release(self) -> None:
        """Free the lock if this worker holds it; safe to call twice."""
        held, self._held = self._held, None
        if held is None or held is True:
            return
        if self.dialect == "postgresql":
            from sqlalchemy import text

            held.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
        held.close()


class Stop:
    """How a worker stops cleanly on SIGINT, SIGTERM or its hard time limit (SIGALRM).

    During a trial the signal raises KeyboardInterrupt there and then: the TrialRunner records
    the trial as failed with the reason `interrupted`, which does not use up the budget, and its
    config is run again first when the study goes on. Elsewhere it only sets `requested`, so
    asking for a trial or telling its result is never cut in half (that could leave a RUNNING
    trial without a heartbeat, which nothing would ever find stale). `autoft search` also holds
    one while its workers run and its report is written, so a late Ctrl-C loses neither.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)

    REDELIVER_SECONDS = 0.01

    def __init__(self) -> None:
        self.requested = False
        self.signalled = False
        self._in_trial = False  # a signal now raises KeyboardInterrupt
        self._trial_open = False  # inside the trial span, raised already or not
        self._previous: dict = {}
        self._previous_hook = None

    def install(self, hard_deadline: float | None = None) -> None:
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in self.SIGNALS}
        self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._on_unraisable
        if hard_deadline is not None:
            signal.setitimer(signal.ITIMER_REAL, max(0.01, hard_deadline - time.time()))

    def uninstall(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._previous_hook is not None:
            sys.unraisablehook = self._previous_hook

    def _on_signal(self, signum: int, frame) -> None:
        if signum == signal.SIGALRM and not self.requested:
            log.warning("hard time limit reached: interrupting the running trial")
        else:
            self.signalled = True
        self.requested = True
        if self._in_trial:
            self._in_trial = False
            raise KeyboardInterrupt

    def _on_unraisable(self, unraisable) -> None:
        """Our KeyboardInterrupt can land in a callback whose exceptions Python only prints (a
        weakref's or a finalizer's, run by the garbage collector): the trial would go on and a
        traceback appear. Swallow it and deliver it again a moment later, in the trial's code."""
        if not isinstance(unraisable.exc_value, KeyboardInterrupt) or not self._trial_open:
            self._previous_hook(unraisable)
            return
        self._in_trial = True
        signal.setitimer(signal.ITIMER_REAL, self.REDELIVER_SECONDS)

    @contextlib.contextmanager
    def trial(self):
        """The span in which a signal interrupts at once."""
        self._in_trial = self._trial_open = True
        try:
            if self.requested:
                raise KeyboardInterrupt
            yield
        finally:
            self._in_trial = self._trial_open = False

    def sleep(self, seconds: float) -> None:
        """Wait, but wake up soon after a stop is requested."""
        end = time.time() + seconds
        while not self.requested and time.time() < end:
            time.sleep(min(0.2, end - time.time()))


@contextlib.contextmanager
def trial_log(path: Path):
    """Everything autoft logs while the trial runs also goes to the trial's own file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


def trial_log_path(config: StudyConfig, number: int) -> Path:
    return config.study_dir / "logs" / f"trial-{number:04d}.log"


class TrialRunner:
    """What study.optimize calls for one trial: frees the start lock (the trial now exists),
    labels the trial with its worker, logs to the trial's file, and makes an unexpected error
    fail only that trial, with its reason, counting toward the budget so a bug cannot loop."""

    def __init__(self, objective, config: StudyConfig, slot: Slot, lock: StartLock, stop: Stop):
        self.objective = objective
        self.config = config
        self.lock = lock
        self.stop = stop
        self.worker = {"host": socket.gethostname(), "pid": os.getpid(), "device": slot.device}

    def __call__(self, trial: optuna.Trial) -> float:
        self.lock.release()
        trial.set_user_attr("worker", self.worker)
        retry_of = trial.user_attrs.get(RETRY_OF)
        with trial_log(trial_log_path(self.config, trial.number)):
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
                trial.set_user_attr("fail_reason", "interrupted")  # its config runs again
                log.warning("trial %d interrupted", trial.number)
                raise
            except Exception as error:
                log.exception("trial %d failed with an unexpected error", trial.number)
                trial.set_user_attr("fail_reason", f"{type(error).__name__}: {error}"[:500])
                trial.set_user_attr(COUNTS_TOWARD_BUDGET, True)
                raise
            log.info("trial %d finished: %s", trial.number, value)
            return value


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail trials whose worker stopped sending heartbeats; the storage's callback retries them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


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
                queue_next_config(study)
                study.optimize(runner, n_trials=1, catch=(Exception,), gc_after_trial=True)
                continue
        finally:
            lock.release()
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return
        stop.sleep(WAIT_SECONDS)


def sampler_seed(config: StudyConfig, slots: int) -> int:
    """The study's seed for a lone worker (reproducible); otherwise one per process, so
    parallel workers do not all draw the same random start-up configs."""
    if slots == 1 and not config.storage:
        return config.seed
    identity = f"{config.seed}:{socket.gethostname()}:{os.getpid()}"
    return int.from_bytes(hashlib.sha256(identity.encode()).digest()[:4], "big")


def work(
    config: StudyConfig,
    url: str,
    slot: Slot,
    slots: int = 1,
    deadline: float | None = None,
    hard_deadline: float | None = None,
) -> bool:
    """Run the study's trials on one slot until the budget is used; True if SIGINT or SIGTERM
    stopped it.

    The study and its prepared data must exist (`autoft search` or `autoft worker` made them).
    """
    if slot.visible is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = slot.visible  # before anything initialises CUDA
    import torch

    from autoft.prepare import prepare_study
    from autoft.study import Objective

    torch.set_num_threads(slot.threads)
    stop = Stop()
    stop.install(hard_deadline)
    runner = None
    try:
        try:
            prepared = prepare_study(config, echo=log.debug)
            storage = open_storage(url)
            study = optuna.load_study(
                study_name=config.name,
                storage=storage,
                sampler=make_sampler(dataclasses.replace(config, seed=sampler_seed(config, slots))),
                pruner=make_pruner(config),
            )
            objective = Objective(prepared, torch.device(slot.torch_device))
            runner = TrialRunner(objective, config, slot, StartLock(storage, config.name), stop)
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
            if frozen.user_attrs.get("worker") == worker:
                trial = optuna.trial.Trial(study, frozen._trial_id)
                trial.set_user_attr("fail_reason", "interrupted")
                study.tell(frozen.number, state=TrialState.FAIL)
                log.warning("trial %d interrupted", frozen.number)
    except Exception as error:  # the storage is unreachable: the heartbeat will find it stale
        log.warning("could not record the interrupted trial (%s); it is retried once stale", error)


def quiet_optuna() -> None:
    """Only Optuna's errors reach the screen: autoft logs each trial's end itself, and Optuna's
    own line for a failed trial would repeat it, with a traceback for every Ctrl-C."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def _child_main(config, url, slot, index, slots, deadline, hard_deadline) -> None:
    """Entry point of a spawned worker process; its exit code says how it ended."""
    logging.basicConfig(level=logging.INFO, format=f"[worker {index} {slot.device}] %(message)s")
    quiet_optuna()
    interrupted = work(config, url, slot, slots, deadline, hard_deadline)
    raise SystemExit(INTERRUPTED_EXIT if interrupted else 0)


def run_workers(
    config: StudyConfig,
    url: str,
    slots: list[Slot],
    deadline: float | None = None,
    hard_deadline: float | None = None,
) -> bool:
    """Run the study on every slot and wait for all; True if a signal stopped it.

    A single CPU slot runs in this process (no start-up cost). Otherwise each slot gets a process
    from multiprocessing's forkserver: a clean server process that imports autoft once but never
    touches CUDA, and forks each worker, which sets CUDA_VISIBLE_DEVICES before its first CUDA
    call. Spawned workers would each import torch and transformers again (about 11 CPU-seconds
    each here); forking this process could copy CUDA or OpenMP state. joblib's loky backend
    spawns too, and suits map-style tasks: on an interrupt it kills its workers outright, so a
    running trial could not record `interrupted`. Here the parent forwards SIGINT and SIGTERM to
    its workers, which stop cleanly, and reads each exit code. Workers share only the storage.
    """
    log.info(
        "%d worker%s on %s; storage %s",
        len(slots),
        "s" if len(slots) > 1 else "",
        ", ".join(slot.device for slot in slots),
        redact(url),
    )
    if len(slots) == 1 and slots[0].visible is None:
        return work(config, url, slots[0], 1, deadline, hard_deadline)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, "autoft.prepare"])
    processes = [
        context.Process(
            target=_child_main,
            args=(config, url, slot, index, len(slots), deadline, hard_deadline),
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

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
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


def time_limits(config: StudyConfig) -> tuple[float | None, float | None]:
    """When to stop starting trials (the timeout) and when to interrupt running ones (the
    timeout plus 10%), as clock times shared by every worker of this run."""
    if not config.timeout:
        return None, None
    now = time.time()
    return now + config.timeout, now + config.timeout * HARD_LIMIT_FACTOR


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
    (deterministically, from the same data files) when this machine has none yet.
    """
    from autoft.prepare import prepare_study
    from autoft.study import check_not_stopped, recorded_config, storage_url

    recorded = recorded_config(study, studies_dir, storage)
    config = dataclasses.replace(
        recorded,
        devices=devices or "auto",
        trials_per_gpu=trials_per_gpu or recorded.trials_per_gpu,
        timeout=timeout,
    )
    slots = device_slots(config.devices, config.trials_per_gpu)
    prepare_study(config)
    since = datetime.now()
    interrupted = run_workers(config, storage_url(config), slots, *time_limits(config))
    if not interrupted:
        check_not_stopped(study, since, config.n_trials)
    return interrupted


def status_text(study: optuna.Study) -> str:
    """The study now: counts, the best so far, and each running trial's worker and progress."""
    from autoft.describe import describe_seconds
    from autoft.progress import epoch_text, status_line, take_snapshot

    attrs = study.user_attrs
    trials = study.get_trials(deepcopy=False)
    starts = [t.datetime_start.timestamp() for t in trials if t.datetime_start]
    ends = [t.datetime_complete.timestamp() for t in trials if t.datetime_complete]
    running = [t for t in trials if t.state == TrialState.RUNNING]
    end = time.time() if running or not ends else max(ends)
    elapsed = end - min(starts) if starts else 0.0
    budget = (attrs.get("config") or {}).get("n_trials", len(trials))
    snapshot = take_snapshot(trials, budget, elapsed, 0, attrs.get("train_examples"),
                             study.direction.name.lower())
    metric = attrs.get("metric", "value")
    lines = [f"Study '{study.study_name}': {status_line(snapshot, metric)}"]
    for trial, progress in zip(running, snapshot.running, strict=True):
        worker = trial.user_attrs.get("worker") or {}
        where = f"{worker.get('device', '?')} on {worker.get('host', '?')} pid {worker.get('pid')}"
        value = progress.last_value
        last = f", last {metric} {value:.4f}" if value is not None else ""
        age = describe_seconds(time.time() - trial.datetime_start.timestamp())
        lines.append(
            f"  trial {trial.number}: {where}, {epoch_text(progress)}{last}, running {age}"
        )
    lines.extend(stopped_lines(trials))
    return "\n".join(lines)


def stopped_lines(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    """What became of trials that did not finish (interrupted, or their worker died): whose
    config runs again, and which trial ran it."""
    queued = [t.user_attrs[RETRY_OF] for t in trials
              if t.state == TrialState.WAITING and RETRY_OF in t.user_attrs]
    waiting = sorted(queued + [t.number for t in to_run_again(trials)])
    rerun = [(t.user_attrs[RETRY_OF], t.number) for t in trials
             if t.state != TrialState.WAITING and RETRY_OF in t.user_attrs]
    lines = []
    if waiting:
        lines.append(
            f"  did not finish: trial {', '.join(map(str, waiting))}; their configs run again, "
            f"before any new one, when the study goes on (autoft search or autoft worker)."
        )
    if rerun:
        lines.append("  run again: " + ", ".join(f"trial {a} as trial {b}" for a, b in rerun))
    return lines
