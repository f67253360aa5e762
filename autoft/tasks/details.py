"""Precision and recall beside a classification kind's metric (Task.score_details), through
scikit-learn, for one label per row (class indices) and for multi-label (0/1 rows) alike.
"""

from __future__ import annotations

from sklearn.metrics import precision_recall_fscore_support

DIGITS = 4  # stored rounded: a trial's record keeps them for every class


def precision_recall(labels: list, predictions: list, label_names: list[str],
                     average: str) -> dict:
    """Precision and recall averaged as `average` says ('macro': each class alike, over the
    classes labelled or predicted, as macro-F1 counts them; 'micro': every decision pooled),
    with that word, and each class's precision, recall, F1 and support (rows labelled with it)."""
    precision, recall, _, _ = precision_recall_fscore_support(
        labels, predictions, average=average, zero_division=0)
    each = precision_recall_fscore_support(
        labels, predictions, labels=list(range(len(label_names))), average=None,
        zero_division=0)
    return {
        "average": average,
        "precision": round(float(precision), DIGITS),
        "recall": round(float(recall), DIGITS),
        "per_label": {
            name: {"precision": round(float(p), DIGITS), "recall": round(float(r), DIGITS),
                   "f1": round(float(f), DIGITS), "support": int(n)}
            for name, p, r, f, n in zip(label_names, *each, strict=True)
        },
    }
