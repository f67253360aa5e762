"""The token-classification task kind: words and BIO tags read from list columns or CoNLL text,
each word's tag on its first sub-token, seqeval's entity F1 (and score_details) against
hand-computed cases, one-sentence errors for bad tags and empty sentences, and a real search
whose exported model reloads and scores its trial again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
from seqeval.metrics import f1_score
from tokenizers import Tokenizer, models, pre_tokenizers
from tokenizers.processors import TemplateProcessing
from transformers import AutoModelForTokenClassification, AutoTokenizer, PreTrainedTokenizerFast

from autoft.adapters import get_adapter
from autoft.errors import UsageError
from autoft.model import find_blocks
from autoft.params import TrialParams
from autoft.replay import check_replay
from autoft.storage import load_study
from autoft.tasks import DataSettings, detect_task, get_task
from autoft.tasks.token_classification import IGNORED, align, tag_names

TASK = "token-classification"
# Hand-computed: types LOC, ORG, PER (outputs O 0, B-LOC 1, I-LOC 2, B-ORG 3, I-ORG 4, B-PER 5,
# I-PER 6). Sentence 1: gold PER (words 0-1) and LOC (word 3), predicted PER only; sentence 2:
# gold ORG (word 0), predicted ORG and a PER (word 2) that is not there. Found 2 of 3 gold
# entities with 3 predicted: precision = recall = F1 = 2/3. Per type: PER precision 1/2, recall 1,
# F1 2/3; LOC 0, 0, 0; ORG 1, 1, 1: macro-F1 (2/3 + 0 + 1) / 3 = 5/9.
NAMES = tag_names(["LOC", "ORG", "PER"])
GOLD = [[IGNORED, 5, 6, 0, 1, IGNORED], [IGNORED, 3, 0, 0, IGNORED]]
GUESSED = [[0, 5, 6, 0, 0, 0, 0], [0, 3, 0, 5, 0, 0, 0]]  # padded wider, as a batch's logits


def conll(tmp_path, text: str, name: str = "train.conll"):
    path = tmp_path / name
    path.write_text(text)
    return path


def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer that splits 'playing' into 'play' '##ing' and knows 'new', 'york'."""
    vocab = {token: i for i, token in enumerate(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "play", "##ing", "new", "york", "in", "we"])}
    core = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = TemplateProcessing(single="[CLS] $A [SEP]",
                                             special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]")


def test_each_words_tag_goes_on_its_first_sub_token_only():
    """'we playing in new york': 'playing' is two pieces, its tag on 'play' and '##ing' ignored;
    'new' and 'york' are two words, each with its own tag; [CLS] and [SEP] are ignored."""
    tokenizer = wordpiece_tokenizer()
    names = tag_names(["ACT", "LOC"])
    index = {name: i for i, name in enumerate(names)}
    split = align(tokenizer, [["we", "playing", "in", "new", "york"]],
                  get_task(TASK).encode_labels([["O", "B-ACT", "O", "B-LOC", "I-LOC"]], names), 32)
    pieces = tokenizer.convert_ids_to_tokens(split.input_ids[0])
    assert pieces == ["[CLS]", "we", "play", "##ing", "in", "new", "york", "[SEP]"]
    assert split.labels[0] == [IGNORED, index["O"], index["B-ACT"], IGNORED, index["O"],
                               index["B-LOC"], index["I-LOC"], IGNORED]


def test_words_cut_off_by_max_length_are_counted(caplog):
    tokenizer = wordpiece_tokenizer()
    tags = get_task(TASK).encode_labels([["O", "O", "B-LOC", "I-LOC"]], tag_names(["LOC"]))
    with caplog.at_level(logging.WARNING, logger="autoft"):
        split = align(tokenizer, [["we", "in", "new", "york"]], tags, 4)
    assert len(split.input_ids[0]) == 4 and split.labels[0][-1] == IGNORED
    assert "2 of 4 words have no token within max_length 4" in caplog.text


