"""Where a finished study's time went, trial by trial: training, evaluations, forgetting checks,
the interpolation curve, the prefix cache and the rest (loading, saving, the final check), read
from what every trial records in the storage; and how each trial ended early, if it did.

    python benchmarks/trial_time.py STUDY_DIR [STUDY_DIR ...]

STUDY_DIR is a study folder (`studies/<name>`, holding study.db). The shares are of the trials'
own wall time; the study's start-up, soup, audit and report come on top.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import optuna

from autoft.describe import describe_params
from autoft.trials import trial_seconds

PARTS = ("train", "evals", "checks", "curve", "cache")


def parts(trial: optuna.trial.FrozenTrial, wall: float) -> dict[str, float]:
    """Seconds of each part of one trial, and `other`: its `wall` time less the parts (every
    finished trial, pruned ones too, records its training seconds when its weights are saved)."""
    attrs = trial.user_attrs
    measured = {
        "train": attrs.get("train_seconds") or 0.0,
        "evals": sum(e.get("seconds", 0.0) for e in attrs.get("evaluations") or []),
        "checks": attrs.get("base_check_seconds") or 0.0,
        "curve": attrs.get("interpolation_seconds") or 0.0,
        "cache": attrs.get("cache_seconds") or 0.0,
    }
    measured["other"] = wall - sum(measured.values())
    return measured


def ending(trial: optuna.trial.FrozenTrial) -> str:
    attrs = trial.user_attrs
    reason = attrs.get("prune_reason") or attrs.get("stop_reason") or attrs.get("fail_reason")
    skipped = [attrs[key] for key in ("kept_not_mixed", "top_not_mixed") if key in attrs]
    return "; ".join(filter(None, [(reason or "")[:90], *(s[:60] for s in skipped)]))


def show(study_dir: Path) -> None:
    name = study_dir.name
    study = optuna.load_study(study_name=name,
                              storage=f"sqlite:///{(study_dir / 'study.db').resolve()}")
    depth = study.user_attrs.get("depth", 0)
    print(f"\n{name}")
    print(f"{'#':>3} {'state':<9}{'wall s':>8}" + "".join(f"{p:>8}" for p in (*PARTS, "other"))
          + "  config; how it ended")
    totals = dict.fromkeys((*PARTS, "other"), 0.0)
    wall = 0.0
    for trial in study.trials:
        if not trial.state.is_finished():
            continue
        own = trial_seconds(trial) or 0.0
        seconds = parts(trial, own)
        wall += own
        for key, value in seconds.items():
            totals[key] += value
        params = describe_params(trial.user_attrs.get("params") or trial.params, depth,
                                 short=True)
        print(f"{trial.number:>3} {trial.state.name.lower():<9}{own:>8.1f}"
              + "".join(f"{seconds[p]:>8.1f}" for p in (*PARTS, "other"))
              + f"  {params}; {ending(trial)}")
    shares = "".join(f"{100 * totals[p] / wall:>7.0f}%" if wall else f"{'-':>8}"
                     for p in (*PARTS, "other"))
    print(f"{'':>3} {'all':<9}{wall:>8.1f}{shares}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dirs", nargs="+", type=Path)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for study_dir in args.study_dirs:
        show(study_dir)


if __name__ == "__main__":
    main()
