"""Tests for autoft.adapters: LoRA trains exactly the top blocks' low-rank matrices and the head on
BERT, RoBERTa, DistilBERT, GPT-2 and Llama-style tiny models; its merged weights give a plain
transformers model the LoRA model's logits; the prefix cache serves LoRA trials; a real search
with `adapter` in its space exports a model that loads without peft.

Expected names come from the name patterns of tests/test_model.py, independently of the structural
search the library does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification
from transformers.pytorch_utils import Conv1D

from autoft.adapters import get_adapter
from autoft.adapters.lora import lora_layers
from autoft.cache import PrefixCache
from autoft.cli import main
from autoft.model import load_model
from autoft.train import TrialParams, train_trial

LORA_ARCHS = ("bert", "roberta", "distilbert", "gpt2", "llama")
PARAMS = TrialParams(1e-2, 1.0, 8, 1, 1, 0.0, 0.0, adapter="lora",
                     adapter_params={"lora_rank": 4, "lora_alpha": 8.0})


def lora_model(arch, k: int):
    model = arch.build()
    get_adapter("lora").apply(model, k, replace(PARAMS, trainable_layers=k))
    return model


def expected_trainable(arch, names: list[str], k: int) -> set[str]:
    """LoRA matrices of the top k blocks and the head, by the name patterns."""
    head = {n for n in names if n.startswith(arch.head)}
    top = {n for n in names if arch.block_index(n) >= arch.depth - k and ".lora_" in n}
    return head | top


def linear_count(arch, k: int) -> int:
    """Linear layers in the top k blocks of an untouched model, by the name patterns."""
    model = arch.build()
    return sum(
        isinstance(m, (torch.nn.Linear, Conv1D)) and arch.block_index(name + ".") >= arch.depth - k
        for name, m in model.named_modules()
    )


def steps(arch, model, count: int = 2) -> None:
    """AdamW steps on a random batch: LoRA's B starts at zero, so A moves from the second on."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(count):
        model(**arch.random_batch(model)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("arch", LORA_ARCHS, indirect=True)
def test_lora_trains_exactly_the_top_blocks_low_rank_matrices_and_the_head(arch) -> None:
    for k in range(arch.depth + 1):
        model = lora_model(arch, k)
        names = [n for n, _ in model.named_parameters()]
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == expected_trainable(arch, names, k), k
        assert len(lora_layers(model)) == linear_count(arch, k), "every linear layer, no other"
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        steps(arch, model)
        for name, param in model.named_parameters():
            assert (not torch.equal(param, before[name])) == (name in trainable), (k, name)


@pytest.mark.parametrize("arch", LORA_ARCHS, indirect=True)
def test_merged_weights_give_a_fresh_plain_model_the_lora_logits(arch, tmp_path) -> None:
    arch.build().save_pretrained(tmp_path)
    adapter = get_adapter("lora")
    model = lora_model(arch, 1)
    steps(arch, model)
    batch = {k: v for k, v in arch.random_batch(model).items() if k != "labels"}
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    kept = adapter.kept_weights(model)
    assert not any("lora" in name or "base_layer" in name for name in kept)
    fresh = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert set(kept) <= set(dict(fresh.named_parameters())), "plain transformers names"
    fresh.load_state_dict(kept, strict=False)
    adapter.restore(model, kept)
    assert not lora_layers(model)
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch).logits, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(**batch).logits, expected, rtol=1e-5, atol=1e-5)
    assert set(dict(model.named_parameters())) == set(dict(fresh.named_parameters()))


