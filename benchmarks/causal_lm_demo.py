"""The causal-lm demo's numbers, before and after tuning: validation loss per response token (and
perplexity), perplexity on general English (Lee background news, texts the study never trained
on), the general-question score (the qa check: the gold answers' probability per token, on
general-knowledge questions the demo does not train on), and the greedy answers to five held-out
validation prompts.

    autoft demo --task causal-lm          # the study, then:
    python benchmarks/causal_lm_demo.py --study demo-lm [--studies-dir studies] [--texts 40]

Prints a table; the tuned model is the study's exported best_model/.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from autoft.config import BaseTaskConfig, DataSettings, resolve_path
from autoft.forgetting import build_base_task
from autoft.prepared import load_prepared_data
from autoft.tasks import Rows, get_task
from autoft.train import evaluate

GENERAL_TEXT = "pkg:gensim/test/test_data/lee_background.cor"
GENERAL_QUESTIONS = "pkg:autoft/base_data/general_qa.jsonl"
CPU = torch.device("cpu")


def general_text(tokenizer, model, count: int):
    """The first `count` Lee background documents as plain texts (every token counts)."""
    lines = [line.strip() for line in Path(resolve_path(GENERAL_TEXT, None)).read_text(
        errors="replace").splitlines() if line.strip()][:count]
    task = get_task("causal-lm")
    rows = Rows([None] * len(lines), lines, [None] * len(lines), lines, [])
    return task.encode(rows, tokenizer, model.config, DataSettings(train=GENERAL_TEXT))


def answers(model, tokenizer, split, indices: list[int]) -> list[str]:
    """Greedy answers (at most 40 tokens) to the prompts of examples `indices`."""
    said = []
    for i in indices:
        prompt = torch.tensor([split.input_ids[i][: split.prompt_lengths[i]]])
        with torch.no_grad():
            out = model.generate(prompt, max_new_tokens=40, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        said.append(tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True).strip())
    return said


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="demo-lm")
    parser.add_argument("--studies-dir", default="studies")
    parser.add_argument("--texts", type=int, default=40, help="general-text documents")
    parser.add_argument("--questions", type=int, default=60, help="general questions")
    parser.add_argument("--models", nargs="+", choices=("before", "after"),
                        default=["before", "after"],
                        help="the untouched model, the exported best model, or both")
    args = parser.parse_args()
    folder = Path(args.studies_dir) / args.study
    data, _, pad_id, _ = load_prepared_data(folder / "prepared")
    task = get_task("causal-lm")
    base_dir = next((folder / "cache").glob("smollm2*"))
    held_out = list(range(5))
    table, said = [], {}
    sources = {"before": base_dir, "after": folder / "best_model"}
    for name, source in ((name, sources[name]) for name in args.models):
        model, tokenizer = task.load_model(str(source), [], False)
        model.eval()
        loss = evaluate(model, data, pad_id, CPU)
        general = general_text(tokenizer, model, args.texts)
        general_loss = evaluate(model, general, pad_id, CPU)
        questions = build_base_task(
            BaseTaskConfig("qa", resolve_path(GENERAL_QUESTIONS, None),
                           max_examples=args.questions, check_examples=10),
            str(base_dir), tokenizer, data.max_length)
        asked = questions.score(model, "cpu").value
        table.append((name, loss, math.exp(loss), math.exp(general_loss), asked))
        said[name] = answers(model, tokenizer, data.validation, held_out)
    print("| model | validation loss | validation perplexity | general-text perplexity | "
          "general-question answer probability |")
    print("|---|---|---|---|---|")
    for name, loss, perplexity, general, asked in table:
        print(f"| {name} | {loss:.4f} | {perplexity:.2f} | {general:.2f} | {asked:.4f} |")
    print()
    split = data.validation
    for k, i in enumerate(held_out):
        start = split.prompt_lengths[i]
        turns = tokenizer.decode(split.input_ids[i][:start], skip_special_tokens=True)
        question = [line for line in turns.splitlines() if line.strip()][-2]  # the user's line
        expected = tokenizer.decode(split.input_ids[i][start:], skip_special_tokens=True)
        print(f"prompt {k + 1}: {question}")
        print(f"  expected: {expected.strip()}")
        for name in args.models:
            print(f"  {name + ':':9} {said[name][k]}")


if __name__ == "__main__":
    main()
