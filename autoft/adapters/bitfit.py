"""BitFit (Ben Zaken et al. 2022): the head trains in full, and in the top `trainable_layers`
blocks only the biases train (at full depth the embeddings' biases too, as freezing trains the
embeddings there); everything else stays frozen. No layer changes, so kept weights are the plain
model's own names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoft.adapters.base import Adapter
from autoft.errors import UsageError

if TYPE_CHECKING:
    from torch import nn


def is_bias(name: str) -> bool:
    """Whether a parameter name is a bias (a linear layer's, a norm's, a convolution's): its last
    part is `bias` (Swin's relative_position_bias_table is a weight)."""
    return name.rsplit(".", 1)[-1] == "bias"


class BitFitAdapter(Adapter):
    """Bias-only training of the top blocks; the head in full."""

    name = "bitfit"

    def describe(self, params, depth: int, short: bool = False) -> str:
        """'train the biases of the top 2 of 6 layers', short 'top 2/6 layers BitFit'."""
        layers = int(params["trainable_layers"])
        if short:
            return f"{super().describe(params, depth, short)} BitFit"
        if layers == 0:
            return super().describe(params, depth)
        if layers >= depth:
            return f"train the biases of all {depth} layers and the embeddings"
        return f"train the biases of the top {layers} of {depth} layers"

    def check(self, model: nn.Module, source: str) -> None:
        from autoft.model import find_blocks, split_parameters

        blocks = split_parameters(model).blocks
        bare = next((index for index, names in enumerate(blocks)
                     if not any(is_bias(name) for name in names)), None)
        if bare is not None:
            block = type(find_blocks(model)[bare]).__name__
            raise UsageError(
                f"{source}: adapter bitfit trains the biases inside the model's blocks, but "
                f"{type(model).__name__}'s blocks ({block}) have no bias; remove bitfit from "
                "adapter."
            )

    def apply(self, model: nn.Module, trainable_layers: int, params=None) -> int:
        """The head's parameters and the biases of what freezing would train: the same split into
        prefix, blocks and head, so the frozen prefix (and its cache) is a freeze trial's of the
        same depth. At full depth the embeddings' biases train too, and with them their module's
        running statistics, which a model in training mode moves anyway, are kept."""
        from autoft.model import split_parameters

        groups = split_parameters(model)
        trained = groups.trainable(trainable_layers)
        head = set(groups.head)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in head or (name in trained and is_bias(name)))
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
