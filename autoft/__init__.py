"""autoft: find the best way to fine-tune a pretrained model on your data.

An Optuna study searches learning rate, batch size and freeze depth, prunes hopeless trials,
and reports the best configuration that still keeps the model's base-task skill.

`autoft.search(...)` and `autoft.load(study_dir)` (autoft.api) are imported on first use, so
`import autoft` stays instant: they bring torch and transformers.
"""

import importlib

from autoft.errors import NothingToShow, UsageError

__version__ = "0.1.0"
__all__ = ["NothingToShow", "StudyResult", "UsageError", "load", "search"]

_FROM_API = ("StudyResult", "load", "search")


def __getattr__(name: str):
    if name in _FROM_API:
        return getattr(importlib.import_module("autoft.api"), name)
    raise AttributeError(f"module 'autoft' has no attribute '{name}'")