def test_entity_f1_against_a_hand_computed_case():
    task = get_task(TASK)
    assert task.score("entity_f1", GOLD, GUESSED) == pytest.approx(2 / 3)
    assert task.score("entity_macro_f1", GOLD, GUESSED) == pytest.approx(5 / 9)
    assert task.score("entity_f1", GOLD, GOLD) == 1.0


def test_score_details_give_precision_recall_and_each_entity_type():
    details = get_task(TASK).score_details(GOLD, GUESSED, NAMES)
    assert details["average"] == "micro"
    assert details["precision"] == pytest.approx(2 / 3, abs=1e-4)  # stored to 4 digits
    assert details["recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert details["per_label"] == {
        "LOC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
        "ORG": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
        "PER": {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3, abs=1e-4),
                "support": 1},
    }


@pytest.mark.parametrize("metric", ["entity_f1", "entity_macro_f1"])
def test_scores_over_draws_are_the_scores_of_each_draw(metric):
    """The bootstrap's vectorized counts give what seqeval gives on each drawn set of sentences,
    repeats, missing types and I- tags after O included."""
    rng = np.random.default_rng(0)
    labels, predictions = [], []
    for _ in range(40):
        length = int(rng.integers(2, 9))
        gold = rng.choice(7, length, p=[0.55, 0.1, 0.1, 0.05, 0.05, 0.1, 0.05]).tolist()
        guess = [t if rng.random() < 0.7 else int(rng.integers(0, 7)) for t in gold]
        labels.append([IGNORED] + gold + [IGNORED])
        predictions.append([0] + guess + [0, 0])
    draws = rng.integers(0, 40, (25, 40))
    task = get_task(TASK)
    at_once = task.scores_over(metric, labels, predictions, draws)
    each = [task.score(metric, [labels[i] for i in draw], [predictions[i] for i in draw])
            for draw in draws]
    np.testing.assert_allclose(at_once, each, rtol=1e-12)


def test_conll_text_reads_and_is_detected(tmp_path):
    """A word and its tag a line (CoNLL-2003's middle columns skipped, -DOCSTART- ignored),
    sentences between blank lines (a line of spaces is blank too)."""
    path = conll(tmp_path, "-DOCSTART- O\n\nJohn NNP B-PER\nlives VBZ O\nin IN O\n"
                 "Paris NNP B-LOC\n \t\nBob B-PER\nDylan I-PER\nsang O\n\n")
    settings = DataSettings(train=str(path), validation=str(path))
    task, note = detect_task("auto", settings)
    assert task.name == TASK and "CoNLL" in note
    rows = task.read(settings)
    assert rows.train_inputs == [["John", "lives", "in", "Paris"], ["Bob", "Dylan", "sang"]]
    assert rows.train_labels == [["B-PER", "O", "O", "B-LOC"], ["B-PER", "I-PER", "O"]]
    assert task.label_names(rows, settings) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def test_list_columns_read_as_token_classification_and_others_do_not(ner_jsonl, tiny_csv,
                                                                     tagged_jsonl):
    task, note = detect_task("auto", DataSettings(train=str(ner_jsonl)))
    assert task.name == TASK and "'tokens' and 'tags'" in note
    for other in (tiny_csv, tagged_jsonl):
        assert detect_task("auto", DataSettings(train=str(other)))[0].name != TASK


@pytest.mark.parametrize(("text", "said"), [
    ("John B_PER\nran O\n", "has the tag 'B_PER'; tags must be O, B-TYPE or I-TYPE"),
    ("John\nran O\n", "line 1 of"),
])
def test_a_malformed_tag_is_one_sentence(tmp_path, text, said):
    path = conll(tmp_path, text)
    with pytest.raises(UsageError, match=said) as refused:
        get_task(TASK).read(DataSettings(train=str(path), validation=str(path)))
    assert str(path) in str(refused.value) and str(refused.value).count(". ") == 0


def test_an_empty_sentence_is_one_sentence(tmp_path, write_jsonl):
    rows = [{"tokens": ["Bob", "sang"], "tags": ["B-PER", "O"]}, {"tokens": [], "tags": []}]
    path = write_jsonl(tmp_path / "train.jsonl", rows * 3)
    with pytest.raises(UsageError, match=r"line 2 of .*train.jsonl is an empty sentence"):
        get_task(TASK).read(DataSettings(train=str(path)))


