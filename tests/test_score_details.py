"""Precision and recall beside the metric (Task.score_details), on hand-computed cases: macro
averages for one label per row, micro ones and subset accuracy for multi-label, per class;
nothing for regression.
"""

from __future__ import annotations

import pytest

from autoft.describe import MAX_CLASSES_SHOWN, describe_details, per_class_rows, shown_details
from autoft.tasks import get_task


def test_classification_gives_macro_precision_and_recall_and_each_class():
    labels = [0, 0, 0, 1, 1, 2]
    predictions = [0, 0, 1, 1, 2, 2]
    # a: 2 of 2 predicted right, 2 of 3 found; b: 1 of 2, 1 of 2; c: 1 of 1, 1 of 1
    details = get_task("text-classification").score_details(labels, predictions,
                                                             ["a", "b", "c"])
    assert details["average"] == "macro"
    assert details["precision"] == pytest.approx((1 + 0.5 + 0.5) / 3, abs=1e-4)
    assert details["recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3, abs=1e-4)
    assert details["per_label"]["a"] == {"precision": 1.0, "recall": 0.6667, "f1": 0.8,
                                         "support": 3}
    assert details["per_label"]["c"] == {"precision": 0.5, "recall": 1.0, "f1": 0.6667,
                                         "support": 1}
    assert describe_details(details) == "precision 0.6667, recall 0.7222 (macro average)"


def test_a_class_never_labelled_nor_predicted_is_listed_but_not_averaged():
    details = get_task("image-classification").score_details([0, 0, 1], [0, 1, 1],
                                                              ["a", "b", "c"])
    assert details["per_label"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                         "support": 0}
    assert details["precision"] == pytest.approx((1 + 0.5) / 2, abs=1e-4)  # as macro-F1 counts


def test_multi_label_gives_micro_precision_recall_and_subset_accuracy():
    labels = [[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0]]
    decided = [[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0]]
    # pooled: 3 right of 4 predicted, of 5 labelled; only the last row wholly right
    details = get_task("multi-label").score_details(labels, decided, ["x", "y", "z"])
    assert (details["average"], details["precision"], details["recall"]) == ("micro", 0.75, 0.6)
    assert details["subset_accuracy"] == 0.25
    assert details["per_label"]["y"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5,
                                         "support": 2}
    assert details["per_label"]["z"]["recall"] == 0.0
    assert describe_details(details) == ("precision 0.7500, recall 0.6000 (micro average), "
                                         "subset accuracy 0.2500")


def test_multi_label_decides_at_its_tuned_threshold():
    labels = [[1, 0], [0, 1], [1, 1], [0, 0]]
    probabilities = [[0.3, 0.1], [0.2, 0.4], [0.35, 0.3], [0.1, 0.2]]  # 0.25 separates both
    decided = get_task("multi-label").decisions("micro_f1", labels, probabilities)
    assert decided == labels


def test_regression_has_no_classes_to_detail():
    assert get_task("text-regression").score_details([0.1, 0.5], [0.2, 0.4], ["score"]) == {}
    assert describe_details({}) == "" and describe_details(None) == ""


def test_per_class_is_shown_up_to_twenty_classes():
    def details(classes: int) -> dict:
        names = [f"c{i}" for i in range(classes)]
        return get_task("text-classification").score_details(
            list(range(classes)), list(range(classes)), names)

    assert len(per_class_rows(details(MAX_CLASSES_SHOWN))) == MAX_CLASSES_SHOWN
    many = details(MAX_CLASSES_SHOWN + 1)
    assert per_class_rows(many) == [] and "per_label" not in shown_details(many)
    assert shown_details(many)["precision"] == 1.0
