"""Every evaluation of a trial records how precisely its score is known."""

from __future__ import annotations

import math
import subprocess


def test_every_evaluation_of_a_real_trial_records_its_noise(
    tiny_model_dir, tiny_csv, write_space, search_args, cli_env, open_sqlite_study, tmp_path
):
    space = write_space(tmp_path / "space.yaml", epochs=2)
    studies = tmp_path / "studies"
    run = subprocess.run(search_args(tiny_model_dir, tiny_csv, space, studies, "noise", 1, "cpu"),
                         env=cli_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    (trial,) = open_sqlite_study(studies, "noise").trials
    evaluations = trial.user_attrs["evaluations"]
    assert [e["step"] for e in evaluations] == [1, 2]
    for evaluation in evaluations:
        assert 0 < evaluation["standard_error"] < math.inf, evaluation
