"""Write autoft/base_data/general_text.txt, the general English the default forgetting check and
the default preservation loss read when a study names no base task: passages of 30-90 words, one a
line, from three public-domain texts of different registers, interleaved so that any first N
lines hold all three. Alice's Adventures in Wonderland (Project Gutenberg eBook #11, in the
wordcloud 1.9.6 sdist as examples/alice.txt), the Constitution of the United States (same sdist,
examples/constitution.txt) and Botchan (eBook #8868, in the sentencepiece 0.2.3 sdist as
test/botchan.txt); the Project Gutenberg header, licence and trademark are cut, leaving the
public-domain text alone (autoft/base_data/NOTICE).

    python benchmarks/make_general_text.py ALICE CONSTITUTION BOTCHAN
"""

from __future__ import annotations

import argparse
import re
from itertools import zip_longest
from pathlib import Path

OUT = Path("autoft/base_data/general_text.txt")
MIN_WORDS, MAX_WORDS = 30, 90
PER_SOURCE = 400  # passages taken from each text, its first


def body(text: str) -> str:
    """The text between Project Gutenberg's START and END lines (the whole text without them),
    without its "Produced by" credit."""
    start = re.search(r"\*\*\* ?START OF TH.*?\*\*\*", text)
    end = re.search(r"(\*\*\* ?END OF TH|End of (the )?Project Gutenberg)", text)
    kept = text[start.end() if start else 0 : end.start() if end else len(text)]
    return re.sub(r"\n\s*Produced by [^\n]*\n", "\n", kept)


def paragraphs(text: str) -> list[str]:
    """Paragraphs split at blank lines (a file without any, Botchan's wrapped lines, is one),
    whitespace joined; headings (no lower-case letter, or under six words) left out."""
    blocks = re.split(r"\n\s*\n", text)
    found = (" ".join(block.split()) for block in blocks)
    return [p for p in found if re.search(r"[a-z]", p) and len(p.split()) >= 6]


def passages(text: str) -> list[str]:
    """Consecutive paragraphs joined until MIN_WORDS, a long one cut at sentence ends before
    MAX_WORDS (at MAX_WORDS words where a sentence runs longer)."""
    out, current = [], []
    for paragraph in paragraphs(body(text)):
        for sentence in re.split(r"(?<=[.!?'\"])\s+(?=[A-Z'\"])", paragraph):
            words = sentence.split()
            if current and len(current) + len(words) > MAX_WORDS:
                out.append(" ".join(current))
                current = []
            current += words[:MAX_WORDS]
        if len(current) >= MIN_WORDS:
            out.append(" ".join(current))
            current = []
    return [p for p in out if len(p.split()) >= MIN_WORDS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    sources = [passages(path.read_text(encoding="utf-8-sig"))[:PER_SOURCE] for path in args.files]
    mixed = [p for group in zip_longest(*sources) for p in group if p]
    OUT.write_text("".join(p + "\n" for p in mixed), encoding="utf-8")
    counts = ", ".join(f"{path.name} {len(found)}" for path, found in
                       zip(args.files, sources, strict=True))
    print(f"{OUT}: {len(mixed)} passages ({counts})")


if __name__ == "__main__":
    main()
