"""Tests for autoft.model: block finding, freezing and loading on tiny random models.

Expected parameter names come from name patterns per architecture written here, independently of
the structural search the library does.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers
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

VOCAB = 50
TEXT = {"vocab_size": VOCAB, "num_labels": 3, "max_position_embeddings": 32}
IMAGE = {"image_size": 8, "num_labels": 3}
BERTLIKE = {
    **TEXT,
    "hidden_size": 32,
    "num_attention_heads": 2,
    "intermediate_size": 37,
}


@dataclass(frozen=True)
class Arch:
    """A tiny model to build, and how its parameter names say where each one belongs."""

    model_class: str
    config_class: str
    config: dict
    depth: int
    block: str  # regex whose group 1 is the block index (see stage_depths)
    head: tuple[str, ...]  # name prefixes of the head
    stage_depths: tuple[int, ...] = ()  # a staged model: groups stage, layer (none: the
    # stage's own parts, which feed its first block) and next (parts feeding the next stage)

    def build(self) -> transformers.PreTrainedModel:
        """A fresh random model, the same for every call."""
        torch.manual_seed(0)
        config = getattr(transformers, self.config_class)(**self.config)
        return getattr(transformers, self.model_class)(config)


ARCHS = {
    "bert": Arch(
        "BertForSequenceClassification",
        "BertConfig",
        {**BERTLIKE, "num_hidden_layers": 3},
        3,
        r"bert\.encoder\.layer\.(\d+)\.",
        ("bert.pooler.", "classifier."),
    ),
    "roberta": Arch(
        "RobertaForSequenceClassification",
        "RobertaConfig",
        {**BERTLIKE, "num_hidden_layers": 2, "pad_token_id": 1},
        2,
        r"roberta\.encoder\.layer\.(\d+)\.",
        ("classifier.",),
    ),
    "distilbert": Arch(
        "DistilBertForSequenceClassification",
        "DistilBertConfig",
        {**TEXT, "dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 37},
        2,
        r"distilbert\.transformer\.layer\.(\d+)\.",
        ("pre_classifier.", "classifier."),
    ),
    "albert": Arch(
        "AlbertForSequenceClassification",
        "AlbertConfig",
        {**BERTLIKE, "embedding_size": 16, "num_hidden_layers": 3},
        1,
        r"albert\.encoder\.albert_layer_groups\.(\d+)\.",
        ("albert.pooler.", "classifier."),
    ),
    "deberta-v2": Arch(  # v3-style: relative attention, and a conv that runs after block 0
        "DebertaV2ForSequenceClassification",
        "DebertaV2Config",
        {
            **BERTLIKE,
            "num_hidden_layers": 2,
            "relative_attention": True,
            "pos_att_type": ["p2c", "c2p"],
            "position_biased_input": False,
            "position_buckets": 8,
            "norm_rel_ebd": "layer_norm",
            "conv_kernel_size": 3,
        },
        2,
        r"deberta\.encoder\.layer\.(\d+)\.",
        ("pooler.", "classifier."),
    ),
    "electra": Arch(
        "ElectraForSequenceClassification",
        "ElectraConfig",
        {**BERTLIKE, "embedding_size": 16, "num_hidden_layers": 2},
        2,
        r"electra\.encoder\.layer\.(\d+)\.",
        ("classifier.",),
    ),
    "gpt2": Arch(
        "GPT2ForSequenceClassification",
        "GPT2Config",
        {
            **TEXT,
            "n_embd": 32,
            "n_layer": 2,
            "n_head": 2,
            "pad_token_id": 0,
            "bos_token_id": VOCAB - 1,
            "eos_token_id": VOCAB - 1,
        },
        2,
        r"transformer\.h\.(\d+)\.",
        ("transformer.ln_f.", "score."),
    ),
    "llama": Arch(
        "LlamaForSequenceClassification",
        "LlamaConfig",
        {
            **BERTLIKE,
            "num_hidden_layers": 2,
            "num_key_value_heads": 1,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        2,
        r"model\.layers\.(\d+)\.",
        ("model.norm.", "score."),
    ),
    "vit": Arch(
        "ViTForImageClassification",
        "ViTConfig",
        {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 37,
            "image_size": 8,
            "patch_size": 4,
            "num_labels": 3,
        },
        2,
        r"vit\.layers\.(\d+)\.",
        ("vit.layernorm.", "classifier."),
    ),
    "resnet": Arch(
        "ResNetForImageClassification",
        "ResNetConfig",
        {**IMAGE, "embedding_size": 8, "hidden_sizes": [8, 16], "depths": [2, 1],
         "layer_type": "basic"},
        3,
        r"resnet\.encoder\.stages\.(?P<stage>\d+)\.layers\.(?P<layer>\d+)\.",
        ("classifier.",),
        (2, 1),
    ),
    "convnext": Arch(
        "ConvNextForImageClassification",
        "ConvNextConfig",
        {**IMAGE, "num_stages": 2, "hidden_sizes": [8, 16], "depths": [2, 1], "patch_size": 2},
        3,
        r"convnext\.encoder\.stages\.(?P<stage>\d+)\.(?:layers\.(?P<layer>\d+)|downsampling)",
        ("convnext.layernorm.", "classifier."),
        (2, 1),
    ),
    "swin": Arch(
        "SwinForImageClassification",
        "SwinConfig",
        {**IMAGE, "patch_size": 2, "embed_dim": 8, "depths": [2, 1], "num_heads": [1, 2],
         "window_size": 2},
        3,
        r"swin\.encoder\.layers\.(?:(?P<stage>\d+)\.blocks\.(?P<layer>\d+)|(?P<next>\d+)\.down)",
        ("swin.layernorm.", "classifier."),
        (2, 1),
    ),
}


def block_index(arch: Arch, name: str) -> int:
    """Which block a parameter name belongs to by the pattern; -1 for none."""
    match = re.match(arch.block, name)
    if not match:
        return -1
    if not arch.stage_depths:
        return int(match[1])
    found = match.groupdict()
    stage = int(found["stage"]) if found["stage"] is not None else int(found["next"]) + 1
    return sum(arch.stage_depths[:stage]) + int(found.get("layer") or 0)


def expected_trainable(arch: Arch, names: list[str], k: int) -> set[str]:
    """The names that must train at depth k, from the name patterns alone."""
    if k == arch.depth:
        return set(names)
    head = {n for n in names if n.startswith(arch.head)}
    return head | {n for n in names if block_index(arch, n) >= arch.depth - k}


def random_batch(model: transformers.PreTrainedModel) -> dict[str, torch.Tensor]:
    """Two random examples with labels, in the model's kind of input."""
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (2,), generator=generator)
    if model.main_input_name == "pixel_values":
        return {"pixel_values": torch.randn(2, 3, 8, 8, generator=generator), "labels": labels}
    ids = torch.randint(3, VOCAB - 1, (2, 6), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


@pytest.mark.parametrize("arch", ARCHS.values(), ids=ARCHS.keys())
def test_depth_is_the_configured_layer_count(arch: Arch) -> None:
    model = arch.build()
    assert model_depth(model) == arch.depth
    assert len(find_blocks(model)) == arch.depth


@pytest.mark.parametrize("arch", ARCHS.values(), ids=ARCHS.keys())
def test_groups_partition_the_names_as_the_patterns_say(arch: Arch) -> None:
    model = arch.build()
    names = [n for n, _ in model.named_parameters()]
    groups = split_parameters(model)
    assert sorted(groups.prefix + groups.head + sum(groups.blocks, ())) == sorted(names)
    assert set(groups.head) == {n for n in names if n.startswith(arch.head)}
    for index, block in enumerate(groups.blocks):
        assert set(block) == {n for n in names if block_index(arch, n) == index}
    assert groups.prefix, "the embeddings belong to the prefix"
    assert split_parameters(model) is groups


@pytest.mark.parametrize("arch", ARCHS.values(), ids=ARCHS.keys())
def test_freeze_trains_exactly_head_and_top_blocks(arch: Arch) -> None:
    model = arch.build()
    names = [n for n, _ in model.named_parameters()]
    sizes = dict((n, p.numel()) for n, p in model.named_parameters())
    for k in range(arch.depth + 1):
        count = freeze(model, k)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == expected_trainable(arch, names, k), k
        assert count == sum(sizes[n] for n in trainable) == count_parameters(model, True)
    assert count_parameters(model) == count_parameters(model, trainable_only=True)


@pytest.mark.parametrize("arch", ARCHS.values(), ids=ARCHS.keys())
def test_adamw_step_changes_exactly_the_trainable_parameters(arch: Arch) -> None:
    model = arch.build()
    model.train()
    for k in range(arch.depth + 1):
        freeze(model, k)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-2)
        model(**random_batch(model)).loss.backward()
        optimizer.step()
        for name, param in model.named_parameters():
            changed = not torch.equal(param, before[name])
            assert changed == param.requires_grad, (k, name)
            param.grad = None