def test_lora_trial_trains_from_the_cache_of_a_freeze_trial_and_follows_the_uncached_one(
    tmp_path: Path, save_tiny_bert, pad_id, make_data,
) -> None:

    folder = save_tiny_bert(tmp_path / "bert", layers=3)
    data = make_data()
    params = replace(PARAMS, learning_rate=1e-3, epochs=2, trainable_layers=1)
    cache = PrefixCache(tmp_path / "cache")

    def trial(params: TrialParams, cache: PrefixCache | None):
        torch.manual_seed(1)  # the same head and LoRA matrices every time
        model, _ = load_model(str(folder), ["neg", "pos"])
        get_adapter(params.adapter).apply(model, params.trainable_layers, params)
        evaluations = []
        result = train_trial(model, data, params, torch.device("cpu"), pad_id, seed=3,
                             on_evaluation=evaluations.append, eval_every_samples=16, cache=cache)
        return result, evaluations

    built, _ = trial(replace(params, adapter="freeze"), cache)
    cached, cached_evaluations = trial(params, cache)
    plain, plain_evaluations = trial(params, None)
    assert built.cache_note == "built" and cached.cache_note == "reused", "same frozen prefix"
    losses = [torch.tensor([e.train_loss for e in evs]) for evs in (plain_evaluations,
                                                                   cached_evaluations)]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=1e-5)
    assert losses[0][0] != losses[0][-1], "it trained"
    assert [e.value for e in plain_evaluations] == [e.value for e in cached_evaluations]
    assert plain.best_state.keys() == cached.best_state.keys()
    for name, tensor in plain.best_state.items():
        torch.testing.assert_close(cached.best_state[name], tensor, rtol=1e-4, atol=1e-5)


ADAPTER_SPACE = """\
learning_rate: {low: 1.0e-3, high: 5.0e-3, log: true, default: 2.0e-3}
head_lr_multiplier: {value: 5}
batch_size: {value: 16}
trainable_layers: {low: 1, high: max, default: 1}
epochs: {value: 2}
weight_decay: {value: 0.0}
warmup_ratio: {value: 0.0}
adapter: {choices: [freeze, lora], default: freeze}
lora_rank: {low: 2, high: 8, log: true, default: 4, when: {adapter: lora}}
lora_alpha: {choices: [4, 16], default: 16, when: {adapter: lora}}
starts:
  - {adapter: lora, trainable_layers: 2, learning_rate: 5.0e-3}
"""


@pytest.mark.slow
def test_a_search_over_adapters_runs_lora_trials_and_exports_a_plain_model(
    tiny_model_dir, tiny_csv, tmp_path: Path
) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(ADAPTER_SPACE)
    studies = tmp_path / "studies"
    assert main(["search", "--model", str(tiny_model_dir), "--train", str(tiny_csv), "--space",
                 str(space), "--n-trials", "2", "--study", "lora", "--studies-dir",
                 str(studies)]) == 0
    import optuna

    study = optuna.load_study(study_name="lora", storage=f"sqlite:///{studies}/lora/study.db")
    first, second = study.trials[:2]
    assert first.params.get("adapter") == "freeze" and "lora_rank" not in first.params
    assert second.params["adapter"] == "lora" and second.params["lora_rank"] == 4
    assert second.user_attrs["adapter"] == "lora" and second.state.name == "COMPLETE"
    assert second.user_attrs["trainable_parameters"] < first.user_attrs["trainable_parameters"]

    out = tmp_path / "exported"
    assert main(["export", "--study", "lora", "--studies-dir", str(studies), "--trial", "1",
                 str(out)]) == 0
    assert not (out / "adapter_config.json").exists()
    texts = ["the film was good", "awful food"]
    probe = (  # a process where importing peft fails: the export must not need it
        "import sys, json; sys.modules['peft'] = None\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        f"m = AutoModelForSequenceClassification.from_pretrained({str(out)!r}).eval()\n"
        f"t = AutoTokenizer.from_pretrained({str(out)!r})\n"
        f"print(json.dumps(m(**t({texts!r}, padding=True, return_tensors='pt')).logits.tolist()))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    exported = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert (out / "README.md").read_text().count("LoRA (rank 4") == 1
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        logits = exported(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(torch.tensor(json.loads(done.stdout)), logits)
