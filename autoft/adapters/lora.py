"""LoRA through peft: low-rank updates of the linear layers in the blocks that train, the head in
full, the embeddings frozen. Kept weights are merged per layer (base weight plus its update), so a
LoRA trial's checkpoint holds plain transformers names and loads without peft.
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from autoft.adapters.base import Adapter
from autoft.errors import UsageError
from autoft.model import find_blocks, freeze, split_parameters

ADAPTER = "default"  # peft's name for the one adapter a trial injects
LINEAR = (nn.Linear, Conv1D)  # GPT-2 writes its linear layers as Conv1D


def linear_layer_names(model: nn.Module, trainable_layers: int) -> list[str]:
    """Full names of the linear layers inside the top `trainable_layers` blocks, found by type."""
    blocks = list(find_blocks(model))
    top = {id(m) for block in blocks[len(blocks) - trainable_layers :] for m in block.modules()}
    return [name for name, m in model.named_modules() if id(m) in top and isinstance(m, LINEAR)]


def lora_layers(module: nn.Module) -> dict[str, nn.Module]:
    """The LoRA layers inside `module`, by name; none before peft is imported (freeze studies
    never import it)."""
    if "peft" not in sys.modules:
        return {}
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in module.named_modules() if isinstance(m, LoraLayer)}


@torch.no_grad()
def plain_state_dict(module: nn.Module, trained_only: bool = False) -> dict[str, torch.Tensor]:
    """`module.state_dict()` as the plain model names it, each LoRA layer merged into its base
    layer's weight; with `trained_only`, only the parameters that training changes.

    Any trial's model can be read this way: without LoRA layers it is the state dict itself.
    """
    layers = lora_layers(module)
    inside = tuple(f"{name}." for name in layers)
    if trained_only:
        own = {n: p for n, p in module.named_parameters() if p.requires_grad}
    else:
        own = module.state_dict()
    state = {n: t.detach() for n, t in own.items() if not n.startswith(inside)}
    for name, layer in layers.items():
        trained = layer.lora_A[ADAPTER].weight.requires_grad
        if trained_only and not trained:
            continue
        base = layer.get_base_layer()
        kept = {"weight": base.weight} if trained_only else base.state_dict()
        for leaf, tensor in kept.items():
            state[f"{name}.{leaf}"] = tensor.detach()
        state[f"{name}.weight"] = base.weight + layer.get_delta_weight(ADAPTER)
    return state


class LoraAdapter(Adapter):
    """LoRA of rank `lora_rank`, scaled by `lora_alpha / lora_rank`, on the top blocks' linear
    layers (no per-family names: peft gets the exact names found by type); no dropout."""

    name = "lora"

    def check(self, model: nn.Module, source: str) -> None:
        if not linear_layer_names(model, len(find_blocks(model))):
            block = type(find_blocks(model)[0]).__name__
            raise UsageError(
                f"{source}: adapter lora adapts the linear layers inside the model's blocks, but "
                f"{type(model).__name__}'s blocks ({block}) have no linear layer; remove lora "
                "from adapter."
            )

    def apply(self, model: nn.Module, trainable_layers: int, params) -> int:
        """The head trains in full; the top blocks train through LoRA matrices only.

        The parameter groups are split before peft changes any name, so the frozen prefix and its
        cache key are exactly those of a freeze trial of the same depth.
        """
        freeze(model, 0)
        head = set(split_parameters(model).head)
        targets = linear_layer_names(model, trainable_layers)
        if targets:
            from peft import LoraConfig, inject_adapter_in_model

            config = LoraConfig(
                r=params.lora_rank,
                lora_alpha=params.lora_alpha,
                lora_dropout=0.0,
                target_modules=targets,
                fan_in_fan_out=isinstance(model.get_submodule(targets[0]), Conv1D),
            )
            inject_adapter_in_model(config, model, adapter_name=ADAPTER)  # freezes all but LoRA
        for name, param in model.named_parameters():
            if name in head:
                param.requires_grad_(True)
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    def kept_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        state = plain_state_dict(model, trained_only=True)
        return {name: tensor.to("cpu", copy=True) for name, tensor in state.items()}

    def restore(self, model: nn.Module, kept: dict[str, torch.Tensor]) -> None:
        for name, layer in lora_layers(model).items():
            model.set_submodule(name, layer.get_base_layer())
        model.load_state_dict(kept, strict=False)
