"""The study's own facts, kept in its storage beside its trials: what the report, the export and
a remote worker read of a study (its task, labels, depth, metric, settings, starts, base facts and
its recorded config).
"""

from __future__ import annotations

from pathlib import Path

import optuna

from autoft.prepared import Prepared
from autoft.presets import search_settings
from autoft.storage import INPUTS, check_same_inputs, recordable_config


def record_study_facts(study: optuna.Study, prepared: Prepared) -> None:
    """What the report, the export and remote workers need, kept in the storage itself; a
    UsageError if the study's trials trained on other inputs (a second search that prepared
    other data at the same moment: prepare_study refuses the ordinary case earlier)."""
    config, data = prepared.config, prepared.data
    if INPUTS in study.user_attrs:
        check_same_inputs(config, {"fingerprint": study.user_attrs[INPUTS],
                                   "description": study.user_attrs.get("data_description")},
                          prepared.fingerprint)
    facts = {
        INPUTS: prepared.fingerprint,
        "model": config.model,
        "model_identity": prepared.model_identity,
        "task": data.task,
        "label_names": data.label_names,
        "depth": prepared.depth,
        "metric": data.metric,
        "notes": data.notes,
        "trust_remote_code": config.trust_remote_code,
        "default_params": prepared.space.default_params(),
        "starts": prepared.space.start_params(),
        "configs": prepared.space.configs(),  # None unless the space holds few
        "settings": search_settings(config),
        "base": prepared.base,
        "train_examples": len(data.train),
        "data_description": (
            f"{Path(config.train).name} ({len(data.train)} training and "
            f"{len(data.validation)} validation examples, {data.task}"
            + (f", labels {', '.join(data.label_names)})" if data.label_names else ")")
        ),
        "config": recordable_config(config),  # last: a waiting worker joins once it is there
    }
    for key, value in facts.items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)
