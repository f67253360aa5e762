"""The live display of a running study: a thread that polls the storage, so trials run by worker
processes show too; a rich panel on a terminal, plain lines in logs and CI.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from autoft.describe import describe_params, describe_seconds
from autoft.record import TrialRecord
from autoft.trials import counts_toward_budget, direction_sign, is_feasible

POLL_SECONDS = 2.0
STATUS_EVERY_SECONDS = 60.0


@dataclass(frozen=True)
class RunningTrial:
    """A trial in flight: its config and how far it got (epochs may be fractional)."""

    number: int
    params: dict
    epoch: float | None
    epochs: int | None
    last_value: float | None


@dataclass(frozen=True)
class Snapshot:
    """The study at one moment, as the display shows it."""

    complete: int
    pruned: int
    failed: int
    budget: int
    running: list[RunningTrial]
    elapsed: float
    remaining: float | None
    best_value: float | None
    best_number: int | None

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed


def running_trial(trial: FrozenTrial, train_size: int | None) -> RunningTrial:
    """Progress from the record the objective writes after sampling and after each evaluation."""
    record = TrialRecord.of(trial)
    params = record.params or dict(trial.params)
    evaluations = record.evaluations
    epoch = None
    if evaluations:
        last = evaluations[-1]
        epoch = last["samples_seen"] / train_size if train_size else float(last["step"])
    epochs = params.get("epochs")
    return RunningTrial(
        number=trial.number,
        params=params,
        epoch=epoch if epoch is not None else (0.0 if params else None),
        epochs=int(epochs) if epochs is not None else None,
        last_value=evaluations[-1]["value"] if evaluations else None,
    )


def samples_seen(trial: FrozenTrial) -> int:
    """Training samples the trial has been through, as of its last evaluation."""
    evaluations = TrialRecord.of(trial).evaluations
    return evaluations[-1]["samples_seen"] if evaluations else 0


def samples_planned(trial: FrozenTrial, train_size: int | None) -> int | None:
    """Training samples the trial's config asks for (its epochs over the training set)."""
    epochs = (TrialRecord.of(trial).params or trial.params).get("epochs")
    return int(epochs * train_size) if epochs and train_size else None


def time_left(trials: list[FrozenTrial], budget: int, elapsed: float,
              before: frozenset[int], train_size: int | None) -> float | None:
    """Seconds left, from the trials' own progress: the training samples this run went through
    per second, applied to the samples still planned (the rest of each running trial, and the
    trials not started yet at the mean planned size). Timing whole trials mirrored the elapsed
    time while a long trial ran ("13m12s elapsed, about 13m12s left"). None until this run has
    trained anything; without the training set's size, whole trials are the unit."""
    ours = [t for t in trials if t.number not in before]
    running = [t for t in ours if t.state == TrialState.RUNNING]
    used = sum(1 for t in trials if counts_toward_budget(t))
    unstarted = max(0, budget - used - len(running))
    planned = {t.number: samples_planned(t, train_size) for t in trials}
    known = [p for p in planned.values() if p]
    if not train_size or not known:
        done = sum(1 for t in ours if counts_toward_budget(t))
        return elapsed / done * (unstarted + len(running)) if done else None
    done = sum(samples_seen(t) for t in ours)
    if not done:
        return None
    left = sum(max(0, (planned[t.number] or 0) - samples_seen(t)) for t in running)
    left += unstarted * sum(known) / len(known)
    return left * elapsed / done


def take_snapshot(
    trials: list[FrozenTrial],
    budget: int,
    elapsed: float,
    before: frozenset[int] = frozenset(),
    train_size: int | None = None,
    direction: str = "maximize",
) -> Snapshot:
    """Counts, running trials, the best feasible value and the time left (`time_left`; `before`
    holds the trials that had finished before this run)."""
    by_state = {state: [t for t in trials if t.state == state] for state in TrialState}
    complete = [t for t in by_state[TrialState.COMPLETE] if t.value is not None]
    sign = direction_sign(direction)
    best = max((t for t in complete if is_feasible(t)), key=lambda t: sign * t.value, default=None)
    return Snapshot(
        complete=len(by_state[TrialState.COMPLETE]),
        pruned=len(by_state[TrialState.PRUNED]),
        failed=sum(1 for t in by_state[TrialState.FAIL] if counts_toward_budget(t)),
        budget=budget,
        running=[running_trial(t, train_size) for t in by_state[TrialState.RUNNING]],
        elapsed=elapsed,
        remaining=time_left(trials, budget, elapsed, before, train_size),
        best_value=best.value if best else None,
        best_number=best.number if best else None,
    )


