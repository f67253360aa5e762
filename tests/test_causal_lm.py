"""The causal-lm task on tiny decoders built here (Llama and GPT-2 with tied embeddings, Qwen2 with
an lm_head of its own): the loss counts response tokens only, the chat template wraps the prompt,
the prefix cache replays the model exactly, a LoRA trial's merged export generates what the trial's
model generates, and bad data is one sentence before any trial.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional
from transformers import AutoModelForCausalLM, AutoTokenizer

from autoft.adapters import get_adapter
from autoft.cache import PrefixCache
from autoft.cli import main
from autoft.export import load_checkpoint_model
from autoft.model import evaluating, freeze, split_parameters
from autoft.objective import save_trial_weights
from autoft.params import TrialParams
from autoft.precision import autocast
from autoft.tasks import DataSettings, detect_task, get_task
from autoft.train import evaluate, set_train_mode

CPU = torch.device("cpu")
FAMILIES = ("llama", "gpt2", "qwen2")
TASK = get_task("causal-lm")


def prepared(model_dir: Path, train: Path, **settings):
    """(model, tokenizer, TargetData) of `train` for the model in `model_dir`."""
    data_settings = DataSettings(train=str(train), **settings)
    rows = TASK.read(data_settings)
    model, tokenizer = TASK.load_model(str(model_dir), [], False)
    return model, tokenizer, TASK.encode(rows, tokenizer, model.config, data_settings)


@pytest.fixture(scope="module", params=FAMILIES)
def family_dir(request, tmp_path_factory, save_tiny_causal_lm) -> Path:
    return save_tiny_causal_lm(tmp_path_factory.mktemp(request.param), request.param,
                               chat=request.param != "gpt2")


def test_the_loss_counts_the_response_tokens_only(tiny_llama_dir, qa_jsonl):
    model, tokenizer, data = prepared(tiny_llama_dir, qa_jsonl)
    indices = list(range(8))
    batch = TASK.collate(data.train, indices, tokenizer.pad_token_id, CPU)
    for row, i in enumerate(indices):
        start, ids = data.train.prompt_lengths[i], data.train.input_ids[i]
        assert start > 0 and (batch["labels"][row, :start] == -100).all(), "no loss on the prompt"
        assert batch["labels"][row, start : len(ids)].tolist() == ids[start:]
        assert (batch["labels"][row, len(ids):] == -100).all(), "nor on the padding"
    with torch.no_grad():
        output = model(**batch)
        labels = batch["labels"][:, 1:]
        by_hand = functional.cross_entropy(output.logits[:, :-1].transpose(1, 2), labels,
                                           ignore_index=-100, reduction="sum")
        counted = (labels != -100).sum()
        assert output.loss.item() == pytest.approx((by_hand / counted).item(), rel=1e-5)
        predicted = TASK.batch_predictions(output.logits, data.train, indices)
        # what the model predicts inside the prompt counts for nothing
        noisy = output.logits.clone()
        for row, i in enumerate(indices):
            start = data.train.prompt_lengths[i]
            noisy[row, : start - 1] = torch.randn_like(noisy[row, : start - 1])
        assert TASK.batch_predictions(noisy, data.train, indices) == predicted
    assert [count for _, count in predicted] == [data.train.labels[i][1] for i in indices]
    assert sum(loss for loss, _ in predicted) == pytest.approx(by_hand.item(), rel=1e-5)
    assert TASK.score("loss", [], predicted) == pytest.approx(output.loss.item(), rel=1e-5)


def test_the_chat_template_wraps_the_prompt_else_a_newline_joins_it(
        tiny_llama_dir, qa_jsonl, save_tiny_causal_lm, tmp_path):
    _, tokenizer, data = prepared(tiny_llama_dir, qa_jsonl)
    ids, start = data.train.input_ids[0], data.train.prompt_lengths[0]
    prompt = tokenizer.convert_ids_to_tokens(ids[:start])
    assert prompt[:2] == ["<|im_start|>", "user"] and prompt[-2:] == ["<|im_start|>", "assistant"]
    assert tokenizer.convert_ids_to_tokens(ids[start:])[-1] == "<|im_end|>", "the turn ends"
    plain = save_tiny_causal_lm(tmp_path / "plain", chat=False)
    _, tokenizer, data = prepared(plain, qa_jsonl)
    ids, start = data.train.input_ids[0], data.train.prompt_lengths[0]
    assert "<|im_start|>" not in tokenizer.convert_ids_to_tokens(ids)
    assert ids[-1] == tokenizer.eos_token_id, "the response ends with end-of-sequence"


def test_plain_texts_count_every_token(tiny_llama_dir, tmp_path, texts):
    train = tmp_path / "texts.txt.csv"
    train.write_text("text\n" + "\n".join(texts(30, seed=1)) + "\n")
    _, _, data = prepared(tiny_llama_dir, train)
    assert set(data.train.prompt_lengths) == {0}
    assert [label[1] for label in data.train.labels] == [len(i) - 1 for i in data.train.input_ids]


def test_texts_without_labels_for_a_causal_lm_are_detected_as_continued_pretraining(
        tiny_llama_dir, tiny_model_dir, tmp_path, texts):
    """A text column and no label column is causal-lm when the model folder is a causal LM, and
    stays text classification (whose missing label column is then the error) for a classifier."""
    train = tmp_path / "texts.csv"
    train.write_text("text\n" + "\n".join(texts(10, seed=2)) + "\n")
    settings = DataSettings(train=str(train))
    task, note = detect_task("auto", settings, str(tiny_llama_dir))
    assert task.name == "causal-lm"
    assert "the model is a LlamaForCausalLM" in note and "continued pretraining" in note
    assert detect_task("auto", settings, str(tiny_model_dir))[0].name == "text-classification"
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("text,label\n" + "".join(f"{t},a\n" for t in texts(4, seed=3)))
    assert detect_task("auto", DataSettings(train=str(labelled)),
                       str(tiny_llama_dir))[0].name == "text-classification"


def test_a_text_corpus_for_a_gpt2_folder_is_continued_pretraining(tiny_decoders, tmp_path,
                                                                   texts):
    """A GPT-2 folder (GPT2LMHeadModel, not ...ForCausalLM) and a plain .txt corpus were read as
    CoNLL: "the sentence at line 1 has the tag 'was'"."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(texts(10, seed=2)) + "\n\n")
    settings = DataSettings(train=str(corpus))
    task, note = detect_task("auto", settings, str(tiny_decoders["gpt2"]))
    assert task.name == "causal-lm" and "GPT2LMHeadModel" in note, note
    rows = task.read(settings)
    assert sorted(rows.train_labels + rows.val_labels) == sorted(texts(10, seed=2))


