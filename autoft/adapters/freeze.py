"""Freezing: the top `trainable_layers` blocks and the head train in full, the rest is frozen."""

from __future__ import annotations

import torch
from torch import nn

from autoft.adapters.base import Adapter
from autoft.model import freeze


class FreezeAdapter(Adapter):
    """autoft's first method: `model.freeze` (at full depth the embeddings train too)."""

    name = "freeze"

    def check(self, model: nn.Module, source: str) -> None:
        """Any model whose blocks autoft finds can freeze them."""

    def apply(self, model: nn.Module, trainable_layers: int, params=None) -> int:
        return freeze(model, trainable_layers)

    def kept_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The trained parameters, and the saved buffers of the modules that own them: a
        BatchNorm's running statistics move while it trains, and its weights are only right with
        them. Buffers the model does not save (Swin's relative position index) are no weights:
        an export would refuse a checkpoint holding them."""
        kept = {}
        for prefix, module in model.named_modules():
            own = dict(module.named_parameters(recurse=False))
            if any(p.requires_grad for p in own.values()):
                own |= {name: buffer for name, buffer in module.named_buffers(recurse=False)
                        if name not in module._non_persistent_buffers_set}
                kept |= {f"{prefix}.{name}".lstrip("."): tensor.detach().to("cpu", copy=True)
                         for name, tensor in own.items()
                         if not isinstance(tensor, nn.Parameter) or tensor.requires_grad}
        return kept

    def restore(self, model: nn.Module, kept: dict[str, torch.Tensor]) -> None:
        model.load_state_dict(kept, strict=False)
