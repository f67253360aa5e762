"""The frozen-prefix replay on image models (ViT, ResNet, ConvNeXt, Swin): states captured from
the frozen blocks give the model's own logits and the same training step as running it whole.
Images have one shape, so the states need no padding.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from autoft.model import find_blocks, freeze
from autoft.replay import capture, replaying
from autoft.train import set_train_mode

IMAGE = {"image_size": 8, "num_labels": 3}
MODELS = {
    "vit": ("ViT", {**IMAGE, "hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 2,
                    "intermediate_size": 24, "patch_size": 4}),
    "resnet": ("ResNet", {**IMAGE, "embedding_size": 8, "hidden_sizes": [8, 16], "depths": [2, 1],
                          "layer_type": "basic"}),
    "convnext": ("ConvNext", {**IMAGE, "num_stages": 2, "hidden_sizes": [8, 16], "depths": [2, 1],
                              "patch_size": 2}),
    "swin": ("Swin", {**IMAGE, "patch_size": 2, "embed_dim": 8, "depths": [2, 1],
                      "num_heads": [1, 2], "window_size": 2, "drop_path_rate": 0.1}),
}
DEPTH = 3


def build(name: str) -> transformers.PreTrainedModel:
    """A tiny random image classifier, the same for every call."""
    prefix, config = MODELS[name]
    torch.manual_seed(0)
    model_class = getattr(transformers, f"{prefix}ForImageClassification")
    return model_class(getattr(transformers, f"{prefix}Config")(**config))


def images(count: int = 4) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "pixel_values": torch.randn(count, 3, 8, 8, generator=generator),
        "labels": torch.randint(0, 3, (count,), generator=generator),
    }


@pytest.mark.parametrize("name", MODELS)
def test_replayed_states_give_the_model_s_own_logits(name: str) -> None:
    model = build(name).eval()
    batch = images()
    blocks = find_blocks(model)
    assert len(blocks) == DEPTH
    with torch.no_grad():
        expected = model(**batch).logits
        states = capture(model, blocks, tuple(range(1, DEPTH + 1)), batch)
        for frozen, state in states.items():
            with replaying(blocks, frozen, state):
                got = model(**batch).logits
            assert torch.allclose(got, expected, atol=1e-5), frozen
    assert [type(b) for b in find_blocks(model)] == [type(b) for b in blocks], "blocks are back"


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("trainable_layers", [0, 1, 2])
def test_a_step_from_replayed_states_equals_a_step_run_whole(
    name: str, trainable_layers: int
) -> None:
    frozen = DEPTH - trainable_layers
    batch = images()
    stepped = []
    for cached in (False, True):
        model = build(name)
        freeze(model, trainable_layers)
        blocks = find_blocks(model)
        set_train_mode(model, frozen)
        state = capture(model, blocks, (frozen,), batch)[frozen] if cached else None
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-2)
        torch.manual_seed(2)  # the same dropout and drop-path draws in the trained blocks
        if cached:
            with replaying(blocks, frozen, state):
                loss = model(**batch).loss
        else:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        stepped.append(dict(model.named_parameters()))
    whole, replayed = stepped
    trained = [n for n, p in whole.items() if p.requires_grad]
    assert trained and len(trained) < len(whole)
    for name_, param in whole.items():
        assert torch.allclose(param, replayed[name_], atol=1e-6), name_
    assert not torch.equal(whole[trained[0]], build(name).state_dict()[trained[0]])
