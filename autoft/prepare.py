"""Preparing a study once: read and tokenize the data, load the model to learn its depth, resolve
the search space, and keep it all in the study folder so workers and resumes reuse it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from autoft.adapters import get_adapter
from autoft.config import StudyConfig
from autoft.data import load_target, tokenize_target
from autoft.errors import UsageError
from autoft.model import load_model, model_depth
from autoft.space import load_space
from autoft.study import Prepared, load_prepared_data, save_prepared

DATA_FIELDS = (
    "model",
    "train",
    "validation",
    "val_fraction",
    "text_column",
    "text_pair_column",
    "label_column",
    "metric",
    "max_length",
    "max_train_samples",
    "max_val_samples",
    "seed",
)


def _file_identity(value: str | None) -> object:
    """A path's size and modification time, so an edited data file is noticed."""
    if value is None or not Path(value).exists():
        return value
    stat = Path(value).stat()
    return [str(Path(value).resolve()), stat.st_size, int(stat.st_mtime)]


def data_fingerprint(config: StudyConfig) -> str:
    """Identifies the prepared data: the settings that shape it and the files it came from."""
    identity = {name: getattr(config, name) for name in DATA_FIELDS}
    for name in ("model", "train", "validation"):
        identity[name] = _file_identity(getattr(config, name))
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def prepared_folder(config: StudyConfig) -> Path:
    return config.study_dir / "prepared"


def measure_base_skill(config: StudyConfig, model, tokenizer, echo) -> dict:
    """The untouched model's base-task score, measured once and kept with the study."""
    import torch

    from autoft.data import model_length_limit
    from autoft.guard import BASE_MAX_LENGTH, build_task, measure_base

    source = Path(config.base.data).name
    echo(f"Measuring the base model's {config.base.kind} skill on {source} ...")
    limit = min(BASE_MAX_LENGTH, model_length_limit(tokenizer, model.config))
    task = build_task(config, tokenizer, limit)
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    base = measure_base(task, model.to(device), config, device) | {"max_length": limit}
    echo(f"  base {task.name}: {base['score']:.4f} ({task.measures})")
    split = task.split_
    echo(f"  {split.note}" if split.note else
         f"  held back {len(split.audit)} of {split.total} {split.unit} for the final audit")
    return base


def held_without_preservation(config: StudyConfig, space, texts: list[str], echo):
    """The space, with preserve_weight held at 0 where there is nothing to preserve (`texts`, from
    forgetting.preservation_texts, is empty): no base task, or base data the check scores whole
    and no base.preserve_data."""
    weight = next(p for p in space.parameters if p.name == "preserve_weight")
    if texts or weight.value == 0:
        return space
    reason = ("there is no base task" if config.base is None else
              f"every text of {Path(config.base.data).name} is scored by the check and no "
              f"base.preserve_data is set")
    echo(f"  preserve_weight held at 0: {reason}.")
    return space.fix("preserve_weight", 0.0)


def prepare_study(config: StudyConfig, echo=print) -> Prepared:
    """Check everything and prepare the data, or reuse what an earlier run of this study prepared.

    Every input problem surfaces here, as a UsageError, before any trial runs.
    """
    from autoft.audit import BaseSplit
    from autoft.forgetting import preservation_texts

    space = load_space(config.space)
    if config.base and config.base.preserve_data:
        preservation_texts(config.base, None)  # a bad file stops here, before anything loads
    folder = prepared_folder(config)
    fingerprint = data_fingerprint(config)
    saved = load_prepared_data(folder)
    stored_fingerprint = (folder / "fingerprint").read_text() if saved else None
    if saved and stored_fingerprint != fingerprint:
        raise UsageError(
            f"Study '{config.name}' in {config.study_dir} was prepared from other data or model "
            f"settings; choose a new --study name, or delete that folder to start over."
        )
    if saved:
        data, depth, pad_id, base = saved
        echo(f"Reusing the data prepared earlier in {folder}.")
        if config.text_pair_column and data.train.token_type_ids is None:
            echo("  note: it was prepared before autoft kept segment ids, so its text pairs train "
                 "without them, as its earlier trials did; start a new study to use them.")
    else:
        echo(f"Reading {config.train} ...")
        table = load_target(config)
        label_names = sorted(set(table[1]))
        echo(f"Loading model {config.model} ...")
        model, tokenizer = load_model(config.model, label_names, config.trust_remote_code)
        depth = model_depth(model)
        data = tokenize_target(config, table, tokenizer, model.config)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        base = measure_base_skill(config, model, tokenizer, echo) if config.base else None
    resolved = space.resolve(depth)
    needs_check = [n for n in resolved.values_of("adapter") if n != "freeze"]
    if needs_check:
        if saved:  # resumed: the model is loaded only to check the adapters it may get
            model, _ = load_model(config.model, data.label_names, config.trust_remote_code)
        for name in needs_check:
            get_adapter(name).check(model, resolved.source)
    preserved = (preservation_texts(config.base, BaseSplit.from_dict(base["split"]))
                 if config.base and base else [])
    resolved = held_without_preservation(config, resolved, preserved, echo)
    prepared = Prepared(config=config, data=data, space=resolved, depth=depth, pad_id=pad_id,
                        base=base)
    if not saved:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "fingerprint").write_text(fingerprint)
        save_prepared(prepared, folder)
    for note in data.notes:
        echo(f"  chose {note}")
    return prepared