def test_words_and_tags_of_other_lengths_are_one_sentence(tmp_path, write_jsonl):
    rows = [{"tokens": ["Bob", "sang"], "tags": ["B-PER"]}] * 3
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(UsageError, match="line 1 of .* has 2 words but 1 tags"):
        get_task(TASK).read(DataSettings(train=str(path)))


def test_an_i_tag_after_o_is_a_warning_with_its_count(tmp_path, caplog):
    path = conll(tmp_path, "the O\nBeatles I-ORG\nplayed O\n\nBob B-PER\nDylan I-PER\n\n"
                 "in O\nLondon I-LOC\n\n")
    with caplog.at_level(logging.WARNING, logger="autoft"):
        rows = get_task(TASK).read(DataSettings(train=str(path), validation=str(path)))
    assert len(rows.train_labels) == 3
    assert "2 I- tags follow O or another type" in caplog.text


def test_a_type_only_in_validation_is_one_sentence(tmp_path):
    train = conll(tmp_path, "Bob B-PER\nsang O\n\n")
    validation = conll(tmp_path, "in O\nParis B-LOC\n\n", "validation.conll")
    with pytest.raises(UsageError, match="entity type 'LOC' never occurs in the training"):
        get_task(TASK).read(DataSettings(train=str(train), validation=str(validation)))


@torch.no_grad()
def word_predictions(model, tokenizer, sentences: list[list[str]]) -> list[list[str]]:
    """Each word's predicted tag, read off its first sub-token, as a user of the export would."""
    tags = []
    for words in sentences:
        encoded = tokenizer(words, is_split_into_words=True, return_tensors="pt")
        best = model(**encoded).logits[0].argmax(-1).tolist()
        firsts, previous = [], None
        for position, word in enumerate(encoded.word_ids(0)):
            if word is not None and word != previous:
                firsts.append(model.config.id2label[best[position]])
            previous = word
        tags.append(firsts)
    return tags


@pytest.mark.slow
def test_a_search_exports_a_model_that_reloads_and_scores_its_trial_again(
    tiny_model_dir, ner_rows, write_jsonl, tmp_path, write_space, search_args, cli_env
):
    """A real `autoft search` on the tiny BERT (detected as token classification); `autoft
    export` writes a folder AutoModelForTokenClassification loads, with the tag names, whose
    predictions on the validation sentences score the trial's value with seqeval; `autoft
    report` reads the study."""
    rows = ner_rows(160)
    train = write_jsonl(tmp_path / "train.jsonl", rows[:120])
    validation = write_jsonl(tmp_path / "validation.jsonl", rows[120:])
    space = write_space(tmp_path / "space.yaml", learning_rate="{value: 2.0e-3}", epochs=10)
    studies = tmp_path / "studies"
    command = search_args(tiny_model_dir, train, space, studies, "ner", 1, "cpu")
    done = subprocess.run(command + ["--validation", str(validation), "--precision", "fp32"],
                          capture_output=True, text=True, env=cli_env(), timeout=600)
    assert done.returncode == 0, done.stderr
    assert "task: token-classification" in done.stdout
    study = load_study("ner", str(studies), None)
    trial = study.trials[0]
    assert trial.state.name == "COMPLETE" and study.user_attrs["metric"] == "entity_f1"
    assert 0.5 < trial.value <= 1, "the tiny BERT learns which words are entities"

    out = tmp_path / "export"
    exported = subprocess.run(
        [sys.executable, "-m", "autoft", "export", str(out), "--study", "ner", "--studies-dir",
         str(studies), "--trial", "0"], capture_output=True, text=True, env=cli_env(),
        timeout=300)
    assert exported.returncode == 0, exported.stderr
    model = AutoModelForTokenClassification.from_pretrained(out).eval()
    assert list(model.config.id2label.values()) == [
        "O", "B-NEG", "I-NEG", "B-POS", "I-POS", "B-WORK", "I-WORK"]
    card = (out / "README.md").read_text()
    assert "AutoModelForTokenClassification" in card
    assert "(micro average)" in card and "## Per class (validation)" in card
    assert {"| NEG |", "| POS |", "| WORK |"} <= {line[:line.index(" |", 2) + 2]
                                                 for line in card.splitlines() if line[:2] == "| "}
    tokenizer = AutoTokenizer.from_pretrained(out)
    predicted = word_predictions(model, tokenizer, [row["tokens"] for row in rows[120:]])
    assert f1_score([row["tags"] for row in rows[120:]], predicted) == pytest.approx(
        trial.value, abs=1e-6)
    assert json.loads((out / "config.json").read_text())["architectures"] == [
        "BertForTokenClassification"]

    report = subprocess.run([sys.executable, "-m", "autoft", "report", "--study", "ner",
                             "--studies-dir", str(studies)], capture_output=True, text=True,
                            env=cli_env(), timeout=300)
    assert report.returncode == 0, report.stderr
    assert "entity_f1" in report.stdout
    written = (studies / "ner" / "report.md").read_text()
    assert "(micro average)" in written and "| WORK |" in written, "entity types' scores"


