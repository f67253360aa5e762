"""The docs cannot drift: the site builds with `mkdocs build --strict`, every Python block in
docs/ compiles, and every `autoft ...` command line shown in docs/ and README.md parses with
autoft's own parser.

A command line holding a placeholder is skipped: `...` (an elided argument) or `[` (an optional
part, `[--trial N]`). Write a runnable example where you can, so that it is checked.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from autoft.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md"))
PLACEHOLDERS = ("...", "[")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def fenced(text: str, languages: tuple[str, ...]) -> list[str]:
    """The bodies of the fenced blocks in one of `languages`."""
    return [body for language, body in FENCE.findall(text) if language in languages]


def indented(text: str) -> list[str]:
    """The bodies of indented code blocks: lines of four spaces after a blank line, outside
    fences (the README's command blocks)."""
    blocks, block, previous_blank, in_fence = [], [], True, False
    for line in text.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        if not in_fence and line.startswith("    ") and (block or previous_blank):
            block.append(line[4:])
        elif block:
            blocks.append("\n".join(block))
            block = []
        previous_blank = not line.strip()
    if block:
        blocks.append("\n".join(block))
    return blocks


def command_lines() -> list[tuple[str, str]]:
    """Every `autoft ...` line of a command block in docs/*.md and README.md, with its file."""
    found = []
    for path in [*PAGES, ROOT / "README.md"]:
        text = path.read_text()
        blocks = fenced(text, ("bash", "console", "sh", "shell")) + indented(text)
        for block in blocks:
            for line in block.splitlines():
                line = line.strip().removeprefix("$ ")
                for command in re.split(r"\s*&&\s*", line.split("  #")[0]):
                    if command.startswith("autoft "):
                        found.append((path.name, command))
    return found


def test_the_site_builds_strict(tmp_path):
    """mkdocs.yml is strict: a broken link, a missing page or a docstring mkdocstrings cannot
    read is an error, not a warning."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    assert (tmp_path / "site" / "api" / "index.html").is_file()


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_python_blocks_compile(page):
    for number, block in enumerate(fenced(page.read_text(), ("python", "py"))):
        compile(block, f"{page.name}, python block {number + 1}", "exec")


COMMANDS = command_lines()


def test_the_docs_show_commands():
    """The extraction finds the commands (a changed fence would otherwise check nothing)."""
    files = {name for name, _ in COMMANDS}
    assert {"README.md", "getting-started.md", "clusters.md"} <= files
    assert sum(1 for _ in COMMANDS) >= 10


@pytest.mark.parametrize(("name", "line"), COMMANDS, ids=[f"{n}: {c}" for n, c in COMMANDS])
def test_a_shown_command_parses(name, line):
    if any(mark in line for mark in PLACEHOLDERS):
        pytest.skip(f"a placeholder in {name}: {line}")
    try:
        build_parser().parse_args(shlex.split(line)[1:])
    except SystemExit as error:
        pytest.fail(f"{name}: `{line}` does not parse (exit {error.code})")
