"""LoRA through peft: low-rank updates of the linear layers in the blocks that train, the head in
full, the embeddings frozen. Kept weights are merged per layer (base weight plus its update), so a
LoRA trial's checkpoint holds plain transformers names and loads without peft.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from autoft.adapters.base import Adapter
from autoft.errors import UsageError
from autoft.params import ParamSpec

if TYPE_CHECKING:
    import torch
    from torch import nn

ADAPTER = "default"  # peft's name for the one adapter a trial injects


def linear_layer_names(model: nn.Module, trainable_layers: int) -> list[str]:
    """Full names of the linear layers inside the top `trainable_layers` blocks, found by type
    (GPT-2 writes its linear layers as Conv1D)."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    from autoft.model import find_blocks

    blocks = list(find_blocks(model))
    top = {id(m) for block in blocks[len(blocks) - trainable_layers :] for m in block.modules()}
    return [name for name, m in model.named_modules()
            if id(m) in top and isinstance(m, (nn.Linear, Conv1D))]


def lora_layers(module: nn.Module) -> dict[str, nn.Module]:
    """The LoRA layers inside `module`, by name; none before peft is imported (freeze studies
    never import it)."""
    if "peft" not in sys.modules:
        return {}
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in module.named_modules() if isinstance(m, LoraLayer)}


class LoraAdapter(Adapter):
    """LoRA of rank `lora_rank`, scaled by `lora_alpha / lora_rank`, on the top blocks' linear
    layers (no per-family names: peft gets the exact names found by type); no dropout."""

    name = "lora"
    parameters = (ParamSpec("lora_rank", int, positive=True, default=8),
                  ParamSpec("lora_alpha", float, positive=True, default=16.0))

    def describe(self, params, depth: int, short: bool = False) -> str:
        """'train the top 4 of 6 layers through LoRA (rank 8, alpha 16)', short 'top 4/6 layers
        LoRA r8': the embeddings never train."""
        settings = self.settings(params)
        layers = super().describe(params, depth, short)
        if short:
            return f"{layers} LoRA r{settings['lora_rank']}"
        return (f"{layers.replace(' and the embeddings', '')} through LoRA (rank "
                f"{settings['lora_rank']}, alpha {settings['lora_alpha']:g})")

    def check(self, model: nn.Module, source: str) -> None:
        from autoft.model import find_blocks

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
        from transformers.pytorch_utils import Conv1D

        from autoft.model import freeze, split_parameters

        freeze(model, 0)
        head = set(split_parameters(model).head)
        targets = linear_layer_names(model, trainable_layers)
        if targets:
            from peft import LoraConfig, inject_adapter_in_model

            settings = self.settings(params.adapter_params)
            config = LoraConfig(
                r=settings["lora_rank"],
                lora_alpha=settings["lora_alpha"],
                lora_dropout=0.0,
                target_modules=targets,
                fan_in_fan_out=isinstance(model.get_submodule(targets[0]), Conv1D),
            )
            inject_adapter_in_model(config, model, adapter_name=ADAPTER)  # freezes all but LoRA
        for name, param in model.named_parameters():
            if name in head:
                param.requires_grad_(True)
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    @classmethod
    def plain_layers(cls, module: nn.Module, trained_only: bool) -> dict[str, dict]:
        """Each LoRA layer as its base layer with the update merged into the weight."""
        plain = {}
        for name, layer in lora_layers(module).items():
            if trained_only and not layer.lora_A[ADAPTER].weight.requires_grad:
                continue
            base = layer.get_base_layer()
            leaves = {"weight": base.weight} if trained_only else base.state_dict()
            plain[name] = leaves | {"weight": base.weight + layer.get_delta_weight(ADAPTER)}
        return plain

    def kept_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        from autoft.adapters import plain_state_dict

        state = plain_state_dict(model, trained_only=True)
        return {name: tensor.to("cpu", copy=True) for name, tensor in state.items()}

    def restore(self, model: nn.Module, kept: dict[str, torch.Tensor]) -> None:
        for name, layer in lora_layers(model).items():
            model.set_submodule(name, layer.get_base_layer())
        model.load_state_dict(kept, strict=False)
