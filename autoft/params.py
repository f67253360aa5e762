"""A trial's hyperparameters: each search parameter declared once (`ParamSpec`), the common ones
here and each adapter's in its own module (autoft.adapters), and `TrialParams`, what one trial
trains with, read by the training loop and the adapters so that neither imports the other for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class ParamSpec:
    """One search parameter: what a space file may give it and how the report words it.

    `kind` is int, float or str (a word from `choices`; `adapter`'s are the adapters found).
    `default` is the value a trial takes when its space leaves the parameter out, None where a
    space must give it. A common parameter's default is written into every trial's params; an
    adapter's is what that adapter trains with, and trials' params leave it out (it applies to
    that adapter's trials alone), as they always did. `words(value, short)` says a value for the
    report (`short`: tables and log lines); a value of 0 says nothing, and a parameter without
    words is said elsewhere (the depth and learning rates open every description) or not at all.
    """

    name: str
    kind: type
    positive: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()
    words: Callable[[Any, bool], str] | None = None


def count(number: int, noun: str) -> str:
    """'1 epoch', '3 epochs'."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _head_first_words(value: int, short: bool) -> str:
    epochs = count(int(value), "epoch")
    return f"head alone {epochs} first" if short else f"the head alone for {epochs} first"


# The parameters every trial has, in the order trials sample them. Each adapter's own come after
# `adapter` (autoft.adapters.SEARCH_PARAMETERS), then LATE_PARAMETERS: head_first_epochs came
# after LoRA's in the shipped spaces, and that order is the sampling order, so the same seed
# still draws the same trials.
COMMON_PARAMETERS = (
    ParamSpec("learning_rate", float, positive=True),
    ParamSpec("head_lr_multiplier", float, positive=True),
    ParamSpec("batch_size", int, positive=True,
              words=lambda v, short: f"{'batch' if short else 'batches of'} {v}"),
    ParamSpec("trainable_layers", int),
    ParamSpec("epochs", int, positive=True, words=lambda v, short: count(int(v), "epoch")),
    ParamSpec("weight_decay", float),
    ParamSpec("warmup_ratio", float),
    ParamSpec("preserve_weight", float, default=0.0,  # 0: the preservation loss stays off
              words=lambda v, short: f"preserve ×{v:g}" if short else f"preservation loss ×{v:g}"),
    ParamSpec("adapter", str, default="freeze"),  # how the top blocks train; freeze as always
)
LATE_PARAMETERS = (
    ParamSpec("head_first_epochs", int, default=0, words=_head_first_words),  # LP-FT; 0: off
)
_DEFAULTS = {spec.name: spec.default for spec in (*COMMON_PARAMETERS, *LATE_PARAMETERS)}


@dataclass(frozen=True)
class TrialParams:
    """The hyperparameters one trial trains with: the common ones typed, one field each (their
    declarations above give the defaults), and its adapter's own in `adapter_params`, by name,
    as sampled. A parameter the space left out is absent there: the adapter reads it through
    `Adapter.settings`, which fills in the default its module declares, so each adapter
    parameter has one default, in one place.
    """

    learning_rate: float
    head_lr_multiplier: float
    batch_size: int
    trainable_layers: int
    epochs: int
    weight_decay: float
    warmup_ratio: float
    adapter: str = _DEFAULTS["adapter"]  # how the top blocks train; the head trains in full
    preserve_weight: float = _DEFAULTS["preserve_weight"]
    head_first_epochs: int = _DEFAULTS["head_first_epochs"]  # the head alone first (LP-FT)
    adapter_params: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @classmethod
    def from_sampled(cls, values: Mapping[str, Any]) -> TrialParams:
        """A trial's params from its sampled values: the common ones into their fields, every
        other one (its adapter's) into `adapter_params`."""
        common = {f.name for f in fields(cls)} - {"adapter_params"}
        return cls(**{name: value for name, value in values.items() if name in common},
                   adapter_params={name: value for name, value in values.items()
                                   if name not in common})
