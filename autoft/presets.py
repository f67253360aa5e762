"""Presets for beginners: one word (quick, default, thorough) that picks the search space, the
trial budget and the pruner; any setting given in the study file or as a flag wins over it.
"""

from __future__ import annotations

from typing import Any

from autoft.errors import UsageError

PRESETS: dict[str, dict[str, Any]] = {
    # About 8 trials of 2 epochs: a first answer within the hour on a CPU. Pruning starts after
    # 2 complete trials, because with 8 in all a later start would never prune.
    "quick": {
        "space": "quick",
        "n_trials": 8,
        "pruner_startup_trials": 2,
        "pruner_warmup_steps": 0,
    },
    # An overnight study on one GPU.
    "default": {
        "space": "default",
        "n_trials": 20,
        "pruner_startup_trials": 3,
        "pruner_warmup_steps": 0,
    },
    # A wide space for many GPUs or a weekend; no pruning on the first epoch, whose scores
    # still depend mostly on the learning-rate warmup.
    "thorough": {
        "space": "thorough",
        "n_trials": 60,
        "pruner_startup_trials": 8,
        "pruner_warmup_steps": 1,
    },
}


def apply_preset(
    values: dict[str, Any], origins: dict[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Fill the settings the user left out from the preset named in `values`, if any."""
    name = values.get("preset")
    if name is None:
        return values, origins
    if name not in PRESETS:
        where = origins.get("preset", "--preset")
        raise UsageError(
            f"{where}: unknown preset '{name}'; use one of {', '.join(PRESETS)}."
        )
    chosen = {key: value for key, value in PRESETS[name].items() if key not in values}
    return {**values, **chosen}, {**origins, **{key: f"preset '{name}'" for key in chosen}}



def search_settings(config) -> dict[str, Any]:
    """The budget and pruning a study runs with (kept in the storage for the report)."""
    return {
        "preset": config.preset,
        "space": config.space,
        "n_trials": config.n_trials,
        "pruner": config.pruner,
        "pruner_startup_trials": config.pruner_startup,
        "pruner_warmup_steps": config.pruner_warmup_steps,
    }
