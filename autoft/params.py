"""The hyperparameters one trial trains with, apart from the loop that trains with them: the
adapters read them too, and autoft.train imports the adapters.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrialParams:
    """The hyperparameters one trial trains with."""

    learning_rate: float
    head_lr_multiplier: float
    batch_size: int
    trainable_layers: int
    epochs: int
    weight_decay: float
    warmup_ratio: float
    adapter: str = "freeze"  # how the top blocks train (autoft.adapters); the head trains in full
    lora_rank: int = 8
    lora_alpha: float = 16.0
    preserve_weight: float = 0.0
    head_first_epochs: int = 0  # epochs the head trains alone first (LP-FT); 0 = off
