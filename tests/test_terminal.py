"""A real search in a real pseudo-terminal (120×40), read back through a terminal emulator: the
live panel must stay one panel, with every log line, the workers' too, printed whole above it."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pyte
import pytest

ROWS, COLUMNS = 40, 120
STATUS = re.compile(r"^\d+ complete, \d+ pruned, \d+ failed of 2 · ")


def run_in_terminal(argv: list[str], cwd: Path, timeout: float = 240) -> list[str]:
    """Run argv on a ROWS×COLUMNS pseudo-terminal; the screen's lines, scrolled-off ones first."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=follower, stdout=follower,
                               stderr=follower, start_new_session=True)
    os.close(follower)
    output = bytearray()
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
        else:
            process.kill()
            pytest.fail(f"{argv} ran past {timeout} s")
    finally:
        os.close(leader)
        process.wait(timeout=30)
    assert process.returncode == 0, output.decode(errors="replace")[-3000:]
    screen = pyte.HistoryScreen(COLUMNS, ROWS, history=100_000)
    pyte.ByteStream(screen).feed(bytes(output))
    scrolled = ["".join(line[x].data for x in range(COLUMNS)) for line in screen.history.top]
    return [line.rstrip() for line in scrolled + screen.display]


@pytest.mark.slow
@pytest.mark.parametrize("devices", ["cpu", "cpu:2"])
def test_live_panel_stays_one_panel_under_the_log_lines(
    tiny_model_dir, tiny_csv, tmp_path, devices
) -> None:
    lines = run_in_terminal(
        [sys.executable, "-m", "autoft", "search", "--model", str(tiny_model_dir), "--train",
         str(tiny_csv), "--space", "quick", "--n-trials", "2", "--devices", devices,
         "--study", "tty", "--studies-dir", str(tmp_path / "studies"), "--base-kind", "none"],
        cwd=tmp_path,
    )
    screen = "\n".join(lines)
    panels = [i for i, line in enumerate(lines) if STATUS.match(line)]
    assert len(panels) == 1, screen  # redrawn in place, never printed again
    assert lines[panels[0]].startswith("2 complete, 0 pruned, 0 failed of 2"), screen
    assert not any(line.lstrip().startswith("trial ") and "config" in line for line in lines), (
        screen  # a stale copy of the running trials' table header
    )
    worker = r"^(\[worker \d cpu\] )?"  # the prefix of a worker process's lines
    for number in (0, 1):
        for line_start in (rf"{worker}trial {number} started on cpu \(pid \d+\)$",
                           rf"{worker}trial {number} finished: [\d.]+$",
                           rf"^trial {number} complete, accuracy [\d.]+ in \d+s: top "):
            found = [i for i, line in enumerate(lines) if re.match(line_start, line)]
            assert len(found) == 1 and found[0] < panels[0], (line_start, screen)
