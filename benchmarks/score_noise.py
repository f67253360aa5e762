"""What an evaluation's standard error (train.score_error, which the pruner reads) costs and how
large it is, for each metric on validation sets shaped like the spam study's: 500 rows, 65 of
them spam, a few messages wrong; regression on 500 pairs at a Spearman of about 0.7.

    python benchmarks/score_noise.py [--rows 500] [--repeats 3]

Seconds are CPU seconds of this process (the best of --repeats), so a busy machine inflates
them less than wall time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from autoft.tasks import get_task
from autoft.train import score_error


def classification(rows: int, wrong: tuple[int, int]) -> tuple[list, list]:
    """Labels with 13% spam, and predictions missing `wrong[0]` spam and flagging `wrong[1]`
    ham messages."""
    spam = round(rows * 0.13)
    labels = [1] * spam + [0] * (rows - spam)
    predictions = list(labels)
    for i in range(wrong[0]):
        predictions[i] = 0
    for i in range(wrong[1]):
        predictions[spam + i] = 1
    return labels, predictions


def regression(rows: int) -> tuple[list, list]:
    rng = np.random.default_rng(0)
    labels = rng.normal(size=rows)
    return labels.tolist(), (labels + rng.normal(size=rows)).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cases = [("text-classification", metric, *classification(args.rows, wrong))
             for metric in ("macro_f1", "accuracy") for wrong in ((1, 1), (4, 2))]
    cases += [("text-regression", metric, *regression(args.rows))
              for metric in ("spearman", "pearson", "rmse")]
    print(f"{'metric':<10} {'value':>7} {'std err':>8} {'CPU s':>7}")
    for kind, metric, labels, predictions in cases:
        task = get_task(kind)
        seconds = []
        for _ in range(args.repeats):
            began = time.process_time()
            error = score_error(task, metric, labels, predictions)
            seconds.append(time.process_time() - began)
        value = task.score(metric, labels, predictions)
        print(f"{metric:<10} {value:>7.4f} {error:>8.4f} {min(seconds):>7.3f}")


if __name__ == "__main__":
    main()
