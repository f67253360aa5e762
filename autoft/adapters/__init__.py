"""Adapters: how the blocks that train are trained, one module per kind behind one small
interface (autoft.adapters.base.Adapter), chosen per trial by the `adapter` parameter.

freeze trains the top blocks in full; lora trains low-rank updates of their linear layers.
"""

from __future__ import annotations

from autoft.adapters.base import Adapter
from autoft.adapters.freeze import FreezeAdapter
from autoft.adapters.lora import LoraAdapter, plain_state_dict

__all__ = ["ADAPTERS", "ADAPTER_NAMES", "Adapter", "get_adapter", "plain_state_dict"]

ADAPTERS: dict[str, type[Adapter]] = {kind.name: kind for kind in (FreezeAdapter, LoraAdapter)}
ADAPTER_NAMES = tuple(ADAPTERS)


def get_adapter(name: str) -> Adapter:
    """The adapter called `name` (the space file checked it is one of ADAPTER_NAMES)."""
    return ADAPTERS[name]()
