"""Is the default forgetting check (kind `ranking` on autoft's general English) a valid reading of
a sentence encoder's skill? For every complete trial of finished studies, its kept weights: the
default check's agreement and calibrated retention (on the searched part the decisions read, its
quick slice, and the audit part), the gold retention no decision reads (Spearman of the cosine
with human ratings on all 50 Lee documents, 1,225 pairs, tuned over untouched, with a paired
bootstrap interval over documents) and the negative control, word pairs (WordSim-353 and
SimLex-999, 1,352 pairs). Then: rank agreement of each signal with the gold across trials, the
calibration slope (ranking.SLOPE) fitted leave-one-study-out, and the verdict at the bar against
the gold verdict where the gold interval lies wholly on one side of the bar.

    python benchmarks/default_check.py make --tasks tweets,newsgroups,bbc --out DIR
    python benchmarks/default_check.py measure DIR/studies/*

`make` runs one study per task (pip install -e ".[bench]"; 600 training rows unless
--train-rows says, 200 validation rows)
over a fixed grid of 8 configs chosen to span the forgetting range (the top layers to full depth,
2e-4 to 1e-3, two with the preservation loss), the default check on with no bar (min_retention 0)
and no curve, so every trial keeps its trained weights and the check's own reading is recorded.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import transformers
import yaml
from forgetting import TASKS, package_path, word_similarity, write_splits
from retention_signals import WORDS, saved_trial_models
from scipy.stats import pearsonr, spearmanr

from autoft.audit import bootstrap_retention
from autoft.cli import DEMO_FILE
from autoft.config import GENERAL_TEXT, BaseTaskConfig, load_yaml
from autoft.forgetting import BaseSplit, build_base_task, paired_interval, retention
from autoft.forgetting.kinds.ranking import RankingTask
from autoft.tasks import recorded_task

BAR = 0.95
RESAMPLES = 200
LEE = BaseTaskConfig(kind="similarity", data=str(package_path("pkg:gensim/test/test_data/lee.cor")),
                     ratings=str(package_path("pkg:gensim/test/test_data/similarities0-1.txt")))
GRID = [
    {"trainable_layers": 2, "learning_rate": 5.0e-4},
    {"trainable_layers": "max", "learning_rate": 5.0e-5},
    {"trainable_layers": "max", "learning_rate": 1.0e-4},
    {"trainable_layers": "max", "learning_rate": 3.0e-4},
    {"trainable_layers": "max", "learning_rate": 1.0e-3},
    {"trainable_layers": 4, "learning_rate": 2.0e-4, "preserve_weight": 1},
    {"trainable_layers": "max", "learning_rate": 3.0e-4, "preserve_weight": 1},
]
SPACE = {
    "learning_rate": {"low": 1.0e-5, "high": 1.0e-3, "log": True, "default": 2.0e-4},
    "head_lr_multiplier": {"value": 10}, "batch_size": {"value": 32},
    "trainable_layers": {"low": 0, "high": "max", "default": "half"},
    "epochs": {"value": 2}, "weight_decay": {"value": 0.01}, "warmup_ratio": {"value": 0.06},
    "preserve_weight": {"choices": [0, 1], "default": 0}, "adapter": {"value": "freeze"},
    "head_first_epochs": {"value": 0}, "interpolation_mixes": [], "starts": GRID,
}


def make(tasks: list[str], out: Path, seed: int, rows: int) -> None:
    """One study per task over the grid, each in its own process, timed."""
    out.mkdir(parents=True, exist_ok=True)
    space = out / "space-grid.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    for name in tasks:
        task = TASKS[name]
        data = write_splits(task, {"train": rows, "validation": 200, "test": 200}, seed,
                            out / "data" / name)
        study = {"name": f"grid-{name}", "studies_dir": str(out / "studies"),
                 "model": load_yaml(DEMO_FILE)["model"], "train": str(data["train"]),
                 "validation": str(data["validation"]), "max_length": task.max_length,
                 "space": str(space), "n_trials": len(GRID) + 1, "seed": seed,
                 "pruner_startup_trials": 100, "base": {"min_retention": 0.0}}
        study_file = out / f"grid-{name}.yaml"
        study_file.write_text(yaml.safe_dump(study, sort_keys=False))
        started = time.perf_counter()
        with (out / f"grid-{name}.log").open("w") as log:
            code = subprocess.call([sys.executable, "-m", "autoft", "search", str(study_file)],
                                   stdout=log, stderr=subprocess.STDOUT)
        print(f"{name}: exit {code} in {time.perf_counter() - started:.0f} s")


def half_width(task, base_observed, observed, part: str) -> float:
    low, high = paired_interval(task, base_observed, observed, part, 0, RESAMPLES)
    return (high - low) / 2


def study_rows(study_dir: Path) -> list[dict]:
    """One dict per complete trial with saved weights."""
    study = optuna.load_study(study_name=study_dir.name,
                              storage=f"sqlite:///{study_dir / 'study.db'}")
    attrs = study.user_attrs
    kind = recorded_task(attrs)
    model, tokenizer = kind.load_model(attrs["model"], attrs["label_names"], False)
    default = build_base_task(BaseTaskConfig(kind="ranking", data=GENERAL_TEXT,
                                             max_examples=RankingTask.default_sizes[0],
                                             check_examples=RankingTask.default_sizes[1]),
                              attrs["model"], tokenizer, 256, seed=0)
    gold = build_base_task(LEE, attrs["model"], tokenizer, 256,
                           split=BaseSplit("documents", 50, ()))
    base = {part: default.observe(model, "cpu", part) for part in ("quick", "search", "audit")}
    base_gold = gold.observe(model, "cpu")
    base_words = word_similarity(model.base_model, tokenizer, WORDS)
    rows = []
    for trial, tuned in saved_trial_models(study, kind):
        seen = {part: default.observe(tuned, "cpu", part) for part in base}
        agreement = default.agreement(seen["search"], np.arange(default.units_["search"]),
                                      "search")
        audit = bootstrap_retention(gold, base_gold, gold.observe(tuned, "cpu"), seed=0,
                                    resamples=RESAMPLES)
        words = retention(base_words, word_similarity(tuned.base_model, tokenizer, WORDS), True)
        rows.append({
            "study": study_dir.name, "trial": trial.number, "params": trial.params,
            "value": trial.value, "agreement": agreement,
            "quick_width": half_width(default, base["quick"], seen["quick"], "quick"),
            "search_width": half_width(default, base["search"], seen["search"], "search"),
            "audit_agreement": default.agreement(
                seen["audit"], np.arange(default.units_["audit"]), "audit"),
            "gold": audit["retention"], "gold_low": audit["low"], "gold_high": audit["high"],
            "words": words,
        })
        print(f"  {study_dir.name} trial {trial.number}: agreement {agreement:.4f}, "
              f"gold {audit['retention']:.3f}, words {words:.3f}", flush=True)
    return rows


def fitted_slope(rows: list[dict]) -> float:
    """Least squares through the origin of the gold's loss (1 - gold) on the agreement's, over
    the trials that lost some of the gold skill: a trial that gained (a news-topic task raising
    the news similarity) tells how a change can help, not how much a loss is worth."""
    lost = [row for row in rows if row["gold"] < 1]
    x = np.array([1 - row["agreement"] for row in lost])
    y = np.array([1 - row["gold"] for row in lost])
    return float((x * y).sum() / (x * x).sum())


def decided(row: dict) -> bool:
    """Whether the gold measure itself decides the verdict: its interval misses the bar."""
    return row["gold_low"] > BAR or row["gold_high"] < BAR


def measure(folders: list[Path]) -> None:
    rows = [row for folder in folders for row in study_rows(folder.resolve())]
    studies = sorted({row["study"] for row in rows})
    slopes = {study: fitted_slope([r for r in rows if r["study"] != study]) for study in studies}
    overall = fitted_slope(rows)
    for row in rows:
        held_out = slopes[row["study"]] if len(studies) > 1 else overall
        row["calibrated"] = 1 - held_out * (1 - row["agreement"])
    print("\n| study | trial | config | agreement | calibrated (slope fitted without the "
          "study) | ± quick / search (ranking.SLOPE) | audit agreement | Lee gold retention "
          "(95% interval) | word pairs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        params = row["params"]
        config = (f"top {params.get('trainable_layers')}, lr {params.get('learning_rate'):.0e}"
                  + (", preserve" if params.get("preserve_weight") else ""))
        print(f"| {row['study']} | {row['trial']} | {config} | {row['agreement']:.4f} | "
              f"{row['calibrated']:.3f} | {row['quick_width']:.3f} / "
              f"{row['search_width']:.3f} | {row['audit_agreement']:.4f} | "
              f"{row['gold']:.3f} ({row['gold_low']:.2f}-{row['gold_high']:.2f}) | "
              f"{row['words']:.3f} |")
    gold = [row["gold"] for row in rows]
    print(f"\nSlope: {overall:.2f} over all {len(rows)} trials; left one study out: "
          + ", ".join(f"{study} {slope:.2f}" for study, slope in slopes.items()))
    for signal in ("agreement", "audit_agreement", "words"):
        values = [row[signal] for row in rows]
        print(f"With the gold over {len(rows)} trials: {signal} Spearman "
              f"{spearmanr(values, gold).statistic:.2f}, Pearson "
              f"{pearsonr(values, gold).statistic:.2f}")
    sure = [row for row in rows if decided(row)]
    for signal in ("calibrated", "words"):
        for name, among in ((f"where the gold decides ({len(sure)} trials)", sure),
                            (f"on every trial's point ({len(rows)})", rows)):
            same = sum((row[signal] >= BAR) == (row["gold"] >= BAR) for row in among)
            print(f"Verdict at {BAR} {name}: {signal} agrees on {same} "
                  f"({same / max(len(among), 1):.0%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make_parser = commands.add_parser("make")
    make_parser.add_argument("--tasks", default="tweets,newsgroups,bbc")
    make_parser.add_argument("--out", type=Path, default=Path("studies/bench-default-check"))
    make_parser.add_argument("--seed", type=int, default=0)
    make_parser.add_argument("--train-rows", type=int, default=600)
    measure_parser = commands.add_parser("measure")
    measure_parser.add_argument("studies", nargs="+", type=Path)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.command == "make":
        make(args.tasks.split(","), args.out, args.seed, args.train_rows)
    else:
        measure(args.studies)


if __name__ == "__main__":
    main()