def status_line(snap: Snapshot, metric: str) -> str:
    """'3 complete, 1 pruned, 0 failed of 8 · 2 running · 4m10s elapsed, about 5m00s left · ...'."""
    left = f"about {describe_seconds(snap.remaining)} left" if snap.remaining is not None else (
        "time left unknown until a trial finishes"
    )
    best = (
        f"best {metric} {snap.best_value:.4f} (trial {snap.best_number})"
        if snap.best_value is not None
        else "no best trial yet"
    )
    return (
        f"{snap.complete} complete, {snap.pruned} pruned, {snap.failed} failed of {snap.budget}"
        f" · {len(snap.running)} running · {describe_seconds(snap.elapsed)} elapsed, {left}"
        f" · {best}"
    )


def epoch_text(trial: RunningTrial) -> str:
    if trial.epoch is None:
        return "starting"
    total = f"/{trial.epochs}" if trial.epochs else ""
    return f"epoch {trial.epoch:.3g}{total}"


def finished_line(trial: FrozenTrial, metric: str, depth: int) -> str:
    """One line per finished trial, for logs."""
    record = TrialRecord.of(trial)
    params = describe_params(record.params or dict(trial.params), depth, short=True)
    seconds = (
        f" in {describe_seconds((trial.datetime_complete - trial.datetime_start).total_seconds())}"
        if trial.datetime_start and trial.datetime_complete
        else ""
    )
    if trial.state == TrialState.COMPLETE:
        outcome = f"complete, {metric} {trial.value:.4f}" if trial.value is not None else "complete"
        if record.stop_reason:  # stopped early: a plateau, or forgetting
            outcome += f" ({record.stop_reason})"
    elif trial.state == TrialState.PRUNED:
        steps = len(record.evaluations)
        outcome = f"pruned after {steps} evaluation{'s' if steps != 1 else ''}"
        if record.prune_reason:
            outcome += f" ({record.prune_reason})"
    elif record.fail_reason == "interrupted":  # one word everywhere (trials.counts)
        outcome = "interrupted (its config runs again on resume)"
    else:
        outcome = f"failed ({record.fail_reason or 'see the log'})"
    return f"trial {trial.number} {outcome}{seconds}: {params}"


class OutputAbovePanel:
    """While the panel is live, what this process and its workers write to stdout and stderr goes
    through a pipe, and a thread prints it line by line above the panel.

    rich redraws the panel in place only if nothing else writes to the terminal: log handlers that
    hold the original stream, libraries' warnings and the worker processes (which inherit file
    descriptors 1 and 2) all did, and tore it apart. Diverting the descriptors catches them all.
    """

    def __init__(self):
        self.console = None
        self._saved: list[int] = []
        self._read_end = -1
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self):
        """Divert descriptors 1 and 2; returns a rich console on the terminal itself."""
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = [os.dup(1), os.dup(2)]
        terminal = os.fdopen(os.dup(self._saved[0]), "w", encoding="utf-8", errors="replace")
        self.console = Console(file=terminal)
        self._read_end, write_end = os.pipe()
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.close(write_end)
        self._thread = threading.Thread(target=self._relay, name="autoft-output", daemon=True)
        self._thread.start()
        return self.console

    def stop(self) -> None:
        """Give the terminal back to descriptors 1 and 2, then print what is still in the pipe."""
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self._saved, strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()

    def close(self) -> None:
        self.console.file.close()

    def _relay(self) -> None:
        pending = b""
        while True:
            ready, _, _ = select.select([self._read_end], [], [], 0.1)
            if not ready:
                if self._stopping.is_set():  # workers may keep the pipe open: stop once drained
                    break
                continue
            chunk = os.read(self._read_end, 65536)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._print(line)
        if pending:
            self._print(pending)
        os.close(self._read_end)

    def _print(self, line: bytes) -> None:
        """One line, as a terminal would have left it: only what follows its last carriage return
        (progress bars redraw a line that way)."""
        self.console.print(Text.from_ansi(line.decode("utf-8", "replace").rsplit("\r", 1)[-1]))


