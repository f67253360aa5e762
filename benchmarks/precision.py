"""What bf16 autocast changes in an autoft trial against float32: its speed and its final score, on
real tweets and all-MiniLM-L6-v2, for the same configs under several seeds (the seeds' spread is
the noise a difference has to beat).

    python benchmarks/precision.py [--samples 600] [--val-samples 400] [--epochs 3]
        [--layers 2 6] [--seeds 0 1] [--threads 1]

Each trial trains as a study's does (the prefix cache where blocks are frozen, built outside the
timing) and is scored on the validation split by its final weights. Samples per second are per
CPU-second of this process, as in trainer_vs_autoft.py, and per wall-second (what more threads
can gain, which CPU time hides).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch._dynamo.utils import calculate_time_spent
from trainer_vs_autoft import DEVICE, MODEL, TWEETS, fresh_model, time_build

from autoft.cache import PrefixCache
from autoft.config import build_config
from autoft.precision import cpu_has_native_bf16, set_precision
from autoft.tasks import DataSettings, get_task
from autoft.train import TrialParams, train_trial

PRECISIONS = ("fp32", "bf16")


def prepare(samples: int, val_samples: int, seed: int):
    config = build_config({"model": MODEL, "train": TWEETS, "label_column": "sentiment",
                           "max_train_samples": samples, "max_val_samples": val_samples,
                           "seed": seed}, None, {})
    task, settings = get_task("text-classification"), DataSettings.from_config(config)
    rows = task.read(settings)
    model, tokenizer = task.load_model(config.model, task.label_names(rows, settings), False)
    return config, task.encode(rows, tokenizer, model.config, settings)


class Result(NamedTuple):
    score: float  # final validation score
    per_cpu_second: float  # samples per CPU-second of this process
    per_wall_second: float  # samples per wall-second: what a second thread can gain
    compile_seconds: float  # torch.compile's share of the wall time (0 where nothing compiles)
    per_wall_second_compiled: float  # samples per wall-second once compiled: without those


def run(config, data, params: TrialParams, seed: int, folder: Path,
        prepare_model: Callable[[torch.nn.Module], object] | None = None) -> Result:
    """One trial; `prepare_model`, if given, is applied to its fresh model before it trains."""
    cache = PrefixCache(folder)
    time_build(config, data, params, cache)
    model = fresh_model(config, data, params.trainable_layers)
    if prepare_model is not None:
        prepare_model(model)
    scores = []
    compiled_before = calculate_time_spent()["total_wall_time"]
    started, wall_started = time.process_time(), time.perf_counter()
    train_trial(model, data, params, DEVICE, 0, seed, lambda e: scores.append(e.value),
                cache=cache)
    seconds, wall = time.process_time() - started, time.perf_counter() - wall_started
    samples = len(data.train) * params.epochs
    compiling = calculate_time_spent()["total_wall_time"] - compiled_before
    return Result(scores[-1], samples / seconds, samples / wall, compiling,
                  samples / (wall - compiling))


def compare(config, data, args, column: str, variants: dict[str, Callable[[], object]]) -> None:
    """One row per depth and variant (each set up by calling it; what it returns, if not None,
    prepares each trial's model): mean final score over the seeds, their spread, samples per
    CPU-second and per wall-second, each seed's score, and where it compiled the seconds
    torch.compile took in each and the wall rate without them. A variant that raises gets a row
    saying so, and the rest still run."""
    print(f"{'layers':>6} {column:>13} {'score mean':>10} {'spread':>7} {'per CPU-s':>10} "
          f"{'per wall-s':>10}  scores by seed")
    for layers in args.layers:
        params = TrialParams(learning_rate=1e-4 if layers < 6 else 5e-5, head_lr_multiplier=10.0,
                             batch_size=32, trainable_layers=layers, epochs=args.epochs,
                             weight_decay=0.01, warmup_ratio=0.06)
        for name, set_up in variants.items():
            results = []
            try:
                prepare_model = set_up()
                for seed in args.seeds:
                    with tempfile.TemporaryDirectory() as folder:
                        results.append(run(config, data, params, seed, Path(folder),
                                           prepare_model))
            except Exception as error:  # a variant this torch or CPU cannot run, say compiling
                line = (str(error).strip().splitlines() or [""])[0][:160]
                print(f"{layers:>6} {name:>13} failed: {type(error).__name__}: {line}",
                      flush=True)
                continue
            scores = [r.score for r in results]
            compiling = [r.compile_seconds for r in results]
            print(f"{layers:>6} {name:>13} {statistics.mean(scores):>10.4f} "
                  f"{max(scores) - min(scores):>7.4f} "
                  f"{statistics.mean(r.per_cpu_second for r in results):>10.1f} "
                  f"{statistics.mean(r.per_wall_second for r in results):>10.1f}  "
                  + " ".join(f"{s:.4f}" for s in scores)
                  + (f"  compile s: {' '.join(f'{c:.1f}' for c in compiling)}, per wall-s "
                     f"without: {statistics.mean(r.per_wall_second_compiled for r in results):.1f}"
                     if any(compiling) else ""), flush=True)
    print(f"samples per CPU-second and per wall-second of training; "
          f"load after: {os.getloadavg()[0]:.1f}")


def comparison_parser(description: str, seeds: list[int]) -> argparse.ArgumentParser:
    """The options of a comparison by `compare`: data size, epochs, depths, seeds, threads."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--val-samples", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 6])
    parser.add_argument("--seeds", type=int, nargs="+", default=seeds)
    parser.add_argument("--threads", type=int, default=1)
    return parser


def main() -> None:
    args = comparison_parser(__doc__.splitlines()[0], [0, 1]).parse_args()
    torch.set_num_threads(args.threads)
    config, data = prepare(args.samples, args.val_samples, 0)
    print(f"{len(data.train)} tweets, {len(data.validation)} to score ({data.metric}), "
          f"{args.epochs} epochs, seeds {args.seeds}, {args.threads} thread(s); native bf16: "
          f"{cpu_has_native_bf16()}; load before: {os.getloadavg()[0]:.1f}")
    compare(config, data, args, "precision",
            {precision: functools.partial(set_precision, precision) for precision in PRECISIONS})

if __name__ == "__main__":
    main()
