"""The same small study run twice, with the prefix cache and without it (same seed, same budget):
wall and CPU time end to end and the best score of each, on the demo's real model and tweets
(the demo's similarity check included). CPU time counts where other work shares the machine.

    python benchmarks/study_cache.py [--n-trials 4] [--samples 300]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import tempfile
import time

import optuna

from autoft.cli import main as autoft


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (worker processes)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def run(cache: str, folder: str, args) -> tuple[float, float, float, list]:
    """(wall s, CPU s, best value, [(trainable_layers, cache_used, s)]) of one whole study."""
    started, cpu_started = time.perf_counter(), cpu_seconds()
    with contextlib.redirect_stdout(io.StringIO()):
        code = autoft(
            [
                "demo",
                "--studies-dir", folder,
                "--study", f"cache-{cache}",
                "--cache", cache,
                "--n-trials", str(args.n_trials),
                "--max-train-samples", str(args.samples),
                "--max-val-samples", str(args.samples // 3),
                "--seed", str(args.seed),
            ]
        )  # fmt: skip
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    if code != 0:
        raise SystemExit(f"the study with --cache {cache} failed (exit code {code})")
    study = optuna.load_study(
        study_name=f"cache-{cache}", storage=f"sqlite:///{folder}/cache-{cache}/study.db"
    )
    trials = [
        (
            t.params.get(
                "trainable_layers", t.user_attrs.get("params", {}).get("trainable_layers")
            ),
            t.user_attrs.get("cache_used"),
            (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else 0,
        )
        for t in study.trials
    ]
    return seconds, cpu, study.best_value, trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=4)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"load before: {os.getloadavg()[0]:.1f}")
    print(f"{'cache':>5} {'wall s':>8} {'CPU s':>8} {'best':>8}  trials (layers, cache used, s)")
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for cache in ("off", "on"):
            seconds, cpu, best, trials = run(cache, folder, args)
            results[cache] = (seconds, cpu, best)
            shown = ", ".join(f"({k}, {'y' if u else 'n'}, {s:.0f})" for k, u, s in trials)
            print(f"{cache:>5} {seconds:>8.1f} {cpu:>8.1f} {best:>8.4f}  {shown}")
    (wall_off, cpu_off, best_off), (wall_on, cpu_on, best_on) = results["off"], results["on"]
    print(
        f"speed-up with the cache: {wall_off / wall_on:.2f}× wall, {cpu_off / cpu_on:.2f}× CPU; "
        f"best score difference {best_on - best_off:+.4f}"
    )
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