@pytest.mark.parametrize("k", [-1, 4])
def test_freeze_rejects_depth_out_of_range(k: int) -> None:
    with pytest.raises(ValueError, match="0..3"):
        freeze(ARCHS["bert"].build(), k)


def test_split_runs_in_eval_mode_and_restores_training_flags() -> None:
    model = ARCHS["bert"].build()
    model.train()
    model.bert.pooler.eval()
    split_parameters(model)
    assert model.training and not model.bert.pooler.training
    assert all(m.training for m in model.bert.encoder.modules())


def save_tokenizer(folder: Path, **special: str) -> None:
    """A WordLevel tokenizer over a tiny vocabulary, saved as transformers saves one."""
    vocab = {"[PAD]": 0, "[UNK]": 1, "good": 2, "bad": 3, "movie": 4, "</s>": VOCAB - 1}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", **special
    ).save_pretrained(folder)


def test_load_model_round_trips_a_saved_bert(tmp_path: Path) -> None:
    saved = ARCHS["bert"].build()  # saved with a 3-label head, loaded with 2 labels
    saved.save_pretrained(tmp_path)
    save_tokenizer(tmp_path, pad_token="[PAD]")
    model, tokenizer = load_model(str(tmp_path), ["neg", "pos"])
    assert model.config.num_labels == 2
    assert model.config.id2label == {0: "neg", 1: "pos"}
    assert model.config.label2id == {"neg": 0, "pos": 1}
    assert model.classifier.out_features == 2
    layer = "bert.encoder.layer.2.output.dense.weight"
    assert torch.equal(model.state_dict()[layer], saved.state_dict()[layer])
    batch = tokenizer(["good movie", "bad"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 2)


def test_load_model_pads_with_eos_when_tokenizer_has_no_pad(tmp_path: Path) -> None:
    ARCHS["gpt2"].build().save_pretrained(tmp_path)
    save_tokenizer(tmp_path, eos_token="</s>")
    model, tokenizer = load_model(str(tmp_path), ["a", "b", "c"])
    assert tokenizer.pad_token == "</s>"
    assert model.config.pad_token_id == tokenizer.pad_token_id == VOCAB - 1
    batch = tokenizer(["good movie", "bad"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 3)


def test_load_model_is_quiet_and_restores_logging(tmp_path: Path, capfd) -> None:
    ARCHS["bert"].build().base_model.save_pretrained(tmp_path)  # no head: a new one is made
    save_tokenizer(tmp_path, pad_token="[PAD]")
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
