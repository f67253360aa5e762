"""The same small study run twice, with the prefix cache and without it (same seed, same budget):
wall and CPU time end to end, the best score of each, and each trial's time side by side, on the
demo's real model and tweets (the demo's similarity check included).

    python benchmarks/study_cache.py [--n-trials 8] [--samples 1200] [--top-layers N]

Both runs start from the same configs (the space's default and starts); after those the sampler
follows the scores, and cached and uncached trials agree only to float precision, so the two runs
may part ways; trials with the same config are compared side by side. The cache shortens a trial
by the forward pass of its frozen blocks; one that trains every layer it cannot shorten, so
"bound" is the study's speed-up if every cached trial cost nothing at all. --top-layers N limits
the quick space to the top N layers, as a study that must keep its base skill might.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import optuna

from autoft.cli import main as autoft
from autoft.space import find_space_file


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (worker processes)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def space_file(folder: str, top_layers: int | None) -> str:
    """The quick space, or a copy whose trainable_layers goes up to `top_layers` only."""
    if top_layers is None:
        return "quick"
    text = find_space_file("quick").read_text()
    text, found = re.subn(
        r"^trainable_layers: .*$",
        f"trainable_layers: {{low: 0, high: {top_layers}, default: {top_layers}}}",
        text,
        flags=re.MULTILINE,
    )
    assert found == 1, "search_spaces/quick.yaml has no trainable_layers line"
    path = Path(folder) / f"top-{top_layers}.yaml"
    path.write_text(text)
    return str(path)


@dataclass(frozen=True)
class Trial:
    params: dict
    state: str
    cached: bool
    seconds: float
    value: float | None


def run(cache: str, folder: str, space: str, args) -> tuple[float, float, float, list[Trial]]:
    """(wall s, CPU s, best feasible value, trials) of one whole study."""
    started, cpu_started = time.perf_counter(), cpu_seconds()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = autoft(
            [
                "demo",
                "--studies-dir", folder,
                "--study", f"cache-{cache}",
                "--cache", cache,
                "--space", space,
                "--n-trials", str(args.n_trials),
                "--max-train-samples", str(args.samples),
                "--max-val-samples", str(args.samples // 3),
                "--seed", str(args.seed),
            ]
        )  # fmt: skip
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    if code != 0:
        raise SystemExit(f"the study with --cache {cache} failed (exit code {code})")
    study_dir = Path(folder) / f"cache-{cache}"
    summary = json.loads((study_dir / "summary.json").read_text())
    study = optuna.load_study(
        study_name=f"cache-{cache}", storage=f"sqlite:///{study_dir}/study.db"
    )
    trials = [
        Trial(
            t.user_attrs.get("params", {}),
            t.state.name.lower(),
            bool(t.user_attrs.get("cache_used")),
            (t.datetime_complete - t.datetime_start).total_seconds(),
            t.value,
        )
        for t in study.trials
    ]
    best = summary["best"] or {"value": float("nan")}  # none feasible
    return seconds, cpu, best["value"], trials


def show(trial: Trial) -> str:
    value = "-" if trial.value is None else f"{trial.value:.4f}"
    return (f"{trial.params.get('trainable_layers'):>6} {trial.state:>9} {value:>7} "
            f"{trial.seconds:>6.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=8)
    parser.add_argument("--samples", type=int, default=1200)
    parser.add_argument("--top-layers", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"load before: {os.getloadavg()[0]:.1f}")
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        space = space_file(folder, args.top_layers)
        for cache in ("off", "on"):
            results[cache] = run(cache, folder, space, args)
    (wall_off, cpu_off, best_off, off), (wall_on, cpu_on, best_on, on) = (
        results["off"], results["on"])  # fmt: skip
    side = f"{'layers':>6} {'state':>9} {'value':>7} {'s':>6}"
    print(f"{'':>5} {'--- cache off ---':^31} {'--- cache on ---':^31}")
    print(f"{'trial':>5} {side} {side} {'cached':>6} ×")
    for number, (a, b) in enumerate(zip(off, on, strict=True)):
        same = a.params == b.params  # float noise can steer the sampler apart after the starts
        print(
            f"{number:>5} {show(a)} {show(b)} {'yes' if b.cached else 'no':>6} "
            + (f"{a.seconds / b.seconds:.2f}×" if same else "(other config)")
        )
    uncacheable = sum(t.seconds for t in on if not t.cached)
    bound = (
        f"trials the cache cannot serve take {uncacheable:.0f} s of the cached run, so no cache "
        f"could beat {wall_off / uncacheable:.2f}× here"
        if uncacheable
        else "the cache served every trial"
    )
    print(f"{'':>5} {'cache':>6} {'wall s':>9} {'CPU s':>7} {'best feasible':>13}")
    for name, (wall, cpu, best, _) in results.items():
        print(f"{'':>5} {name:>6} {wall:>9.1f} {cpu:>7.1f} {best:>13.4f}")
    print(
        f"speed-up with the cache: {wall_off / wall_on:.2f}× wall, {cpu_off / cpu_on:.2f}× CPU; "
        f"best score difference {best_on - best_off:+.4f}; {bound}"
    )
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
