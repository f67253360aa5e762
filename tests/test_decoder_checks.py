"""The generative base checks (`causal_lm`, `qa`) on tiny GPT-2, Llama and Qwen2 decoders: a
classifier trained on a decoder reads as the causal LM itself (through the base model's LM head),
a causal LM through its own head, the untouched model keeps retention 1.0, the frozen prefix
replays exactly, preservation keeps the next-token distribution closer, bad input is one
sentence, and a real `autoft search` checks a GPT-2 text classifier with each kind.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from autoft.config import BaseTaskConfig, build_config
from autoft.errors import UsageError
from autoft.forgetting import (
    build_base_task,
    find_pair_columns,
    paired_interval,
    preservation_texts,
    retention,
)
from autoft.forgetting.decoders import IGNORED, answer_batches
from autoft.forgetting.readers import read_questions
from autoft.forgetting.split import split_base
from autoft.model import find_blocks, freeze, load_model
from autoft.prepare import prepare_study
from autoft.preserve import Preservation

CPU = torch.device("cpu")
FAMILIES = ("gpt2", "llama", "qwen2")
KINDS = ("causal_lm", "qa")
SHIPPED_QA = Path(__file__).parents[1] / "autoft" / "base_data" / "general_qa.jsonl"


def causal_lm(folder: Path, seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_pretrained(folder).eval()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", KINDS)
def test_a_classifier_on_a_decoder_reads_as_the_causal_lm_it_came_from(
    kind, family, tiny_decoders, build_chat_tokenizer, base_config, tmp_path
):
    """The untouched decoder as a new classifier (read through the base model's LM head) and as
    the causal LM itself (its own head) score the same, retention 1.0; replaying the frozen
    bottom block changes nothing."""
    folder = tiny_decoders[family]
    check = build_base_task(base_config(kind, tmp_path), str(folder), build_chat_tokenizer(), 32)
    classifier, _ = load_model(str(folder), ["neg", "pos"])
    own = check.score(causal_lm(folder), "cpu")
    assert check.score(classifier, "cpu").value == pytest.approx(own.value, rel=1e-6)
    assert retention(own.value, check.score(classifier, "cpu", frozen=1).value,
                     check.higher_is_better) == pytest.approx(1.0, abs=1e-6)
    counted = own.details["answer_tokens" if kind == "qa" else "tokens"]
    assert counted >= check.units_["search"], "every unit has a token that counts"


@pytest.mark.parametrize("kind", KINDS)
def test_a_causal_lm_is_read_through_its_own_trained_head(
    kind, tiny_decoders, build_chat_tokenizer, base_config, tmp_path
):
    """Qwen2 keeps an lm_head of its own: trained alone, it is what the check reads (and so it is
    checked)."""
    folder = tiny_decoders["qwen2"]
    check = build_base_task(base_config(kind, tmp_path), str(folder), build_chat_tokenizer(), 32)
    model = causal_lm(folder)
    base = check.score(model, "cpu").value
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("lm_head."))
    assert check.reads_trained(model)
    with torch.no_grad():
        model.lm_head.weight.add_(torch.randn_like(model.lm_head.weight))
    assert retention(base, check.score(model, "cpu").value, check.higher_is_better) < 0.99


@pytest.mark.parametrize("family", FAMILIES)
def test_drift_and_its_audit_split_read_a_causal_lm(family, tiny_decoders, build_chat_tokenizer,
                                                    texts, write_lines, tmp_path):
    """drift reads a causal LM's decoder as any encoder's: the untouched model keeps 1.0 on the
    held-out half (its interval holds 1.0), a perturbed one less."""
    folder = tiny_decoders[family]
    data = write_lines(tmp_path / "general.txt", texts(240, seed=3))
    check = build_base_task(BaseTaskConfig("drift", str(data)), str(folder),
                            build_chat_tokenizer(), 32)
    assert check.split_.held_out and check.units_["audit"] == 120
    model = causal_lm(folder)
    observed = check.observe(model, "cpu")
    assert check.statistic(observed, np.arange(120)) == pytest.approx(1.0)
    assert paired_interval(check, observed, observed, "audit", seed=0, resamples=50)[0] == \
        pytest.approx(1.0)
    with torch.no_grad():
        for parameter in find_blocks(model)[-1].parameters():
            parameter.add_(torch.randn_like(parameter) * parameter.std())
    assert check.statistic(check.observe(model, "cpu"), np.arange(120)) < 0.99


def test_an_encoder_is_refused_in_one_sentence(tiny_mlm_dir, build_tokenizer, base_config,
                                               tmp_path):
    """BERT loads as a causal LM in transformers (BertLMHeadModel, its MLM head's weights), but
    every token sees every other: it has no next-token distribution."""
    for kind in KINDS:
        with pytest.raises(UsageError, match=r"is an encoder \(bert\).*'drift' or 'similarity'"):
            build_base_task(base_config(kind, tmp_path), str(tiny_mlm_dir), build_tokenizer(), 32)


def test_bad_question_files_are_one_sentence_each(tmp_path, write_lines, write_jsonl,
                                                  write_csv):
    def refusal(path: Path, **settings) -> str:
        with pytest.raises(UsageError) as caught:
            read_questions(BaseTaskConfig("qa", str(path), **settings))
        message = str(caught.value)
        assert str(path) in message and message.count(". ") == 0, message
        return message

    assert "needs a table of questions and answers" in refusal(
        write_lines(tmp_path / "lines.txt", ["what is it ?"]))
    three = write_jsonl(tmp_path / "three.jsonl", [{"a": "x", "b": "y", "c": "z"}])
    assert "--base-text-pair-column" in refusal(three)
    empty = write_csv(tmp_path / "empty.csv", [{"question": "what ?", "answer": "it"},
                                               {"question": "who ?", "answer": " "}])
    assert "row 2 has an empty 'answer'" in refusal(empty)
    assert "no column 'reply'" in refusal(empty, text_column="question",
                                          text_pair_column="reply")


def test_the_shipped_general_questions_read_as_a_qa_table():
    config = BaseTaskConfig("qa", str(SHIPPED_QA))
    assert find_pair_columns(config) == {"text_column": "question", "text_pair_column": "answer"}
    questions, answers = read_questions(config)
    assert len(questions) == len(set(questions)) == len(answers) > 300
    assert "Richard Nixon" in answers


def test_a_long_question_loses_its_start_and_the_answer_is_kept(build_chat_tokenizer):
    """Answer tokens are the only ones counted; past max_length the question is cut from its
    start (its end, next to the answer, stays) and the answer keeps its beginning."""
    tokenizer = build_chat_tokenizer(chat=False)
    question = " ".join(["good"] * 20) + " what is the opposite of bad ?"
    [(batch, labels)] = answer_batches(tokenizer, [question, "what is good ?"],
                                       ["good", "bad"], 12, 8)
    ids = batch["input_ids"][0].tolist()
    assert tokenizer.decode(ids) == "good good good what is the opposite of bad ? good </s>"
    counted = [token for token in labels[0].tolist() if token != IGNORED]
    assert tokenizer.decode(counted) == "good </s>"
    short = labels[1][batch["attention_mask"][1] == 0]
    assert (short == IGNORED).all(), "padding never counts"


def test_a_processor_without_a_pad_token_pads_with_its_end_of_sequence_token(
    tiny_decoders, build_chat_tokenizer, base_config, tmp_path
):
    """Workers load the processor alone for the preservation batches; GPT-2's has no pad token."""
    check = build_base_task(base_config("causal_lm", tmp_path), str(tiny_decoders["gpt2"]),
                            build_chat_tokenizer(), 32)
    processor = build_chat_tokenizer()
    processor.pad_token = None
    [batch] = check.preservation_batches(processor, ["good day", "bad"], 8, 4)
    assert batch["input_ids"][1, 1] == processor.eos_token_id and batch["attention_mask"][1, 1] == 0


@pytest.fixture(scope="module")
def gpt2_target(tmp_path_factory, tiny_decoders, tiny_csv):
    flags = {"model": str(tiny_decoders["gpt2"]), "train": str(tiny_csv), "name": "p",
             "studies_dir": str(tmp_path_factory.mktemp("studies"))}
    prepared = prepare_study(build_config({}, None, flags), echo=lambda line: None)
    return prepared.data, prepared.pad_id


@pytest.mark.parametrize("kind", KINDS)
def test_preservation_keeps_the_next_token_distribution_closer_and_replays_the_prefix(
    kind, tiny_decoders, gpt2_target, build_chat_tokenizer, base_config, tmp_path,
    preservation_distances
):
    """A GPT-2 classifier trained hard moves the base LM head's next-token distribution on held-
    out texts; the preservation loss keeps it far closer. Its frozen bottom block is replayed
    (proven against the whole model) and the loss is the one the whole model gives."""
    data, _ = gpt2_target
    folder = str(tiny_decoders["gpt2"])
    config = base_config(kind, tmp_path)
    tokenizer = build_chat_tokenizer()
    check = build_base_task(config, folder, tokenizer, 32)
    free, preserved = preservation_distances(check, config, folder, gpt2_target, tokenizer,
                                             tmp_path)
    assert free > 1e-3, f"lr 1e-2 on every layer must move what {kind} reads"
    assert preserved < 0.5 * free, (kind, free, preserved)

    model, _ = load_model(folder, data.label_names)
    freeze(model, 1)
    preservation = Preservation(check, preservation_texts(config, check.split_), tokenizer,
                                tmp_path / "preserve", folder)
    replayed = preservation.loss(model, 1.0, 1, CPU)[0]
    whole = preservation.loss(model, 1.0, 0, CPU)[0]
    losses = [replayed(model, step).item() for step in range(2)]
    assert replayed.replays, "the frozen block is replayed"
    assert losses == pytest.approx([whole(model, step).item() for step in range(2)], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_a_search_checks_a_gpt2_classifier_with_a_generative_base_kind(
    kind, tiny_decoders, tiny_csv, texts, write_lines, write_jsonl, write_space, cli_env,
    search_args, tmp_path
):
    """`autoft search --base-kind causal_lm|qa` on a GPT-2 text classifier: the base skill is
    measured, the question and answer columns are found and said, every trial is checked, and
    the audit reads the held-out half of 240 texts or questions."""
    if kind == "qa":
        rows = [{"question": question, "answer": answer}
                for question, answer in zip(texts(240, seed=3), texts(240, seed=4), strict=True)]
        data = write_jsonl(tmp_path / "questions.jsonl", rows)
    else:
        data = write_lines(tmp_path / "general.txt", texts(240, seed=3))
    space = write_space(tmp_path / "space.yaml", epochs=1)
    done = subprocess.run(
        search_args(tiny_decoders["gpt2"], tiny_csv, space, tmp_path / "studies", "g", 2, "cpu",
                    checked=True)
        + ["--base-kind", kind, "--base-data", str(data), "--max-train-samples", "120"],
        capture_output=True, text=True, env=cli_env(), timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "studies" / "g" / "summary.json").read_text())
    assert summary["base"]["kind"] == kind and summary["base"]["score"] > 0
    unit = "questions" if kind == "qa" else "texts"
    assert f"120 held-out {unit} the search never checked" in done.stdout, done.stdout
    if kind == "qa":
        assert "questions from column 'question'" in done.stdout


def test_spare_questions_preserve_both_question_and_answer(tmp_path, write_jsonl):
    """Base items past max_examples, which no check reads, give the preservation loss both their
    question and their answer."""
    rows = [{"question": f"what is {i} ?", "answer": f"it is {i}"} for i in range(8)]
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    config = BaseTaskConfig("qa", str(data), text_column="question", text_pair_column="answer",
                            max_examples=4)
    texts = preservation_texts(config, split_base(8, "questions", 0))
    assert texts == [text for row in rows[4:] for text in (row["question"], row["answer"])]