def test_a_named_response_column_without_the_prompt_column_is_said(
        tiny_decoders, tmp_path, capsys, write_csv):
    """--response-column answer over question/answer columns was "has no column label"."""
    rows = [{"question": f"what is {i} ?", "answer": f"it is {i}"} for i in range(20)]
    train = write_csv(tmp_path / "qa.csv", rows)
    code = main(["search", "--model", str(tiny_decoders["gpt2"]), "--train", str(train),
                 "--response-column", "answer", "--studies-dir", str(tmp_path / "studies")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--prompt-column: " in err and "no column 'prompt' (it has question, answer)" in err


def test_what_trains_at_each_depth(family_dir):
    """The top blocks and the final norm; a tied lm_head (the embeddings) only at full depth,
    an untied one (Qwen2) at every depth."""
    model, _ = TASK.load_model(str(family_dir), [], False)
    freeze(model, 1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    tied = model.config.tie_word_embeddings
    assert any("norm" in n or "ln_f" in n for n in trainable)
    assert ("lm_head.weight" in trainable) != tied
    assert not any(n in trainable for n in split_parameters(model).prefix)


def test_the_prefix_cache_replays_the_uncached_model(family_dir, qa_jsonl, tmp_path):
    model, tokenizer, data = prepared(family_dir, qa_jsonl)
    pad = tokenizer.pad_token_id
    use = PrefixCache(tmp_path / "cache").states_for(model, data, 1, CPU, pad)
    assert use.states is not None, use.note
    uncached = evaluate(model, data, pad, CPU)
    assert evaluate(model, data, pad, CPU, use.states.validation) == pytest.approx(
        uncached, rel=1e-5)
    indices = list(range(6))
    batch = TASK.collate(data.train, indices, pad, CPU)
    real = batch["attention_mask"].bool()  # padding positions' logits are read by nothing
    with evaluating(model), torch.no_grad(), autocast(CPU):  # as the states were computed
        torch.testing.assert_close(use.states.train.forward(model, batch, indices).logits[real],
                                   model(**batch).logits[real])


def test_a_lora_trial_exports_a_model_that_generates_as_the_trial_did(family_dir, qa_jsonl,
                                                                      tmp_path):
    model, tokenizer, data = prepared(family_dir, qa_jsonl)
    params = TrialParams(5e-2, 1.0, 8, 1, 1, 0.0, 0.0, adapter="lora",
                         adapter_params={"lora_rank": 4, "lora_alpha": 8.0})
    adapter = get_adapter("lora")
    adapter.apply(model, 1, params)
    set_train_mode(model, 1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    for _ in range(3):
        batch = TASK.collate(data.train, list(range(16)), tokenizer.pad_token_id, CPU)
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    save_trial_weights(tmp_path / "trainable.safetensors", adapter.kept_weights(model))
    rebuilt, processor = load_checkpoint_model(TASK, str(family_dir), [],
                                               str(tmp_path / "trainable.safetensors"))
    rebuilt.save_pretrained(tmp_path / "export")
    TASK.save_processor(processor, tmp_path / "export")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert not any("lora" in n for n, _ in exported.named_parameters()), "plain, without peft"
    prompt = torch.tensor([data.validation.input_ids[0][: data.validation.prompt_lengths[0]]])
    with evaluating(model), torch.no_grad():
        settings = {"max_new_tokens": 6, "do_sample": False,
                    "pad_token_id": tokenizer.pad_token_id}
        expected = model.generate(prompt, **settings)
        assert torch.equal(exported.eval().generate(prompt, **settings), expected)
    assert AutoTokenizer.from_pretrained(tmp_path / "export").chat_template == \
        tokenizer.chat_template


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def refused(model: Path, train: Path, tmp_path: Path, capsys, *extra: str) -> str:
    """The one sentence a search on `train` ends with (exit 2, no study started)."""
    code, err = run_cli(["search", "--model", str(model), "--train", str(train), "--task",
                         "causal-lm", "--studies-dir", str(tmp_path / "studies"), "--study",
                         "bad", "--n-trials", "1", *extra], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "studies" / "bad" / "study.db").exists()
    return err


def test_no_response_column_is_one_sentence(tiny_llama_dir, tmp_path, capsys, write_jsonl):
    train = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "what is good ?", "answer": "bad"}] * 9)
    err = refused(tiny_llama_dir, train, tmp_path, capsys)
    assert "'response'" in err and "--response-column" in err and "answer" in err


def test_an_empty_response_is_one_sentence(tiny_llama_dir, tmp_path, capsys, write_jsonl):
    rows = [{"prompt": "what is good ?", "response": "bad"}] * 9
    train = write_jsonl(tmp_path / "q.jsonl", rows + [{"prompt": "what is bad ?",
                                                       "response": " "}])
    err = refused(tiny_llama_dir, train, tmp_path, capsys)
    assert "line 10" in err and "empty 'response'" in err and "q.jsonl" in err


def test_a_response_longer_than_the_model_reads_is_one_sentence(tiny_llama_dir, tmp_path,
                                                                 capsys, write_jsonl):
    rows = [{"prompt": "what is good ?", "response": "bad"}] * 9
    rows.append({"prompt": "what is bad ?", "response": " ".join(["good"] * 60)})
    train = write_jsonl(tmp_path / "q.jsonl", rows)
    err = refused(tiny_llama_dir, train, tmp_path, capsys, "--validation", str(train))
    assert "61 tokens" in err and "48" in err and "shorten it" in err


def test_long_prompts_lose_their_start_and_are_counted(tiny_llama_dir, qa_jsonl):
    _, _, data = prepared(tiny_llama_dir, qa_jsonl, max_length=12)
    cut = next(note for note in data.notes if note.startswith("truncation"))
    assert "rows longer than 12 tokens lost the start of their prompt" in cut
    assert max(TASK.sizes(data.train)) <= 12
    assert all(label[1] >= 2 for label in data.train.labels), "every response whole"


@pytest.mark.slow
def test_a_search_detects_the_task_and_exports_a_text_generation_model(
        tiny_llama_dir, qa_jsonl, tmp_path, texts):
    general = tmp_path / "general.txt"
    general.write_text("\n".join(texts(40, seed=3)) + "\n")
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {low: 1.0e-3, high: 1.0e-2, log: true, default: 3.0e-3}\n"
                     "head_lr_multiplier: {value: 10}\nbatch_size: {value: 16}\n"
                     "trainable_layers: {low: 0, high: max, default: 1}\n"
                     "adapter: {choices: [freeze, lora], default: lora}\nepochs: {value: 2}\n"
                     "weight_decay: {value: 0.0}\nwarmup_ratio: {value: 0.0}\n")
    done = subprocess.run(
        [sys.executable, "-m", "autoft", "search", "--model", str(tiny_llama_dir), "--train",
         str(qa_jsonl), "--space", str(space), "--n-trials", "2", "--studies-dir",
         str(tmp_path / "studies"), "--study", "qa", "--base-kind", "drift", "--base-data",
         str(general), "--min-retention", "0.5", "--devices", "cpu"],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "task: causal-lm (the data has a prompt column 'prompt'" in done.stdout
    assert "head_lr_multiplier held at 1" in done.stdout
    from transformers import pipeline

    out = tmp_path / "studies" / "qa" / "best_model"
    assert "pipeline_tag: text-generation" in (out / "README.md").read_text()
    generate = pipeline("text-generation", model=str(out))
    answer = generate([{"role": "user", "content": "what is the opposite of good ?"}],
                      max_new_tokens=2, do_sample=False)
    assert answer[0]["generated_text"][-1]["role"] == "assistant"
