"""The prepared study kept on disk: what every worker needs to run trials (`Prepared`), computed
once per study by autoft.prepare, and its data saved in `studies/<name>/prepared/` as JSON.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from autoft.config import StudyConfig
from autoft.data import TargetData
from autoft.files import write_text_whole
from autoft.space import SearchSpace
from autoft.tasks import DEFAULT_TASK, Task, get_task


@dataclass(frozen=True)
class Prepared:
    """What every worker needs to run trials: prepared once per command (autoft.prepare), then
    handed to the workers that command starts; its data is kept on disk for resumes."""

    config: StudyConfig
    data: TargetData
    space: SearchSpace
    depth: int
    pad_id: int
    fingerprint: str  # the inputs' identity (prepare.data_fingerprint), recorded in the storage
    base: dict | None = None
    model_identity: str | None = None  # the model's content alone (prepare.model_identity)

    @property
    def task(self) -> Task:
        """The task kind its data was prepared for (autoft.tasks)."""
        return get_task(self.data.task)

    @property
    def direction(self) -> str:
        """Whether the search maximizes or minimizes its target metric."""
        return self.task.metric(self.data.metric).direction


def prepared_folder(config: StudyConfig) -> Path:
    return config.study_dir / "prepared"


def save_prepared(prepared: Prepared, folder: Path) -> None:
    """Keep the tokenized data and resolved space beside the storage, for workers and resumes."""
    folder.mkdir(parents=True, exist_ok=True)
    data = prepared.data
    content = {
        "task": data.task,
        "train": dataclasses.asdict(data.train),
        "validation": dataclasses.asdict(data.validation),
        "label_names": data.label_names,
        "metric": data.metric,
        "max_length": data.max_length,
        "notes": data.notes,
        "depth": prepared.depth,
        "pad_id": prepared.pad_id,
        "base": prepared.base,
    }
    write_text_whole(folder / "target.json", json.dumps(content))  # two processes may prepare it


class PreparedData(NamedTuple):
    """What `save_prepared` keeps of a Prepared: the data and what loading the model told."""

    data: TargetData
    depth: int
    pad_id: int
    base: dict | None


def load_prepared_data(folder: Path) -> PreparedData | None:
    """The tokenized data saved by `save_prepared`, or None when there is none yet; a ValueError
    when the file is damaged (truncated, edited)."""
    path = folder / "target.json"
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text())
        task = content.get("task", DEFAULT_TASK)  # prepared before tasks: classification
        split = get_task(task).split_class
        data = TargetData(
            train=split(**content["train"]),
            validation=split(**content["validation"]),
            label_names=content["label_names"],
            metric=content["metric"],
            max_length=content["max_length"],
            notes=content["notes"],
            task=task,
        )
        return PreparedData(data, content["depth"], content["pad_id"], content.get("base"))
    except (KeyError, TypeError) as error:
        raise ValueError(f"{type(error).__name__}: {error}") from None
