"""What autoft.dropout changes in a CPU trial against torch's own dropout: its speed and its final
score, on real tweets and all-MiniLM-L6-v2, for the same configs under several seeds (the seeds'
spread is the noise a difference has to beat), in the precision autoft computes in.

    python benchmarks/cpu_dropout.py [--samples 600] [--val-samples 400] [--epochs 3]
        [--layers 2 6] [--seeds 0 1 2 3] [--threads 1] [--precision auto]

Trials run as precision.py runs them (the prefix cache where blocks are frozen, built outside the
timing; samples per CPU-second of this process); "torch" trains with train_trial's dropout
switch held off, so dropout layers and attention are transformers' own.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
from pathlib import Path

import torch
from precision import prepare, run
from trainer_vs_autoft import DEVICE

import autoft.train
from autoft.precision import precision_name, set_precision
from autoft.train import TrialParams

KINDS = {"torch": lambda model, device: contextlib.nullcontext(),
         "autoft": autoft.train.cpu_dropout}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--val-samples", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 6])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    set_precision(args.precision)
    config, data = prepare(args.samples, args.val_samples, 0)
    print(f"{len(data.train)} tweets, {len(data.validation)} to score ({data.metric}), "
          f"{args.epochs} epochs, seeds {args.seeds}, {args.threads} thread(s), "
          f"{precision_name(DEVICE)}; load before: {os.getloadavg()[0]:.1f}")
    print(f"{'layers':>6} {'dropout':>8} {'score mean':>10} {'spread':>7} {'samples/s':>10}  "
          "scores by seed")
    for layers in args.layers:
        params = TrialParams(learning_rate=1e-4 if layers < 6 else 5e-5, head_lr_multiplier=10.0,
                             batch_size=32, trainable_layers=layers, epochs=args.epochs,
                             weight_decay=0.01, warmup_ratio=0.06)
        for kind, switch in KINDS.items():
            autoft.train.cpu_dropout = switch
            results = []
            for seed in args.seeds:
                with tempfile.TemporaryDirectory() as folder:
                    results.append(run(config, data, params, seed, Path(folder)))
            scores = [s for s, _ in results]
            print(f"{layers:>6} {kind:>8} {statistics.mean(scores):>10.4f} "
                  f"{max(scores) - min(scores):>7.4f} "
                  f"{statistics.mean(r for _, r in results):>10.1f}  "
                  + " ".join(f"{s:.4f}" for s in scores), flush=True)
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