def test_a_saved_datasets_folder_with_tag_indices_reads_through_their_names(tmp_path):
    """conll2003-style: `ner_tags` as a sequence of ClassLabel indices, read by their names."""
    features = datasets.Features({
        "tokens": datasets.Sequence(datasets.Value("string")),
        "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER"]))})
    table = datasets.Dataset.from_dict(
        {"tokens": [["Bob", "Dylan", "sang"], ["we", "met", "Bob"]] * 3,
         "ner_tags": [[1, 2, 0], [0, 0, 1]] * 3}, features=features)
    table.save_to_disk(str(tmp_path / "saved"))
    settings = DataSettings(train=str(tmp_path / "saved"))
    task, _ = detect_task("auto", settings)
    rows = task.read(settings)
    assert task.name == TASK
    assert sorted(map(tuple, rows.train_labels + rows.val_labels)) == sorted(
        [("B-PER", "I-PER", "O"), ("O", "O", "B-PER")] * 3)


def encoded_ner(model_dir, path):
    """The token-classification task, the tiny BERT as its token classifier, its tokenizer, and
    `path`'s tagged sentences encoded for it."""
    task = get_task(TASK)
    settings = DataSettings(train=str(path))
    rows = task.read(settings)
    model, tokenizer = task.load_model(str(model_dir), task.label_names(rows, settings), False)
    return task, model, tokenizer, task.encode(rows, tokenizer, model.config, settings)


def test_lora_trains_a_token_classifier_from_its_batches(tiny_model_dir, ner_jsonl):
    """LoRA on the top block of the tiny BERT's token classifier: a batch as the task collates
    it trains the LoRA matrices and the head, nothing else."""
    task, model, tokenizer, data = encoded_ner(tiny_model_dir, ner_jsonl)
    params = dataclasses.replace(
        TrialParams(1e-2, 1.0, 8, 1, 1, 0.0, 0.0,
                    adapter_params={"lora_rank": 4, "lora_alpha": 8.0}), adapter="lora")
    get_adapter("lora").apply(model, 1, params)
    batch = task.collate(data.train, list(range(8)), tokenizer.pad_token_id, torch.device("cpu"))
    assert (batch["labels"] == IGNORED).any() and (batch["labels"] >= 0).any()
    model(**batch).loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
    assert trained and all("lora_" in n or n.startswith("classifier") for n in trained)
    assert any(n.startswith("classifier") for n in trained)
    assert any("layer.1." in n and "lora_" in n for n in trained)


def test_the_prefix_cache_replays_a_token_classifier(tiny_model_dir, ner_jsonl):
    """Replayed from stored states, the token classifier's logits at every real token are its
    own (the padding's differ, and no label reads them): the cache serves its trials."""
    task, model, tokenizer, data = encoded_ner(tiny_model_dir, ner_jsonl)
    width, _ = check_replay(model.eval(), find_blocks(model), 1, task, data.validation,
                            tokenizer.pad_token_id, torch.device("cpu"))
    assert width == model.config.hidden_size
