"""The interface every adapter kind implements: how a trial's model trains, and what it keeps."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from autoft.params import TrialParams


class Adapter(ABC):
    """One way to train the top `trainable_layers` blocks and the head of a model.

    Kept weights are plain transformers parameter names and values, so a trial's checkpoint loads
    into the untouched base model whatever adapter trained it.
    """

    name: ClassVar[str]

    @abstractmethod
    def check(self, model: nn.Module, source: str) -> None:
        """Raise UsageError naming `source` (the space file) when this kind cannot train `model`."""

    @abstractmethod
    def apply(self, model: nn.Module, trainable_layers: int, params: TrialParams) -> int:
        """Make `model` (in place) train as this kind does; return its trainable elements."""

    @abstractmethod
    def kept_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """CPU copies of what training changed, as the plain model's parameter names and values."""

    @abstractmethod
    def restore(self, model: nn.Module, kept: dict[str, torch.Tensor]) -> None:
        """Turn `model` back into the plain transformers model holding the `kept` weights."""