class LiveDisplay:
    """Shows a study's progress until stopped; use as a context manager around the trials.

    Polls the study's storage from a daemon thread every `interval` seconds. On a terminal it
    draws a rich panel, with everything else written to the terminal printed above it; otherwise
    it prints a line per finished trial and a status line every `status_every` seconds. A failing
    poll is shown once and never stops the study.
    """

    def __init__(
        self,
        study: optuna.Study,
        budget: int,
        metric: str,
        depth: int,
        train_size: int | None = None,
        stream=None,
        interval: float = POLL_SECONDS,
        status_every: float = STATUS_EVERY_SECONDS,
    ):
        self.study = study
        self.budget = budget
        self.metric = metric
        self.depth = depth
        self.train_size = train_size
        self.stream = stream if stream is not None else sys.stdout
        self.interval = interval
        self.status_every = status_every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live = None
        self._output: OutputAbovePanel | None = None
        self._poll_error: str | None = None

    @property
    def is_terminal(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    @property
    def is_process_terminal(self) -> bool:
        """The stream is this process's stdout on a terminal (not a stand-in, as in tests)."""
        try:
            return self.stream.fileno() == 1 and self.is_terminal
        except (AttributeError, OSError, ValueError):
            return False

    def __enter__(self) -> LiveDisplay:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        trials = self.study.get_trials(deepcopy=False)
        self._started = time.time()
        self._reported = {t.number for t in trials if t.state.is_finished()}
        self._before = frozenset(self._reported)
        self._last_status = self._started
        if self.is_terminal:
            if self.is_process_terminal:
                self._output = OutputAbovePanel()
                console = self._output.start()
            else:
                console = Console(file=self.stream)
            self._live = Live(
                self.render(self.snapshot()), console=console, refresh_per_second=2
            )
            self._live.start()
        self._thread = threading.Thread(target=self._run, name="autoft-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """One last poll, so the final state shows, then end the thread and the panel."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.poll(final=True)
        if self._output is not None:
            self._output.stop()
        if self._live is not None:
            self._live.stop()
        if self._output is not None:
            self._output.close()

    def snapshot(self) -> Snapshot:
        return take_snapshot(
            self.study.get_trials(deepcopy=False),
            self.budget,
            time.time() - self._started,
            self._before,
            self.train_size,
            self.study.direction.name.lower(),
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self, final: bool = False) -> None:
        try:
            trials = self.study.get_trials(deepcopy=False)
            snap = take_snapshot(
                trials,
                self.budget,
                time.time() - self._started,
                self._before,
                self.train_size,
                self.study.direction.name.lower(),
            )
        except Exception as error:  # a busy or lost storage must not stop the study
            if self._poll_error is None:
                self._poll_error = str(error).splitlines()[0]
                self._say(f"progress: cannot read the storage ({self._poll_error})")
            return
        for trial in trials:
            if trial.state.is_finished() and trial.number not in self._reported:
                self._reported.add(trial.number)
                self._say(finished_line(trial, self.metric, self.depth))
        if self._live is not None:
            self._live.update(self.render(snap), refresh=True)
            return
        now = time.time()
        if final or now - self._last_status >= self.status_every:
            self._last_status = now
            self._say(f"status: {status_line(snap, self.metric)}")
        self.stream.flush()

    def _say(self, line: str) -> None:
        """A line above the panel on a terminal, a plain line elsewhere."""
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.stream)

    def render(self, snap: Snapshot):
        """The rich panel: the status line and a table of the running trials."""
        table = Table(title=None, expand=False, show_edge=False)
        for column in ("trial", "config", "progress", f"last {self.metric}"):
            table.add_column(column)
        for trial in snap.running:
            table.add_row(
                str(trial.number),
                describe_params(trial.params, self.depth, short=True),
                epoch_text(trial),
                f"{trial.last_value:.4f}" if trial.last_value is not None else "-",
            )
        header = Text(status_line(snap, self.metric), style="bold")
        return Group(header, table) if snap.running else header
