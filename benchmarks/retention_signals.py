"""Which signal tells a trial's retention best: the check on the searched Lee documents (what the
search's decisions read), or the drift of news texts the checks never score (hundreds of texts
instead of dozens of document pairs)? For every complete trial of finished studies, its kept
weights as saved: the check's retention (recorded), the mean cosine of its embeddings of
lee_background.cor texts to the untouched model's (their drift), and the audit's retention on
the held-out Lee documents no decision read, and the word-level similarity on WordSim-353 and
SimLex-999 together (1,352 rated pairs, a steadier measure of the same skill than 25 documents).
Prints one row per trial, then the Spearman correlation of each signal with the two truths over
all trials.

    python benchmarks/retention_signals.py STUDY_DIR [STUDY_DIR ...] [--texts 300]

The studies must have a similarity base check on the Lee documents with an audit part (the demo's,
and benchmarks/forgetting.py's). The drift is measured on the first --texts lines of
lee_background.cor, truncated at 64 tokens, as the preservation loss reads them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import optuna
import torch
import transformers
from forgetting import WORD_PAIRS, package_path, read_word_pairs, word_similarity
from optuna.trial import TrialState
from scipy.stats import rankdata, spearmanr

from autoft.audit import bootstrap_retention, recorded_base_task
from autoft.config import resolve_path
from autoft.errors import UsageError
from autoft.export import load_trial_model
from autoft.forgetting import retention
from autoft.forgetting.encoders import mean_pool
from autoft.forgetting.readers import read_lines
from autoft.tasks import recorded_task

NEWS = "pkg:gensim/test/test_data/lee_background.cor"
MAX_LENGTH = 64


def all_word_pairs() -> tuple[list[str], list[str], np.ndarray]:
    """WordSim-353 and SimLex-999 as one list of pairs, each set's scores ranked within it (their
    scales differ), so one Spearman reads both."""
    left, right, gold = [], [], []
    for path in WORD_PAIRS.values():
        words_a, words_b, scores = read_word_pairs(package_path(path))
        left, right = left + words_a, right + words_b
        gold.append(rankdata(scores) / len(scores))
    return left, right, np.concatenate(gold)


WORDS = all_word_pairs()


@torch.no_grad()
def unit_embeddings(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """Each text's mean-pooled last hidden state, normalized (what the similarity check reads)."""
    encoder = model.base_model.eval()
    rows = []
    for start in range(0, len(texts), 32):
        batch = tokenizer(texts[start:start + 32], padding=True, truncation=True,
                          max_length=MAX_LENGTH, return_tensors="pt")
        pooled = mean_pool(encoder(**batch).last_hidden_state, batch["attention_mask"])
        rows.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(rows)


def saved_trial_models(study: optuna.Study, kind):
    """(trial, its kept weights as a model) for every complete trial whose weights are here."""
    attrs = study.user_attrs
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        try:
            tuned, _ = load_trial_model(kind, attrs["model"], attrs["label_names"], trial)
        except UsageError:
            continue
        yield trial, tuned


def study_rows(study_dir: Path, texts: list[str]) -> list[dict]:
    """One dict per complete trial with saved weights: check, drift and audit retention."""
    study = optuna.load_study(study_name=study_dir.name,
                              storage=f"sqlite:///{study_dir / 'study.db'}")
    attrs = study.user_attrs
    config = attrs["config"]
    kind = recorded_task(attrs)
    model, tokenizer = kind.load_model(attrs["model"], attrs["label_names"],
                                       config["trust_remote_code"])
    task = recorded_base_task(attrs, tokenizer)
    base_observed = task.observe(model, "cpu")
    base_embedded = unit_embeddings(model, tokenizer, texts)
    base_words = word_similarity(model.base_model, tokenizer, WORDS)
    rows = []
    for trial, tuned in saved_trial_models(study, kind):
        audit = bootstrap_retention(task, base_observed, task.observe(tuned, "cpu"),
                                    seed=config["seed"], resamples=200)
        drift = float((unit_embeddings(tuned, tokenizer, texts) * base_embedded).sum(-1).mean())
        words = retention(base_words, word_similarity(tuned.base_model, tokenizer, WORDS), True)
        rows.append({"study": study_dir.name, "trial": trial.number,
                     "check": trial.user_attrs.get("retention"), "drift": drift,
                     "audit": audit["retention"], "words": words})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", type=Path)
    parser.add_argument("--texts", type=int, default=300, help="news texts the drift reads")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    texts = read_lines(resolve_path(NEWS, None))[:args.texts]
    rows = [row for folder in args.studies for row in study_rows(folder.resolve(), texts)]
    print("| study | trial | check retention | news drift (mean cosine) | audit retention | "
          "word-pair retention |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        check = "—" if row["check"] is None else f"{row['check']:.3f}"
        print(f"| {row['study']} | {row['trial']} | {check} | {row['drift']:.4f} | "
              f"{row['audit']:.3f} | {row['words']:.3f} |")
    checked = [row for row in rows if row["check"] is not None]
    print(f"\nSpearman over {len(checked)} trials | with the audit | with word pairs")
    for signal in ("check", "drift", "audit"):
        values = [row[signal] for row in checked]
        print(f"{signal:>9} | {spearmanr(values, [r['audit'] for r in checked]).statistic:.2f} | "
              f"{spearmanr(values, [r['words'] for r in checked]).statistic:.2f}")


if __name__ == "__main__":
    main()
