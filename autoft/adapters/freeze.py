"""Freezing: the top `trainable_layers` blocks and the head train in full, the rest is frozen."""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoft.adapters.base import Adapter

if TYPE_CHECKING:
    from torch import nn


class FreezeAdapter(Adapter):
    """autoft's first method: `model.freeze` (at full depth the embeddings train too); its kept
    weights, restore and words are the interface's own."""

    name = "freeze"

    def check(self, model: nn.Module, source: str) -> None:
        """Any model whose blocks autoft finds can freeze them."""

    def apply(self, model: nn.Module, trainable_layers: int, params=None) -> int:
        from autoft.model import freeze

        return freeze(model, trainable_layers)
