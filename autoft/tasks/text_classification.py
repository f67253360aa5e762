"""text-classification: one label per text (or text pair) out of a few classes: the text kinds'
reading, tokenization and batches (autoft.tasks.text) with the class labels, stratified split and
metrics every classification kind shares (autoft.tasks.classification).
"""

from __future__ import annotations

from autoft.tasks.classification import Classification
from autoft.tasks.text import TextTask


class TextClassification(TextTask, Classification):
    """Single-label classification of texts or text pairs."""

    name = "text-classification"
