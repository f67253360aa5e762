"""Tasks: what kind of fine-tuning a study does, one module per kind behind one small interface
(autoft.tasks.base.Task), chosen by `task:` / --task or detected from the data and said.
"""

from __future__ import annotations

from autoft.errors import UsageError
from autoft.tasks.base import MAXIMIZE, MINIMIZE, DataSettings, Metric, Preserving, Rows, Task
from autoft.tasks.causal_lm import CausalLM
from autoft.tasks.image_classification import ImageClassification
from autoft.tasks.multi_label import MultiLabel
from autoft.tasks.text_classification import TextClassification
from autoft.tasks.text_regression import TextRegression
from autoft.tasks.token_classification import TokenClassification

__all__ = [
    "DEFAULT_TASK",
    "MAXIMIZE",
    "MINIMIZE",
    "TASKS",
    "TASK_NAMES",
    "DataSettings",
    "Metric",
    "Preserving",
    "Rows",
    "Task",
    "detect_task",
    "get_task",
    "recorded_task",
]

# Detection asks the kinds in this order; the last is what data that says nothing plainly is.
TASKS: dict[str, type[Task]] = {
    kind.name: kind
    for kind in (ImageClassification, CausalLM, TokenClassification, MultiLabel, TextRegression,
                 TextClassification)
}
TASK_NAMES = tuple(TASKS)
DEFAULT_TASK = TextClassification.name


def get_task(name: str) -> Task:
    """The task called `name` (config validation checked it is one of TASK_NAMES)."""
    return TASKS[name]()


def recorded_task(study_attrs: dict) -> Task:
    """The task a study recorded (its user attributes; studies from before tasks: classification),
    for export, audit and report."""
    return get_task(study_attrs.get("task", DEFAULT_TASK))


def detect_task(requested: str, settings: DataSettings, model: str = "") -> tuple[Task, str | None]:
    """The task to run: `requested` unless it is 'auto'; then the first kind whose detect sees it
    plainly in the data, else text-classification. Returns it with a note for the screen when it
    was detected ("task: text-regression (the label column 'score' holds 812 distinct numbers;
    set --task to change)")."""
    if requested != "auto":
        if requested not in TASKS:
            raise UsageError(
                f"{settings.where('task')}: unknown task '{requested}'; use one of "
                f"{', '.join(TASK_NAMES)} (or auto)."
            )
        return get_task(requested), None
    for name, kind in TASKS.items():
        reason = kind.detect(settings, model)
        if reason:
            return get_task(name), f"task: {name} ({reason}; set --task to change)"
    return get_task(DEFAULT_TASK), None
