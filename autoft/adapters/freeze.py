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
        return {
            name: p.detach().to("cpu", copy=True)
            for name, p in model.named_parameters()
            if p.requires_grad
        }

    def restore(self, model: nn.Module, kept: dict[str, torch.Tensor]) -> None:
        model.load_state_dict(kept, strict=False)
