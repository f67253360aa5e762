"""Advice that works: a setting that cannot be met or a path that does not exist is refused
before anything runs, in one sentence with the fix (exit 2, nothing else on stderr)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest


def refused(args: list[str], cwd, cli_env) -> tuple[str, float]:
    """The sentence an `autoft` process refuses with, and how long it took."""
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "autoft", *args], cwd=cwd, env=cli_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr, time.time() - started


@pytest.mark.parametrize("bar", ["1.5", "95", "-1"])
def test_a_bar_no_trial_can_meet_is_refused_before_any_trial(bar, tiny_model_dir, tiny_csv,
                                                             tmp_path, cli_env):
    """1.5 ran every trial, then exited 3 ('no trial kept 150%'), while 95 and -1 were
    refused up front."""
    err, _ = refused(["search", "--model", str(tiny_model_dir), "--train", str(tiny_csv),
                      "--min-retention", bar, "--studies-dir", "studies"], tmp_path, cli_env)
    assert f"--min-retention: {bar} is not a retention bar a study can meet" in err, err
    assert not (tmp_path / "studies").exists()


def test_a_mistyped_relative_model_folder_is_refused_at_once(tiny_model_dir, tiny_csv, tmp_path,
                                                             cli_env):
    """`models/bertt` beside a real `models/`: autoft asked the hub for it, twenty retries in
    56 s, then blamed the network."""
    (tmp_path / "models").mkdir()
    os.symlink(tiny_model_dir, tmp_path / "models" / "bert")
    err, seconds = refused(["search", "--model", "models/bertt", "--train", str(tiny_csv)],
                           tmp_path, cli_env)
    assert "--model: model folder models/bertt does not exist" in err, err
    assert seconds < 30
