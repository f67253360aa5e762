"""The interface every adapter kind implements: its parameters and words, how a trial's model
trains, and what it keeps.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from autoft.params import ParamSpec, TrialParams

if TYPE_CHECKING:
    import torch
    from torch import nn


class Adapter(ABC):
    """One way to train the top `trainable_layers` blocks and the head of a model, declared in
    one module of autoft/adapters (the registry finds it there by its `name`).

    `parameters` are the kind's own search parameters (their defaults fill in where a space
    leaves them out); `describe` words a trial of this kind for the report. A kind's module
    imports torch, transformers and autoft.model inside its methods: `autoft status` and the
    report read the parameters and words without the training stack.

    Kept weights are plain transformers parameter names and values, so a trial's checkpoint loads
    into the untouched base model whatever adapter trained it.
    """

    name: ClassVar[str]
    parameters: ClassVar[tuple[ParamSpec, ...]] = ()

    def settings(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """This kind's parameters as a trial trains with them: taken from `values` (a trial's
        params, or `TrialParams.adapter_params`), each left out taking its declared default."""
        return {spec.name: values.get(spec.name, spec.default) for spec in self.parameters}

    def describe(self, params: Mapping[str, Any], depth: int, short: bool = False) -> str:
        """How a trial of this kind trains the model, in words: 'train the top 4 of 6 layers'
        ('top 4/6 layers' when `short`). A kind that trains otherwise, or has parameters of its
        own, says so."""
        layers = int(params["trainable_layers"])
        if short:
            return f"top {layers}/{depth} layers"
        if layers == 0:
            return f"train only the new head (all {depth} layers frozen)"
        if layers >= depth:
            return f"train all {depth} layers and the embeddings"
        return f"train the top {layers} of {depth} layers"

    @abstractmethod
    def check(self, model: nn.Module, source: str) -> None:
        """Raise UsageError naming `source` (the space file) when this kind cannot train `model`."""

    @abstractmethod
    def apply(self, model: nn.Module, trainable_layers: int, params: TrialParams) -> int:
        """Make `model` (in place) train as this kind does; return its trainable elements."""

    def kept_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """CPU copies of what training changed, as the plain model's names: the trained
        parameters, and the saved buffers of the modules that own them (a BatchNorm's running
        statistics move while it trains, and its weights are only right with them). Buffers the
        model does not save (Swin's relative position index) are no weights: an export would
        refuse a checkpoint holding them. A kind that puts layers of its own in overrides it."""
        kept = {}
        for prefix, module in model.named_modules():
            trained = {name: parameter for name, parameter in module.named_parameters(recurse=False)
                       if parameter.requires_grad}
            if trained:
                trained |= {name: buffer for name, buffer in module.named_buffers(recurse=False)
                            if name not in module._non_persistent_buffers_set}
                kept |= {f"{prefix}.{name}".lstrip("."): tensor.detach().to("cpu", copy=True)
                         for name, tensor in trained.items()}
        return kept

    def restore(self, model: nn.Module, kept: dict[str, torch.Tensor]) -> None:
        """Turn `model` back into the plain transformers model holding the `kept` weights."""
        model.load_state_dict(kept, strict=False)

    @classmethod
    def plain_layers(cls, module: nn.Module, trained_only: bool) -> dict[str, dict]:
        """The layers this kind put into `module`, by name, each as the plain layer it stands for
        (its parameter names and values; with `trained_only`, those training changes, and no
        entry for a layer that does not train): read by `autoft.adapters.plain_state_dict`. None
        for a kind that changes no layer."""
        return {}
