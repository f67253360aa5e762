"""The `autoft` command: demo, search, worker, status, report, export.

Bad input ends with one sentence and exit code 2, before any trial starts; a run that cannot
show its result (a full disk) with one sentence and exit code 3.

This module parses and checks the command line; autoft.commands does the work. main() imports it
once the command line proved good, the deferred import of autoft's own code: it brings torch,
transformers and matplotlib, about 12 s here (0.2 s without), which `autoft --help` and a
mistyped flag should not wait for. `autoft status` reads the storage alone: main() imports
autoft.status instead, about 1 s.
"""

from __future__ import annotations

import argparse
import faulthandler
import signal
import sys
from importlib.resources import files
from pathlib import Path

from autoft.config import (
    BASE_KINDS,
    PRECISIONS,
    PRUNERS,
    StudyConfig,
    build_config,
    load_yaml,
    setting_names,
)
from autoft.errors import NOTHING_TO_SHOW_EXIT, NothingToShow, UsageError
from autoft.files import full_disk_said

DEMO_FILE = files("autoft") / "demo.yaml"  # package data
DEMO_LM_FILE = files("autoft") / "demo_lm.yaml"  # `autoft demo --task causal-lm`


def add_study_flags(parser: argparse.ArgumentParser) -> None:
    """The settings of a study definition, as flags (they override the study file)."""
    add = parser.add_argument
    add("study_file", nargs="?", help="a study YAML file (see studies/); flags override it")
    add("--model", help="a local model folder or a hub name")
    add(
        "--train",
        help="training data: .csv, .tsv, .jsonl, .json, .parquet, a saved datasets "
        "folder, or a hub name",
    )
    add("--task", help="text-classification, text-regression, multi-label, "
        "token-classification, causal-lm or image-classification (default: auto, from the "
        "data: prompt and response columns, or texts without labels for a causal LM, are "
        "causal-lm, word and tag list columns or CoNLL text token-classification, a folder of "
        "class folders of images or a table with an image column is image-classification, a "
        "label column of lists or of names separated by ';', '|' or ',' multi-label, one of "
        "many distinct numbers a regression)")
    add("--validation", help="validation data (default: a stratified split of --train)")
    add("--val-fraction", type=float, help="share of train kept for validation (default 0.2)")
    add("--text-column", help="column with the text (default: text)")
    add("--text-pair-column", help="a second text column, for sentence pairs")
    add("--label-column", help="column with the label (default: label)")
    add("--prompt-column", help="causal-lm: column with the prompt (default: prompt)")
    add("--response-column", help="causal-lm: column with the response the loss counts "
        "(default: response)")
    add("--label-columns", help="multi-label: columns of 0 and 1, one per label, named by commas "
        "(a,b,c), in place of one --label-column")
    add("--metric", help="classification: accuracy or macro_f1 (default: auto, macro_f1 for "
        "unbalanced classes); regression: spearman (default), pearson or rmse; "
        "token-classification: entity_f1 (default, micro) or entity_macro_f1; causal-lm: loss")
    add("--max-length", type=int, help="tokens per text (default: from the data's lengths)")
    add("--max-train-samples", type=int, help="use at most this many training rows")
    add("--max-val-samples", type=int, help="use at most this many validation rows")
    add("--eval-every-samples", type=int, help="evaluate every N samples (default: each epoch)")
    add(
        "--preset",
        help="quick, default or thorough: picks the space, the budget and the pruning "
        "(other flags win over it)",
    )
    add("--space", help="search space: default, quick, thorough or a YAML file")
    add("--n-trials", type=int, help="total trials of the study, across restarts (default 20)")
    add("--timeout", help="stop starting trials after this long, like 8h or 30m")
    add("--seed", type=int, help="random seed (default 0)")
    add(
        "--pruner",
        choices=PRUNERS,
        help="median (default: prunes only beyond a trial's own noise; a costly trial must "
        "lead), or Optuna's successive-halving or hyperband",
    )
    add("--pruner-startup-trials", type=int, help="complete trials before pruning starts")
    add("--pruner-warmup-steps", type=int, help="evaluations of a trial that are never pruned")
    add("--study", dest="name", help="study name: its folder is <studies-dir>/<name>")
    add("--studies-dir", help="where study folders live (default: studies)")
    add("--storage", help="an Optuna storage URL (default: SQLite in the study folder)")
    add_device_flags(parser)
    add(
        "--trust-remote-code",
        action="store_const",
        const=True,
        help="allow the model's own Python code to run (off by default)",
    )
    add(
        "--augment",
        action="store_const",
        const=True,
        help="image-classification: flip and shift training images at random (off by default; "
        "turns the prefix cache off)",
    )
    add(
        "--cache",
        choices=("on", "off"),
        help="compute the frozen bottom layers once and train from their cached output "
        "(default on)",
    )
    add(
        "--precision",
        choices=PRECISIONS,
        help="what trials compute in: bf16 (autocast), fp32, or auto: bf16 where the CPU or "
        "GPU has bf16 instructions (default auto)",
    )
    add("--base-kind", help=f"base-task check: {', '.join(BASE_KINDS)}; none checks no "
        "forgetting (default auto: ranking of general English for encoders, causal_lm for "
        "causal LMs)")
    add("--base-data", help="base-task data file")
    add("--base-ratings", help="for the Lee layout: the matrix of similarity ratings")
    add("--base-text-column",
        help="base-task table: its text column, or qa's questions (default: text)")
    add("--base-text-pair-column",
        help="base-task table of pairs: the second text column, or qa's answers")
    add("--base-score-column", help="base-task table of pairs: the rating (default: score)")
    add("--base-label-column", help="base-task classification table: its labels (default: label)")
    add(
        "--base-preserve-data",
        help="unlabelled text (one a line, or a table with a text column) whose base-model "
        "outputs the preservation loss (preserve_weight) keeps",
    )
    add(
        "--min-retention",
        dest="base_min_retention",
        type=float,
        help="share of base-task skill a config must keep (default 0.95)",
    )


