"""How a worker, and `autoft search` itself, stop cleanly on SIGINT, SIGTERM or the hard time
limit: a signal interrupts a running trial at once, and elsewhere only asks to stop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger("autoft")


def detach_from_terminal() -> None:
    """After SIGHUP (the terminal or ssh connection closed) the screen is gone: writing to it
    would fail and cut the report short, so what a study still says goes nowhere; its report
    and logs say it."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (1, 2):
        os.dup2(devnull, stream)
    os.close(devnull)


class Stop:
    """How a worker stops cleanly on SIGINT, SIGTERM, SIGHUP (a closed terminal: a study
    started over ssh in the evening must not lose its night) or its hard time limit (SIGALRM).

    During a trial the signal raises KeyboardInterrupt there and then: the TrialRunner records
    the trial as failed with the reason `interrupted`, which does not use up the budget, and its
    config is run again first when the study goes on. Elsewhere it only sets `requested`, so
    asking for a trial or telling its result is never cut in half (that could leave a RUNNING
    trial without a heartbeat, which nothing would ever find stale). Nor is a storage call
    inside the trial (`shielded`): the interrupt comes when it returns. `autoft search` also
    holds one while its workers run and its report is written, so a late Ctrl-C loses neither.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM)

    REDELIVER_SECONDS = 0.01

    def __init__(self) -> None:
        self.requested = False
        self.signalled = False
        self._in_trial = False  # a signal now raises KeyboardInterrupt
        self._trial_open = False  # inside the trial span, raised already or not
        self._shields = 0  # inside a call that a signal must not cut in half
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
        if signum == signal.SIGHUP:
            detach_from_terminal()
        if signum == signal.SIGALRM and not self.requested:
            log.warning("hard time limit reached: interrupting the running trial")
        else:
            self.signalled = True
        self.requested = True
        if self._in_trial and not self._shields:
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

    @contextlib.contextmanager
    def shielded(self):
        """A call that a signal must not cut in half, such as a storage call: a KeyboardInterrupt
        raised inside SQLAlchemy, between a statement and the end of its transaction, left the
        SQLite connection holding the database's write lock, so every later write (the trial's
        own FAIL, its heartbeat, the next process's) waited out the busy timeout and failed. A
        signal during the call interrupts when it returns. Signals reach the main thread only,
        so other threads need no shield."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._shields += 1
        try:
            yield
        finally:
            self._shields -= 1
        if self._in_trial and not self._shields and self.requested:
            self._in_trial = False
            raise KeyboardInterrupt

    def sleep(self, seconds: float) -> None:
        """Wait, but wake up soon after a stop is requested."""
        end = time.time() + seconds
        while not self.requested and time.time() < end:
            time.sleep(min(0.2, end - time.time()))
