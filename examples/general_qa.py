"""Write autoft/base_data/general_qa.jsonl, the general questions with answers that a `qa` base
check can read (`base.data: pkg:autoft/base_data/general_qa.jsonl`): the first question and
answer of each conversation (the first answer of a question asked twice) in chatterbot-corpus
1.3.3's English topics of general knowledge (BSD licence, Gunther Cox; pip install
chatterbot-corpus==1.3.3). Run from the repository root: python examples/general_qa.py
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import yaml

TOPICS = ("trivia", "science", "literature", "history", "computers", "politics", "sports")
OUT = Path("autoft/base_data/general_qa.jsonl")


def main() -> None:
    corpus = Path(importlib.util.find_spec("chatterbot_corpus").submodule_search_locations[0])
    rows = {}
    for topic in TOPICS:
        text = (corpus / "data" / "english" / f"{topic}.yml").read_text(encoding="utf-8")
        for turns in yaml.safe_load(text)["conversations"]:
            question, answer = (" ".join(str(turn).split()) for turn in turns[:2])
            if question and answer and question not in rows:  # a question asked again: its first
                rows[question] = {"question": question, "answer": answer, "topic": topic}
    OUT.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows.values()),
                   encoding="utf-8")
    print(f"{OUT}: {len(rows)} questions")


if __name__ == "__main__":
    main()
