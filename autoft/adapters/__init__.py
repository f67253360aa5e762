"""Adapters: how the blocks that train are trained, one module per kind behind one small
interface (autoft.adapters.base.Adapter), chosen per trial by the `adapter` parameter.

Every module here is found, and its Adapter classes registered by `name`: a new kind is one new
module (its parameters, words, check, apply and kept weights), like peft's one folder per tuner.
Importing the package imports no torch (`autoft status` words trials through it).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil

from autoft.adapters.base import Adapter
from autoft.params import COMMON_PARAMETERS, LATE_PARAMETERS, ParamSpec

__all__ = ["ADAPTERS", "ADAPTER_NAMES", "SEARCH_PARAMETERS", "Adapter", "get_adapter",
           "plain_state_dict"]


def _find_adapters() -> dict[str, type[Adapter]]:
    """Every concrete Adapter class defined in a module of this package, by its name, in the
    modules' alphabetical order."""
    kinds: dict[str, type[Adapter]] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for kind in vars(module).values():
            if (inspect.isclass(kind) and issubclass(kind, Adapter) and not inspect.isabstract(kind)
                    and kind.__module__ == module.__name__):
                if kind.name in kinds:
                    raise TypeError(f"two adapters are called {kind.name!r}: "
                                    f"{kinds[kind.name].__qualname__} and {kind.__qualname__}")
                kinds[kind.name] = kind
    return kinds


ADAPTERS: dict[str, type[Adapter]] = _find_adapters()
ADAPTER_NAMES = tuple(ADAPTERS)


def _search_parameters() -> tuple[ParamSpec, ...]:
    """Every parameter a space may name, in the order trials sample them: the common ones
    (`adapter` taking the names found here), each adapter's own, then the late common ones."""
    common = tuple(dataclasses.replace(spec, choices=ADAPTER_NAMES) if spec.name == "adapter"
                   else spec for spec in COMMON_PARAMETERS)
    declared = (*common, *(spec for kind in ADAPTERS.values() for spec in kind.parameters),
                *LATE_PARAMETERS)
    names = [spec.name for spec in declared]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise TypeError(f"search parameter {twice[0]!r} is declared twice")
    return declared


SEARCH_PARAMETERS = _search_parameters()


def get_adapter(name: str) -> Adapter:
    """The adapter called `name` (the space file checked it is one of ADAPTER_NAMES)."""
    return ADAPTERS[name]()


def plain_state_dict(module, trained_only: bool = False) -> dict:
    """`module.state_dict()` as the plain model names it, whatever adapter trains it: each layer
    a kind put in read as the plain layer it stands for (`Adapter.plain_layers`: LoRA's merged);
    with `trained_only`, only the parameters that training changes. A model no kind changed
    gives its state dict itself."""
    import torch

    with torch.no_grad():
        if trained_only:
            own = {name: p for name, p in module.named_parameters() if p.requires_grad}
        else:
            own = module.state_dict()
        layers = {name: leaves for kind in ADAPTERS.values()
                  for name, leaves in kind.plain_layers(module, trained_only).items()}
        inside = tuple(f"{name}." for name in layers)
        state = {name: tensor.detach() for name, tensor in own.items()
                 if not name.startswith(inside)}
        for name, leaves in layers.items():
            state |= {f"{name}.{leaf}": tensor.detach() for leaf, tensor in leaves.items()}
    return state
