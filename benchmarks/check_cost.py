"""What a forgetting check costs, and what bf16 and batch size would change in it: for every
complete trial of finished studies, its kept weights as saved are checked on the quick slice as
the search checks them (float32, the study's own batches) and again under bf16 autocast and in
batches of other sizes; seconds per check (median of --repeats) and the retention each gives.

    python benchmarks/check_cost.py STUDY_DIR [STUDY_DIR ...] [--batch-sizes 8 32 64]
        [--repeats 3] [--threads 2]

The checks compute in float32 so that retention compares like with like against the base score
measured once at prepare time; bf16 is worth it only where it is faster by more than its change
of the retention is small against the check's own noise (its 95% interval, recorded per trial).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from autoft.audit import recorded_base_task
from autoft.export import load_trial_model
from autoft.forgetting import retention
from autoft.forgetting.base import tokenize_texts
from autoft.tasks import recorded_task


def timed_retention(task, model, base: float, repeats: int, bf16: bool) -> tuple[float, float]:
    """(median seconds, retention) of the quick check of `model`, as the guard computes it."""
    seconds, kept = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            observed = task.observe(model, "cpu", "quick")
        tuned = task.statistic(observed, np.arange(task.units_["quick"]), "quick")
        seconds.append(time.perf_counter() - began)
        kept = retention(base, tuned, task.higher_is_better)
    return statistics.median(seconds), kept


def show(study_dir: Path, args) -> None:
    study = optuna.load_study(study_name=study_dir.name,
                              storage=f"sqlite:///{(study_dir / 'study.db').resolve()}")
    attrs = study.user_attrs
    kind = recorded_task(attrs)
    model, tokenizer = kind.load_model(attrs["model"], attrs["label_names"],
                                       attrs["config"]["trust_remote_code"])
    task = recorded_base_task(attrs, tokenizer)
    texts = task.pairs_["quick"].texts if hasattr(task, "pairs_") else None
    base = attrs["base"]["quick_score"]
    variants = [("fp32", False, None), ("bf16", True, None)]
    if texts is not None:  # a similarity check: its texts can be batched otherwise
        variants += [(f"fp32 b{size}", False, size) for size in args.batch_sizes]
    print(f"\n{study_dir.name}: {task.name}, {task.units_['quick']} {task.split_.unit} in the "
          f"quick check, base {base:.4f}")
    print(f"{'#':>3}" + "".join(f"{name:>16}" for name, *_ in variants)
          + "   the search's (95% interval)")
    own = task.batches_["quick"] if texts is not None else None
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        tuned, _ = load_trial_model(kind, attrs["model"], attrs["label_names"], trial)
        cells = []
        for _, bf16, size in variants:
            if size is not None:
                task.batches_["quick"] = tokenize_texts(tokenizer, texts,
                                                        attrs["base"]["max_length"], size)
            seconds, kept = timed_retention(task, tuned, base, args.repeats, bf16)
            if own is not None:
                task.batches_["quick"] = own
            cells.append(f"{seconds:.3f}s {kept:.4f}")
        record = trial.user_attrs  # the search's full check of these weights
        low, high = record.get("retention_interval") or (math.nan, math.nan)
        print(f"{trial.number:>3}" + "".join(f"{cell:>16}" for cell in cells)
              + f"   {record.get('retention', math.nan):.4f} ({low:.4f}-{high:.4f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dirs", nargs="+", type=Path)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"{args.threads} thread(s); load before {os.getloadavg()[0]:.1f}; each cell: seconds "
          "per quick check, retention")
    for study_dir in args.study_dirs:
        show(study_dir, args)
    print(f"load after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
