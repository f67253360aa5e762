"""The multi-label task kind: labels read as lists or split on a separator found in the data, a
validation split that keeps every label on both sides, micro/macro-F1 at a threshold tuned on
validation, and a real search whose exported model carries its threshold.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score
from transformers import AutoModelForSequenceClassification

from autoft.cli import main
from autoft.config import build_config
from autoft.errors import UsageError
from autoft.export import export_trial
from autoft.prepare import check_task_settings
from autoft.record import TrialRecord
from autoft.storage import load_study
from autoft.tasks import DataSettings, detect_task, get_task
from autoft.tasks.multi_label import (
    MIN_POSITIVES,
    f1_at,
    fill_empty_sides,
    iterative_split,
    tuned_at,
)

TASK = "multi-label"


def tag_counts(labels: list[list[str]]) -> Counter:
    return Counter(label for row in labels for label in row)


def test_a_list_column_reads_as_multi_label(tagged_jsonl, tagged_rows):
    settings = DataSettings(train=str(tagged_jsonl))
    task, note = detect_task("auto", settings)
    assert task.name == TASK
    assert note == ("task: multi-label (the label column 'label' holds lists of labels; set "
                    "--task to change)")
    rows = task.read(settings)
    assert sorted(task.label_names(rows, settings)) == ["food", "neg", "pos", "screen"]
    every = {text: sorted(tags) for text, tags in
             ((row["text"], row["tags"]) for row in tagged_rows(160))}
    for text, labels in zip(rows.train_inputs + rows.val_inputs,
                            rows.train_labels + rows.val_labels, strict=True):
        assert labels == every[text]


@pytest.mark.parametrize("separator", [";", "|", ","])
def test_a_separator_found_in_many_rows_splits_the_labels_and_is_said(
    separator, tmp_path, tagged_rows, write_csv
):
    rows = [{"text": row["text"], "label": separator.join(row["tags"])}
            for row in tagged_rows(120)]
    settings = DataSettings(train=str(write_csv(tmp_path / "tags.csv", rows)))
    task, note = detect_task("auto", settings)
    assert task.name == TASK and f"separated by '{separator}' in" in note
    read = task.read(settings)
    assert read.notes[0] == f"labels: split on '{separator}' in column 'label'"
    assert set(task.label_names(read, settings)) == {"food", "neg", "pos", "screen"}
    assert max(map(len, read.train_labels)) == 3


def test_one_column_of_0_and_1_per_label_reads_as_multi_label(tmp_path, tagged_rows,
                                                               write_csv):
    tags = ("food", "neg", "pos", "screen")
    rows = [{"text": row["text"], **{tag: str(int(tag in row["tags"])) for tag in tags}}
            for row in tagged_rows(80)]
    path = write_csv(tmp_path / "flags.csv", rows)
    settings = DataSettings(train=str(path), label_columns="pos, neg,food,screen")
    task, note = detect_task("auto", settings)
    assert task.name == TASK and "names 4 columns, one per label" in note
    read = task.read(settings)
    every = {row["text"]: sorted(row["tags"]) for row in tagged_rows(80)}
    assert all(labels == every[text] for text, labels in
               zip(read.train_inputs, read.train_labels, strict=True))
    rows[7]["food"] = "2"
    write_csv(path, rows)
    with pytest.raises(UsageError, match=r"line 9 of .* holds 2 in column 'food'.*0 or 1"):
        task.read(settings)


def test_label_columns_given_to_a_single_label_task_is_one_sentence(tiny_model_dir, tiny_csv):
    config = build_config({}, None, {"model": str(tiny_model_dir), "train": str(tiny_csv),
                                     "label_columns": "a,b"})
    with pytest.raises(UsageError, match=r"^--label-columns: text-classification reads one "):
        check_task_settings(get_task("text-classification"), config)


def test_single_labels_are_not_read_as_multi_label(tiny_csv):
    assert detect_task("auto", DataSettings(train=str(tiny_csv)))[0].name == "text-classification"


@pytest.mark.parametrize("single", ["text-classification", "text-regression"])
def test_a_label_list_given_to_a_single_label_task_is_one_sentence(single, tagged_jsonl):
    settings = DataSettings(train=str(tagged_jsonl))
    with pytest.raises(UsageError) as refused:
        get_task(single).read(settings)
    message = str(refused.value)
    assert str(tagged_jsonl) in message and "'label'" in message
    assert message.endswith("set --task multi-label.") and message.count(". ") == 0


@pytest.mark.parametrize("form", ["list", "separated"])
def test_search_with_text_classification_on_label_lists_is_one_sentence_naming_the_fix(
    form, tiny_model_dir, tmp_path, tagged_rows, write_csv, write_jsonl, capsys
):
    """`autoft search --task text-classification` on a label column of lists (["a", "b"]) or of
    names separated by ';' ("a;b"): exit 2 before any trial, one sentence naming the file, the
    column and --task multi-label."""
    rows = [{"text": row["text"], "label": row["tags"]} for row in tagged_rows(80)]
    if form == "list":
        train = write_jsonl(tmp_path / "tags.jsonl", rows)
    else:
        train = write_csv(tmp_path / "tags.csv",
                          [row | {"label": ";".join(row["label"])} for row in rows])
    studies = tmp_path / "studies"
    code = main(["search", "--model", str(tiny_model_dir), "--train", str(train),
                 "--task", "text-classification", "--studies-dir", str(studies),
                 "--study", "lists", "--n-trials", "1"])
    message = capsys.readouterr().err.strip()
    assert code == 2 and len(message.splitlines()) == 1, message
    assert str(train) in message and "column 'label'" in message
    assert message.endswith("takes one label per row; set --task multi-label.")
    assert (form == "separated") == ("separated by ';' in" in message)
    assert not (studies / "lists" / "study.db").exists()


def test_a_single_label_among_label_lists_is_one_sentence_naming_its_line(
        tiny_model_dir, tmp_path, tagged_rows, write_jsonl, capsys):
    """pyarrow said "cannot mix list and non-list, non-null values" and named no row."""
    rows = [{"text": row["text"], "label": row["tags"]} for row in tagged_rows(40)]
    rows[5]["label"] = "pos"
    train = write_jsonl(tmp_path / "mixed.jsonl", rows)
    code = main(["search", "--model", str(tiny_model_dir), "--train", str(train),
                 "--studies-dir", str(tmp_path / "studies")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "line 6 holds 'pos' in column 'label', where line 1 holds a list" in err, err
    assert '["pos"]' in err


def test_the_split_keeps_every_label_on_both_sides(tagged_rows):
    labels = [row["tags"] for row in tagged_rows(200)]
    labels[3] = labels[3] + ["rare"]
    labels[77] = labels[77] + ["rare"]  # two rows: one each side
    for seed in range(5):
        kept, held = iterative_split(labels, 0.2, seed)
        assert sorted(kept + held) == list(range(len(labels)))
        assert len(held) == pytest.approx(40, abs=4)
        on_each = [tag_counts([labels[i] for i in side]) for side in (kept, held)]
        assert set(on_each[0]) == set(on_each[1]) == set(tag_counts(labels)), seed
        for label, n in tag_counts(labels).items():  # and about their share
            assert on_each[1][label] == pytest.approx(0.2 * n, abs=max(2, 0.1 * n)), label


def test_a_label_left_on_one_side_gets_a_row_moved_across():
    labels = [["a", "b"], ["a", "b"], ["b"], ["b"], ["c"], ["c"]]
    side = [0, 0, 1, 1, 0, 1]  # 'a' only in training: both its rows also carry 'b'
    fill_empty_sides(labels, side, list(range(len(labels))))
    assert {side[0], side[1]} == {0, 1}
    for label in "abc":
        assert {side[i] for i, row in enumerate(labels) if label in row} == {0, 1}, label


def test_a_label_too_rare_to_split_is_one_sentence(tmp_path, tagged_rows, write_jsonl):
    rows = [{"text": row["text"], "label": row["tags"]} for row in tagged_rows(60)]
    rows[5]["label"] = rows[5]["label"] + ["lonely"]
    settings = DataSettings(train=str(write_jsonl(tmp_path / "train.jsonl", rows)))
    with pytest.raises(UsageError) as refused:
        get_task(TASK).read(settings)
    message = str(refused.value)
    assert "label 'lonely'" in message and str(tmp_path / "train.jsonl") in message
    assert "column 'label'" in message and message.endswith("or give --validation.")


def test_micro_and_macro_f1_against_a_hand_computed_case():
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0]])
    predicted = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0]])
    # per label: a TP 2 labelled 2 predicted 2 -> 1; b TP 1, 2 and 2 -> 0.5; c TP 0, 1, 0 -> 0;
    # pooled: TP 3, labelled 5, predicted 4 -> 6 / 9
    assert f1_at("micro_f1", labels, predicted) == pytest.approx(2 * 3 / (5 + 4))
    assert f1_at("macro_f1", labels, predicted) == pytest.approx((1 + 0.5 + 0) / 3)
    for metric, average in (("micro_f1", "micro"), ("macro_f1", "macro")):
        assert f1_at(metric, labels, predicted) == pytest.approx(
            f1_score(labels, predicted, average=average, zero_division=0))
    # the task scores probabilities at its tuned threshold: 0/1 predictions score as above
    task = get_task(TASK)
    assert task.score("micro_f1", labels.tolist(), predicted.tolist()) == pytest.approx(2 / 3)


def test_a_tuned_threshold_scores_at_least_what_one_half_does():
    rng = np.random.default_rng(0)
    labels = (rng.random((300, 5)) < 0.3).astype(float)
    # an under-confident model: true labels about 0.35, others about 0.15
    probabilities = np.clip(0.15 + 0.2 * labels + rng.normal(0, 0.08, labels.shape), 0, 1)
    for metric in ("micro_f1", "macro_f1"):
        threshold, _, tuned = tuned_at(metric, labels, probabilities)
        at_half = f1_at(metric, labels, probabilities >= 0.5)
        assert tuned > at_half + 0.3 and threshold < 0.5, metric
        assert get_task(TASK).score(metric, labels.tolist(), probabilities.tolist()) == tuned
    confident = np.where(labels == 1, 0.9, 0.1)  # any middle threshold is perfect: 0.5 is kept
    threshold, each, tuned = tuned_at("micro_f1", labels, confident)
    assert (threshold, tuned) == (0.5, 1.0) and list(each) == [0.5] * 5


def test_a_label_with_enough_rows_gets_its_own_threshold_and_a_rare_one_the_global():
    """'a' sits high (0.8 against 0.6) and 'b' low (0.3 against 0.1): no one threshold serves
    both, their own do. 'c' has fewer than MIN_POSITIVES rows: it keeps the global threshold
    though its own (0.4) would score higher on these rows."""
    labels = np.zeros((100, 3))
    labels[:30, 0] = labels[30:60, 1] = 1
    labels[60:60 + MIN_POSITIVES // 2, 2] = 1
    probabilities = np.stack([np.where(labels[:, 0] == 1, 0.8, 0.6),
                              np.where(labels[:, 1] == 1, 0.3, 0.1),
                              np.where(labels[:, 2] == 1, 0.45, 0.35)], axis=1)
    task = get_task(TASK)
    for metric in ("micro_f1", "macro_f1"):
        overall, each, score = tuned_at(metric, labels, probabilities)
        assert 0.6 < each[0] <= 0.8 and 0.1 < each[1] <= 0.3, metric
        assert each[2] == overall, metric
        assert score == pytest.approx(f1_at(metric, labels, probabilities >= each))
        assert score > f1_at(metric, labels, probabilities >= overall) + 0.15, metric
        own_c = np.array([each[0], each[1], 0.4])
        assert f1_at(metric, labels, probabilities >= own_c) > score, metric
        assert task.score(metric, labels.tolist(), probabilities.tolist()) == score
        decided = np.array(task.decisions(metric, labels.tolist(), probabilities.tolist()))
        np.testing.assert_array_equal(decided, probabilities >= each)
    # what export saves and the card says: the global threshold, and each label's
    tuned = task.tuned_on_validation("micro_f1", labels.tolist(), probabilities.tolist(),
                                     ["a", "b", "c"])
    overall, each, score = tuned_at("micro_f1", labels, probabilities)
    assert tuned["decision_threshold"] == overall
    assert tuned["decision_thresholds"] == each.tolist()
    assert tuned["validation_scores"]["micro_f1"] == round(score, 4)
    lines = task.tuned_lines(tuned, ["a", "b", "c"])
    assert f"Decision threshold: {overall:.2f}" in lines[0]
    assert f"scored higher: b {each[1]:.2f} (" in lines[0]  # a: the global one; c: too rare
    # with the rare label given enough rows, it gets its own too
    labels[60:60 + MIN_POSITIVES, 2] = 1
    probabilities[:, 2] = np.where(labels[:, 2] == 1, 0.45, 0.35)
    overall, each, score = tuned_at("micro_f1", labels, probabilities)
    assert 0.35 < each[2] <= 0.45 and score == 1.0


def test_each_output_starts_at_its_labels_share(tiny_model_dir, tagged_jsonl):
    task, settings = get_task(TASK), DataSettings(train=str(tagged_jsonl))
    rows = task.read(settings)
    model, tokenizer = task.load_model(str(tiny_model_dir), task.label_names(rows, settings),
                                       False)
    data = task.encode(rows, tokenizer, model.config, settings)
    task.start_head(model, data)
    shares = np.mean(data.train.labels, axis=0)
    started = torch.sigmoid(model.classifier.bias.detach()).numpy()
    np.testing.assert_allclose(started, shares, rtol=1e-5)


@pytest.mark.parametrize("metric", ["micro_f1", "macro_f1"])
def test_scores_over_draws_are_the_scores_of_each_draw(metric):
    rng = np.random.default_rng(1)
    labels = (rng.random((60, 6)) < 0.2).astype(float)
    labels[:, 5] = 0  # a label absent from validation
    probabilities = np.clip(0.2 + 0.4 * labels + rng.normal(0, 0.2, labels.shape), 0, 1)
    draws = rng.integers(0, 60, (30, 60))
    task = get_task(TASK)
    at_once = task.scores_over(metric, labels.tolist(), probabilities.tolist(), draws)
    each = [task.score(metric, labels[draw].tolist(), probabilities[draw].tolist())
            for draw in draws]
    np.testing.assert_allclose(at_once, each, rtol=1e-12)


def prepared_validation(study_dir: Path) -> tuple[list[list[int]], list[list[float]]]:
    content = json.loads((study_dir / "prepared" / "target.json").read_text())
    return content["validation"]["input_ids"], content["validation"]["labels"]


@torch.no_grad()
def probabilities(model, input_ids: list[list[int]], pad_id: int) -> np.ndarray:
    model.eval()
    rows = []
    for ids in input_ids:  # one at a time: no padding
        logits = model(input_ids=torch.tensor([ids]),
                       attention_mask=torch.ones(1, len(ids), dtype=torch.long)).logits
        rows.append(torch.sigmoid(logits.float())[0].numpy())
    return np.array(rows)


@pytest.mark.slow
def test_a_search_completes_a_trial_and_its_export_scores_its_value_at_its_thresholds(
    tiny_model_dir, tagged_jsonl, tmp_path, write_space, search_args, cli_env
):
    """A real `autoft search --task multi-label` on the tiny BERT; the exported trial reloads with
    from_pretrained, holds its thresholds in config.json (the global one, and one per label) and
    scores the trial's value, precision and recall again with them; summary, report and card
    show precision, recall and subset accuracy beside micro-F1."""
    space = write_space(tmp_path / "space.yaml", epochs=3)
    studies = tmp_path / "studies"
    command = search_args(tiny_model_dir, tagged_jsonl, space, studies, "tags", 1, "cpu")
    done = subprocess.run(command + ["--task", TASK, "--precision", "fp32"],
                          capture_output=True, text=True, env=cli_env(), timeout=600)
    assert done.returncode == 0, done.stderr
    study = load_study("tags", str(studies), None)
    trial = study.trials[0]
    assert trial.state.name == "COMPLETE" and study.user_attrs["metric"] == "micro_f1"
    assert 0 < trial.value <= 1

    out = export_trial(study, trial.number, tmp_path / "export", studies / "tags")
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.problem_type == "multi_label_classification"
    threshold = model.config.decision_threshold
    thresholds = np.array(model.config.decision_thresholds)
    assert 0 < threshold < 1 and len(thresholds) == model.config.num_labels == 4
    card = (out / "README.md").read_text()
    assert f"Decision threshold: {threshold:.2f}" in card and "subset accuracy" in card
    input_ids, labels = prepared_validation(studies / "tags")
    labels = np.array(labels)
    assert labels.sum(0).max() >= MIN_POSITIVES  # some label may tune its own threshold
    scores = probabilities(model, input_ids, model.config.pad_token_id)
    decided = scores >= thresholds
    assert f1_at("micro_f1", labels, decided) == pytest.approx(trial.value, abs=1e-6)
    details = TrialRecord.of(trial).score_details
    assert details["average"] == "micro"
    assert details["precision"] == pytest.approx(
        (labels * decided).sum() / decided.sum(), abs=1e-4)
    assert details["recall"] == pytest.approx((labels * decided).sum() / labels.sum(), abs=1e-4)
    saved = json.loads((studies / "tags" / "best_model" / "config.json").read_text())
    assert (saved["decision_threshold"], saved["decision_thresholds"]) == (
        threshold, thresholds.tolist())

    words = (f"precision {details['precision']:.4f}, recall {details['recall']:.4f} (micro "
             f"average), subset accuracy {details['subset_accuracy']:.4f}")
    assert f"- Validation {words}" in card and "| screen |" in card  # per label: 4 of them
    summary = json.loads((studies / "tags" / "summary.json").read_text())
    assert summary["best"]["score_details"] == details
    report = (studies / "tags" / "report.md").read_text()
    assert f"At it, its validation {words}." in report and "## Per class" in report
    assert words in done.stdout