def add_device_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--devices",
        help="where trials run: auto (every GPU, else the CPU), cpu, cpu:N (N workers share "
        "the cores), cuda or cuda:0,cuda:2 (default auto)",
    )
    parser.add_argument(
        "--trials-per-gpu", type=int, help="trials packed on each GPU at once (default 1)"
    )


def config_from_args(args: argparse.Namespace, default_file: Path | None = None) -> StudyConfig:
    """Study file (if any) plus flags into one checked StudyConfig."""
    path = args.study_file or default_file
    file_settings = load_yaml(path) if path else {}
    flags = {name: getattr(args, name, None) for name in setting_names()}
    return build_config(file_settings, path, flags)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoft", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the demo study (real model, real tweets; with "
                               "--task causal-lm: SmolLM2-135M-Instruct on real conversations)")
    add_study_flags(demo)
    search = commands.add_parser("search", help="run or resume a study")
    add_study_flags(search)
    for name, text in (
        ("report", "write the study's report (HTML, Markdown, JSON)"),
        ("export", "save the best model (or a trial's)"),
        ("status", "show the counts, the best so far and every running trial"),
        ("worker", "join a study with this machine's devices"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--study", required=True, help="study name")
        sub.add_argument("--studies-dir", default="studies", help="where study folders live")
        sub.add_argument("--storage", help="the study's storage URL (default: its SQLite file)")
        if name in ("report", "export"):
            sub.add_argument("--trust-remote-code", action="store_true",
                             help="allow the model's own Python code to run, for a study made "
                             "with --trust-remote-code (off by default)")
        if name == "export":
            sub.add_argument("--trial", type=int, help="trial number (default: the answer: the "
                             "soup of the best trials where it won, else the best trial)")
            sub.add_argument("--overwrite", action="store_true",
                             help="replace OUT even if it holds something other than an "
                             "earlier export of this study")
            sub.add_argument("out", help="folder to save the model in")
        if name == "worker":
            add_device_flags(sub)
            sub.add_argument("--timeout", help="stop starting trials after this long, like 8h")
            sub.add_argument("--wait", help="wait up to this long, like 10m, for `autoft search` "
                             "to create the study (a job array's tasks start in any order; "
                             "default: do not wait)")
    return parser


def demo_study(args: argparse.Namespace) -> Path:
    """The demo's study file, said on screen; the causal-lm demo's model and data are first made
    in its study's cache (autoft.demo_lm) and given as --model and --train unless set."""
    if args.task != "causal-lm":
        print("autoft demo: all-MiniLM-L6-v2 on real tweet sentiment, a small study on this "
              "machine.")
        return DEMO_FILE
    print("autoft demo --task causal-lm: SmolLM2-135M-Instruct tuned on the chatterbot "
          "corpus's English conversations, a small study on this machine.")
    from autoft.demo_lm import demo_inputs

    name = args.name or load_yaml(DEMO_LM_FILE)["name"]
    made = demo_inputs(Path(args.studies_dir or "studies") / name)
    args.model = args.model or made["model"]
    args.train = args.train or made["train"]
    return DEMO_LM_FILE


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # `kill -USR1 PID` prints where every thread of an autoft that seems stuck is, and goes on.
    if sys.__stderr__ is not None:
        faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)
    try:
        demo_file = None
        if args.command == "demo":
            demo_file = demo_study(args)
        config = None
        if args.command in ("demo", "search"):
            config = config_from_args(args, demo_file)
        if args.command == "status":  # the storage alone, no torch (see the module docstring)
            from autoft import status as commands
        else:
            from autoft import commands  # the heavy imports (see the module docstring)
        from autoft.storage import prepare_process  # already imported by either

        prepare_process()
        with full_disk_said(config.name if config else args.study):
            if config:
                commands.search(config)
                return 0
            return getattr(commands, args.command)(args)
    except UsageError as error:
        print(f"autoft: {error}", file=sys.stderr)
        return 2
    except NothingToShow as outcome:
        print(f"autoft: {outcome}", file=sys.stderr)
        return NOTHING_TO_SHOW_EXIT
    except KeyboardInterrupt:
        print("autoft: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130
