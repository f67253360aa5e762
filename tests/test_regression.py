"""text-regression end to end on real data: the human similarity ratings of gensim's WordSim-353
word pairs, as a text-pair regression on a tiny BERT whose vocabulary holds their words. Also
the detection of a numeric label column, and a label that is not a number.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import optuna
import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
)

from autoft.cli import main
from autoft.data import TargetData
from autoft.prepared import load_prepared_data
from autoft.summary import build_summary
from autoft.tasks import DataSettings, detect_task, get_task
from autoft.tasks.text import Split
from autoft.train import evaluate

GENSIM = Path(importlib.util.find_spec("gensim").submodule_search_locations[0])
GENSIM_DATA = GENSIM / "test" / "test_data"
SPACE = """\
learning_rate: {low: 3.0e-3, high: 1.0e-2, log: true, default: 5.0e-3}
head_lr_multiplier: {value: 5}
batch_size: {value: 16}
trainable_layers: {low: 0, high: max, default: max}
epochs: {value: 8}
weight_decay: {value: 0.0}
warmup_ratio: {value: 0.0}
"""


def read_pairs(name: str) -> list[dict]:
    """A gensim word-pair file (tab-separated, '#' comments) as rows word1, word2, score."""
    lines = (GENSIM_DATA / name).read_text().splitlines()
    fields = [line.split("\t") for line in lines if line and not line.startswith("#")]
    return [{"word1": a, "word2": b, "score": s} for a, b, s in fields]


@pytest.fixture(scope="module")
def wordsim_csv(tmp_path_factory, write_csv) -> Path:
    folder = tmp_path_factory.mktemp("wordsim")
    return write_csv(folder / "wordsim.csv", read_pairs("wordsim353.tsv"))


@pytest.fixture(scope="module")
def word_model(tmp_path_factory, save_tiny_bert) -> Path:
    """A random 2-layer BERT whose word-level vocabulary holds every WordSim-353 word."""
    words = sorted({row[key].lower() for row in read_pairs("wordsim353.tsv")
                    for key in ("word1", "word2")})
    return save_tiny_bert(tmp_path_factory.mktemp("word-bert"), head=None, words=words)


def search(model: Path, train: Path, tmp_path: Path, *extra: str) -> int:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    return main(["search", "--model", str(model), "--train", str(train), "--space", str(space),
                 "--text-column", "word1", "--text-pair-column", "word2", "--label-column",
                 "score", "--study", "ws", "--studies-dir", str(tmp_path / "studies"),
                 "--devices", "cpu", "--base-kind", "none", *extra])  # a word vocabulary reads
    # no general English: the default check would only add its cost (test_default_check)


@pytest.mark.slow
def test_wordsim_pairs_are_detected_as_regression_and_the_export_scores_the_answer(
    word_model, wordsim_csv, tmp_path, capsys
) -> None:
    assert search(word_model, wordsim_csv, tmp_path, "--n-trials", "3") == 0
    out = capsys.readouterr().out
    assert ("task: text-regression (the label column 'score' holds 232 distinct numbers with "
            "fractions; set --task to change)") in out
    assert "held out of wordsim.csv, at random" in out
    folder = tmp_path / "studies" / "ws"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["metric"] == "spearman" and summary["direction"] == "maximize"
    best = summary["best"]
    assert -1.0 <= best["value"] <= 1.0
    # The exported model has one regression output and scores the answer's value again (the
    # soup of the best trials: here averaging the regression heads, which all start at the
    # labels' mean, beats the best trial).
    answer = summary["soup"] if (summary["soup"] or {}).get("answer") else best
    exported = AutoModelForSequenceClassification.from_pretrained(folder / "best_model")
    assert exported.config.num_labels == 1 and exported.config.problem_type == "regression"
    data, _, pad_id, _ = load_prepared_data(folder / "prepared")
    assert data.task == "text-regression" and isinstance(data.validation.labels[0], float)
    # Up to float noise (threads sum in another order), which can swap two near ranks: one swap
    # moves Spearman on 71 pairs by about 3e-5; other weights would move it by far more.
    again = evaluate(exported, data, pad_id, torch.device("cpu"))
    assert again == pytest.approx(answer["value"], abs=1e-3)
    # Trained at all: the best config's predictions follow the human ratings more than chance.
    assert best["value"] > 0.1


@pytest.mark.slow
def test_rmse_is_minimized_and_said_to_be(word_model, wordsim_csv, tmp_path, capsys) -> None:
    assert search(word_model, wordsim_csv, tmp_path, "--n-trials", "3", "--metric", "rmse") == 0
    out = capsys.readouterr().out
    study = optuna.load_study(study_name="ws",
                              storage=f"sqlite:///{tmp_path / 'studies' / 'ws' / 'study.db'}")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    summary = build_summary(study)
    values = [t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(set(values)) > 1 and summary["best"]["value"] == min(values)
    assert f"rmse (lower is better) {min(values):.4f}" in out
    soup = summary["soup"] or {}
    if soup.get("answer"):  # a soup is the answer only where it scored lower than every trial
        assert soup["value"] < min(values) and soup["best_value"] == min(values)
    answer = soup["value"] if soup.get("answer") else min(values)
    card = (tmp_path / "studies" / "ws" / "best_model" / "README.md").read_text()
    assert f"Validation rmse (lower is better): {answer:.4f}" in card


@pytest.mark.slow
def test_a_label_that_is_not_a_number_is_refused_naming_its_row(
    word_model, tmp_path, capsys, write_csv
) -> None:
    rows = read_pairs("wordsim353.tsv")[:40]
    rows[6]["score"] = "n/a"
    train = write_csv(tmp_path / "ratings.csv", rows)
    assert search(word_model, train, tmp_path, "--task", "text-regression") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "line 8 of" in err and "'n/a'" in err and "not a number" in err
    assert "--task text-classification" in err
    assert not (tmp_path / "studies" / "ws" / "study.db").exists()


@pytest.mark.parametrize(("label", "said"), [
    ("nan", "'nan' in column 'score', which is not a finite number"),
    ("-inf", "'-inf' in column 'score', which is not a finite number"),
    ("1e308", "'1e+308' in column 'score', which is beyond the 9e+18"),
])
def test_a_label_that_is_not_finite_or_too_large_is_refused_naming_its_line(
    tiny_model_dir, tmp_path, capsys, write_csv, label, said
) -> None:
    """One 'nan' once made the column 40 classes ("class '5.034' has a single example"), and
    1e308 a "training loss became inf" after a night's trials, with no word of the labels."""
    rows = [{"text": "a good film", "score": f"{i / 7:.3f}"} for i in range(40)]
    rows[7]["score"] = label
    train = write_csv(tmp_path / "ratings.csv", rows)
    code = main(["search", "--model", str(tiny_model_dir), "--train", str(train),
                 "--label-column", "score", "--study", "ws", "--studies-dir",
                 str(tmp_path / "studies")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"line 9 of {train} has the label {said}" in err, err
    assert not (tmp_path / "studies" / "ws" / "study.db").exists()


@pytest.mark.parametrize(("labels", "detected"), [
    (["1", "2", "3", "4", "5"] * 8, None),  # star ratings: classes
    ([str(i) for i in range(40)], "text-regression"),  # many whole numbers
    (["0.5", "1.5"] * 20, "text-regression"),  # fractions
    (["pos", "neg"] * 20, None),
])
def test_detection_reads_the_label_column(tmp_path, labels, detected, write_csv) -> None:
    train = write_csv(tmp_path / "t.csv", [{"text": "a b", "label": x} for x in labels])
    task, note = detect_task("auto", DataSettings(train=str(train)))
    assert (note is not None) == (detected is not None)
    assert task.name == (detected or "text-classification")



def test_the_study_file_names_the_task_and_an_unknown_one_is_refused(
    word_model, tmp_path, capsys, write_csv
) -> None:
    rows = [{"text": f"{a} {b}", "label": str(i % 3)}
            for i, (a, b) in enumerate(zip("abcdefghij" * 3, "klmnopqrst" * 3, strict=True))]
    train = write_csv(tmp_path / "small.csv", rows)
    study = tmp_path / "study.yaml"
    study.write_text(f"model: {word_model}\ntrain: {train}\ntask: text-regresion\n")
    code = main(["search", str(study), "--studies-dir", str(tmp_path / "studies")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "field task: unknown task 'text-regresion'" in err and "text-regression" in err
    # Three integer classes would stay a classification; named, they are a regression.
    task, note = detect_task("text-regression", DataSettings(train=str(train)))
    assert task.name == "text-regression" and note is None


@pytest.mark.slow
def test_a_regression_head_starts_at_the_mean_label(word_model) -> None:
    task = get_task("text-regression")
    torch.manual_seed(0)
    model, _ = task.load_model(str(word_model), ["score"], False)
    split = Split([[2, 5 + i, 3] for i in range(4)], [1.0, 3.0, 5.0, 7.0])
    task.start_head(model, TargetData(split, split, ["score"], "spearman", 16, [],
                                      "text-regression"))
    model.eval()
    with torch.no_grad():
        outputs = model(input_ids=torch.tensor(split.input_ids)).logits.squeeze(-1)
    assert outputs.sub(4.0).abs().max() < 0.3  # the mean, give or take the small random weights
