"""Tests for autoft.model: block finding, freezing and loading on tiny random models.

Expected parameter names come from name patterns per architecture written here, independently of
the structural search the library does.
"""

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from autoft.errors import UsageError
from autoft.model import (
    count_parameters,
    find_blocks,
    freeze,
    load_model,
    model_depth,
    split_parameters,
)


def expected_trainable(arch, names: list[str], k: int) -> set[str]:
    """The names that must train at depth k, from the name patterns alone."""
    if k == arch.depth:
        return set(names)
    head = {n for n in names if n.startswith(arch.head)}
    return head | {n for n in names if arch.block_index(n) >= arch.depth - k}


def test_depth_is_the_configured_layer_count(arch) -> None:
    model = arch.build()
    assert model_depth(model) == arch.depth
    assert len(find_blocks(model)) == arch.depth


def test_groups_partition_the_names_as_the_patterns_say(arch) -> None:
    model = arch.build()
    names = [n for n, _ in model.named_parameters()]
    groups = split_parameters(model)
    assert sorted(groups.prefix + groups.head + sum(groups.blocks, ())) == sorted(names)
    assert set(groups.head) == {n for n in names if n.startswith(arch.head)}
    for index, block in enumerate(groups.blocks):
        assert set(block) == {n for n in names if arch.block_index(n) == index}
    assert groups.prefix, "the embeddings belong to the prefix"
    assert split_parameters(model) is groups


def test_freeze_trains_exactly_head_and_top_blocks(arch) -> None:
    model = arch.build()
    names = [n for n, _ in model.named_parameters()]
    sizes = dict((n, p.numel()) for n, p in model.named_parameters())
    for k in range(arch.depth + 1):
        count = freeze(model, k)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == expected_trainable(arch, names, k), k
        assert count == sum(sizes[n] for n in trainable) == count_parameters(model, True)
    assert count_parameters(model) == count_parameters(model, trainable_only=True)


def test_adamw_step_changes_exactly_the_trainable_parameters(arch) -> None:
    model = arch.build()
    model.train()
    for k in range(arch.depth + 1):
        freeze(model, k)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-2)
        model(**arch.random_batch(model)).loss.backward()
        optimizer.step()
        for name, param in model.named_parameters():
            changed = not torch.equal(param, before[name])
            assert changed == param.requires_grad, (k, name)
            param.grad = None


@pytest.mark.parametrize("k", [-1, 4])
def test_freeze_rejects_depth_out_of_range(k: int, archs) -> None:
    with pytest.raises(ValueError, match="0..3"):
        freeze(archs["bert"].build(), k)


def test_split_runs_in_eval_mode_and_restores_training_flags(archs) -> None:
    model = archs["bert"].build()
    model.train()
    model.bert.pooler.eval()
    split_parameters(model)
    assert model.training and not model.bert.pooler.training
    assert all(m.training for m in model.bert.encoder.modules())


def save_tokenizer(folder: Path, vocab_size: int, **special: str) -> None:
    """A WordLevel tokenizer over a tiny vocabulary, saved as transformers saves one."""
    vocab = {"[PAD]": 0, "[UNK]": 1, "good": 2, "bad": 3, "movie": 4, "</s>": vocab_size - 1}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", **special
    ).save_pretrained(folder)


def test_load_model_round_trips_a_saved_bert(tmp_path: Path, archs, vocab_size) -> None:
    saved = archs["bert"].build()  # saved with a 3-label head, loaded with 2 labels
    saved.save_pretrained(tmp_path)
    save_tokenizer(tmp_path, vocab_size, pad_token="[PAD]")
    model, tokenizer = load_model(str(tmp_path), ["neg", "pos"])
    assert model.config.num_labels == 2
    assert model.config.id2label == {0: "neg", 1: "pos"}
    assert model.config.label2id == {"neg": 0, "pos": 1}
    assert model.classifier.out_features == 2
    layer = "bert.encoder.layer.2.output.dense.weight"
    assert torch.equal(model.state_dict()[layer], saved.state_dict()[layer])
    batch = tokenizer(["good movie", "bad"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 2)


def test_load_model_pads_with_eos_when_tokenizer_has_no_pad(
    tmp_path: Path, archs, vocab_size
) -> None:
    archs["gpt2"].build().save_pretrained(tmp_path)
    save_tokenizer(tmp_path, vocab_size, eos_token="</s>")
    model, tokenizer = load_model(str(tmp_path), ["a", "b", "c"])
    assert tokenizer.pad_token == "</s>"
    assert model.config.pad_token_id == tokenizer.pad_token_id == vocab_size - 1
    batch = tokenizer(["good movie", "bad"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 3)


def test_load_model_is_quiet_and_restores_logging(tmp_path: Path, capfd, archs, vocab_size) -> None:
    archs["bert"].build().base_model.save_pretrained(tmp_path)  # no head: a new one is made
    save_tokenizer(tmp_path, vocab_size, pad_token="[PAD]")
    capfd.readouterr()
    verbosity = hf_logging.get_verbosity()
    load_model(str(tmp_path), ["a", "b", "c"])
    assert "classifier" not in capfd.readouterr().err
    assert hf_logging.get_verbosity() == verbosity


def test_load_model_rejects_a_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UsageError, match="config.json") as caught:
        load_model(str(tmp_path), ["a", "b"])
    assert str(tmp_path) in str(caught.value)


def test_load_model_names_a_missing_folder(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    with pytest.raises(UsageError, match="does not exist") as caught:
        load_model(missing, ["a", "b"])
    assert missing in str(caught.value)


def test_load_model_names_a_model_it_cannot_load(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(UsageError, match="Could not load model") as caught:
        load_model(str(tmp_path), ["a", "b"])
    assert str(tmp_path) in str(caught.value)


def test_load_model_rejects_duplicate_labels(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="distinct"):
        load_model(str(tmp_path), ["a", "a"])
