"""The cheap parts of benchmarks/forgetting.py: word-level retention on the tiny BERT, the
freeze-only space and the table. The benchmark itself runs real studies and is not a test."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer, BertForSequenceClassification

BENCH_FILE = Path(__file__).resolve().parents[1] / "benchmarks" / "forgetting.py"
# Pairs of the tiny tokenizer's words with made-up human scores (conftest.WORDS).
PAIRS = [("good", "great", 9.0), ("bad", "awful", 8.5), ("good", "bad", 1.0),
         ("film", "show", 6.0), ("day", "food", 2.0), ("lovely", "fine", 7.5),
         ("nasty", "poor", 7.0), ("great", "awful", 0.5), ("very", "quite", 8.0),
         ("the", "a", 5.0), ("food", "film", 3.0), ("poor", "lovely", 1.5)]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_forgetting", BENCH_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being built
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("words") / "pairs.tsv"
    lines = ["# Word 1\tWord 2\tHuman (mean)"] + [f"{a}\t{b}\t{s}" for a, b, s in PAIRS]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_an_untouched_model_keeps_all_of_its_word_similarity(bench, tiny_model_dir, pairs_file):
    pairs = bench.read_word_pairs(pairs_file)
    assert len(pairs[0]) == len(PAIRS)
    # retention() calls a base without skill (≤ 0) fully kept, which would prove nothing here
    encoder, tokenizer = AutoModel.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(
        tiny_model_dir)
    assert bench.word_similarity(encoder, tokenizer, pairs) > 0.1
    assert bench.word_retention(tiny_model_dir, tiny_model_dir, pairs_file) == 1.0


def test_a_changed_encoder_changes_word_retention(bench, tiny_model_dir, pairs_file, tmp_path):
    model = BertForSequenceClassification.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        embeddings = model.bert.embeddings.word_embeddings.weight
        embeddings.add_(torch.randn_like(embeddings) * embeddings.std())
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path)
    kept = bench.word_retention(tmp_path, tiny_model_dir, pairs_file)
    assert abs(kept - 1.0) > 0.05


def test_freeze_only_holds_every_method_off_and_drops_the_starts_that_use_one(bench):
    space = {
        "learning_rate": {"low": 1e-5, "high": 3e-4, "log": True},
        "adapter": {"choices": ["freeze", "lora"], "default": "freeze"},
        "lora_rank": {"choices": [4, 8], "when": {"adapter": "lora"}},
        "preserve_weight": {"choices": [0, 0.3, 1, 3], "default": 0},
        "starts": [{"trainable_layers": 2}, {"trainable_layers": 2, "preserve_weight": 1},
                   {"adapter": "lora", "lora_rank": 8},
                   {"adapter": "freeze", "learning_rate": 1e-4}],
    }
    frozen = bench.freeze_only(space)
    assert frozen["adapter"] == {"value": "freeze"}
    assert frozen["preserve_weight"] == {"value": 0}
    assert "lora_rank" not in frozen  # applies only under adapter lora
    assert frozen["learning_rate"] == space["learning_rate"]
    assert frozen["interpolation_mixes"] == []
    assert frozen["starts"] == [
        {"trainable_layers": 2}, {"adapter": "freeze", "learning_rate": 1e-4}]
    assert space["adapter"] == {"choices": ["freeze", "lora"], "default": "freeze"}  # untouched


def test_the_table_shows_each_number_or_a_dash_and_the_targets(bench):
    plain = bench.Row("tweets", "plain", 200.0, "macro_f1", "1/0/0", 0.723, 0.723,
                      test=0.736, plain_test=0.736)
    audited = bench.Row("tweets", "default", 312.4, "macro_f1", "9/3/0", 0.712, 0.701,
                        [0.85, 1.12], {"retention": 0.951, "low": 0.912, "high": 0.990},
                        {"WS353": 0.981, "SimLex": 0.874}, 0.727, plain_test=0.736)
    missed = bench.Row("newsgroups", "own-texts", 800.0, "accuracy", "4/8/0", 0.60, 0.45,
                       audit={"retention": 0.81, "low": 0.5, "high": 1.1}, test=0.40,
                       plain_test=0.45)
    failed = bench.Row("newsgroups", "default", None, trials="failed")
    lines = bench.format_table([plain, audited, missed, failed]).splitlines()
    assert lines[0].split()[:3] == ["task", "variant", "wall"]
    assert lines[1].split()[-3:] == ["0.736", "—", "—"]  # plain is what the others are held to
    assert lines[2].split() == [
        "tweets", "default", "312", "macro_f1", "9/3/0", "0.712", "0.701", "1.1", "[0.85,",
        "1.12]", "0.951", "[0.91,", "0.99]", "0.981", "0.874", "0.727", "-0.9", "test", "ok,",
        "audit", "ok"]
    assert "15.0" in lines[3] and "-5.0" in lines[3] and "test missed, audit missed" in lines[3]
    assert lines[4].split()[:4] == ["newsgroups", "default", "—", "—"] and "failed" in lines[4]
    assert lines[-1].startswith("answer: the study's answer on validation")


def test_plain_fine_tuning_is_one_fixed_config_of_every_layer_without_a_curve(bench):
    space = {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True},
             "epochs": {"low": 2, "high": 4, "default": 3},
             "interpolation_mixes": [0.5], "starts": [{"trainable_layers": 2}]}
    plain = bench.plain(space)
    assert all(set(spec) == {"value"} for name, spec in plain.items()
               if name not in ("interpolation_mixes", "starts"))
    assert plain["trainable_layers"] == {"value": "max"} and plain["epochs"] == {"value": 3}
    assert plain["learning_rate"] == {"value": 5.0e-5} and plain["preserve_weight"] == {"value": 0}
    assert plain["interpolation_mixes"] == [] and plain["starts"] == []
    assert bench.base_check(bench.VARIANTS["plain"].base)["min_retention"] == 0.0
    assert "preserve_data" not in bench.base_check(bench.VARIANTS["own-texts"].base)
    assert "preserve_data" in bench.base_check(bench.VARIANTS["default"].base)


def test_the_best_with_no_bar_counts_every_evaluation_of_complete_trials_and_the_last_of_pruned(
    bench,
):
    import optuna
    from optuna.trial import TrialState, create_trial

    study = optuna.create_study(direction="maximize")
    # kept 0.60, the evaluation that passed the bar; 0.70 came earlier and forgot too much
    study.add_trial(create_trial(value=0.60, intermediate_values={1: 0.70, 2: 0.60}))
    # stopped at its third evaluation; its 0.90 is not a score it ended with
    study.add_trial(create_trial(state=TrialState.PRUNED,
                                 intermediate_values={1: 0.90, 2: 0.50, 3: 0.65}))
    assert bench.best_without_bar(study) == 0.70
    study.add_trial(create_trial(value=0.55, intermediate_values={1: 0.55},
                                 user_attrs={"interpolation": [{"mix": 0.5, "value": 0.74}]}))
    assert bench.best_without_bar(study) == 0.74
