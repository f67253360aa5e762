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

import contextlib
import functools
import os

import torch
from precision import compare, comparison_parser, prepare
from trainer_vs_autoft import DEVICE

import autoft.train
from autoft.precision import precision_name, set_precision

KINDS = {"torch": lambda model, device: contextlib.nullcontext(),
         "autoft": autoft.train.cpu_dropout}


def main() -> None:
    parser = comparison_parser(__doc__.splitlines()[0], [0, 1, 2, 3])
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    set_precision(args.precision)
    config, data = prepare(args.samples, args.val_samples, 0)
    print(f"{len(data.train)} tweets, {len(data.validation)} to score ({data.metric}), "
          f"{args.epochs} epochs, seeds {args.seeds}, {args.threads} thread(s), "
          f"{precision_name(DEVICE)}; load before: {os.getloadavg()[0]:.1f}")
    compare(config, data, args, "dropout", {
        kind: functools.partial(setattr, autoft.train, "cpu_dropout", switch)
        for kind, switch in KINDS.items()})


if __name__ == "__main__":
    main()
