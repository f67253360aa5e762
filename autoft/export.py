"""Exporting a trial's model (or the study's winning soup) in the Hugging Face format, with its
tokenizer, label names and a model card, rebuilt from the base model plus the parameters that
trial trained (or the soup averaged), on the model folder the study trained on. An export
replaces only an earlier export of its study (its marker file says so) unless asked to, never a
study's folder or the study's inputs, and appears whole or not at all.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import torch
from huggingface_hub import ModelCard, ModelCardData
from optuna.trial import TrialState
from safetensors.torch import load_file

from autoft.describe import (
    PER_CLASS_COLUMNS,
    describe_details,
    describe_numbers,
    describe_params,
    metric_words,
    per_class_rows,
    percent,
)
from autoft.errors import UsageError
from autoft.files import replace_folder, unwritable_folder
from autoft.model import quiet_transformers
from autoft.precision import set_precision
from autoft.prepare import load_hashes, model_identity
from autoft.prepared import load_prepared_data
from autoft.record import TrialRecord
from autoft.study_folder import IDENTITY
from autoft.tasks import Task, recorded_task
from autoft.train import predict
from autoft.trials import best_feasible, full_params, winning_soup

MARKER = ".autoft-export.json"  # hidden: a study prepared from an export does not hash it
# The Hub's pipeline for a task kind's model (a regression head is a sequence classifier too).
PIPELINE_TAGS = {"text-classification": "text-classification",
                 "text-regression": "text-classification",
                 "image-classification": "image-classification",
                 "token-classification": "token-classification",
                 "causal-lm": "text-generation"}
HUB_NAME = re.compile(r"[\w.-]+(/[\w.-]+)?")
BEST_MODEL = "best_model"  # the study's answer, in its own folder: the one export written there
# What marks a folder as a study's: its SQLite storage, its prepared data, its trials' weights.
# What makes a folder a study's: its identity (autoft.study_folder), or, made before that, its
# SQLite storage or prepared data.
STUDY_MARKS = (IDENTITY, "study.db", "prepared/fingerprint")
EXPORTABLE = (TrialState.COMPLETE, TrialState.PRUNED)  # a trial that ended and kept weights


def load_checkpoint_model(task: Task, model_source: str, label_names: list[str],
                          checkpoint: str, trust_remote_code: bool = False):
    """The base model with the task's head and the parameters in `checkpoint` (a trial's or
    the soup's trainable.safetensors: only what was trained) put back; returns model and
    processor."""
    model, processor = task.load_model(model_source, label_names, trust_remote_code)
    trained = load_file(checkpoint)
    missing = set(trained) - set(model.state_dict())  # parameters, and BatchNorm statistics
    if missing:
        raise UsageError(
            f"{checkpoint} holds parameters the model lacks ({sorted(missing)[0]}); "
            f"was the study's model changed?"
        )
    model.load_state_dict(trained, strict=False)
    return model, processor


def load_trial_model(
    task: Task,
    model_source: str,
    label_names: list[str],
    trial: optuna.trial.FrozenTrial,
    trust_remote_code: bool = False,
):
    """The base model with the task's head and the trial's trained parameters put back; returns
    model and processor."""
    checkpoint = TrialRecord.of(trial).checkpoint
    if not checkpoint or not Path(checkpoint).is_file():
        raise UsageError(
            f"Trial {trial.number} has no saved weights on this machine ({checkpoint or 'none'}); "
            f"export a finished trial, on the machine whose worker ran it."
        )
    return load_checkpoint_model(task, model_source, label_names, checkpoint, trust_remote_code)


def load_soup_model(task: Task, attrs: dict, soup: dict):
    """The base model with the soup's averaged parameters put back; returns model and
    processor."""
    checkpoint = soup.get("checkpoint")
    if not checkpoint or not Path(checkpoint).is_file():
        raise UsageError(
            f"The soup of trials {describe_numbers(soup['members'])} has no saved weights on "
            f"this machine ({checkpoint or 'none'}); export it on the machine that ran the "
            f"search, or pass --trial N."
        )
    return load_checkpoint_model(task, attrs["model"], attrs["label_names"], checkpoint,
                                 attrs.get("trust_remote_code", False))


def check_base_model(attrs: dict, study_dir: Path | None, trust_remote_code: bool) -> None:
    """Before a command builds on the study's model: its folder must hold what the trials
    trained on (other weights under a trial's top layers are another model, other code is code
    nobody agreed to run), and a model with its own Python code runs only where the user allowed
    it to this command too, not only to the search that made the study."""
    model, recorded = attrs.get("model"), attrs.get("model_identity")
    known = load_hashes(Path(study_dir) / "prepared") if study_dir is not None else {}
    if recorded is not None and model_identity(model, known) != recorded:
        raise UsageError(
            f"The model folder {model} is not the one study '{attrs['config']['name']}' trained "
            f"on (its files changed since, or it is gone), so the trials' weights would go into "
            f"another model; put back the folder the study was made with."
        )
    if attrs.get("trust_remote_code") and not trust_remote_code:
        raise UsageError(
            f"Study '{attrs['config']['name']}' was made with --trust-remote-code: its model "
            f"{model} runs its own Python code, which autoft runs only when this command is "
            f"given --trust-remote-code too."
        )


def score_line(trial: optuna.trial.FrozenTrial, metric: str) -> str:
    """How good the saved weights are, and whether the trial ran to its end."""
    record = TrialRecord.of(trial)
    evaluations = record.evaluations
    best = record.best_value
    at = f" (after evaluation {record.best_step})" if best is not None else ""
    if trial.state == TrialState.COMPLETE and trial.value is not None:
        return f"Validation {metric}: {trial.value:.4f}{at}"
    if best is None:
        return f"Validation {metric}: none; the trial stopped before its first evaluation"
    stopped = "pruned" if trial.state == TrialState.PRUNED else trial.state.name.lower()
    count = len(evaluations)
    return (
        f"Validation {metric}: {best:.4f}{at}; the trial was {stopped} after {count} "
        f"evaluation{'s' if count != 1 else ''}, so these are the weights it had reached"
    )


def quick_retention(record: TrialRecord) -> float | None:
    """The quick check of the kept weights as trained (one check per evaluation, in order), the
    one retention a trial pruned before its full check measured."""
    if record.mix not in (None, 1.0) or record.mixed_from not in (None, "kept"):
        return None
    step, checks = record.best_step, record.quick_retention
    return checks[step - 1] if step and step <= len(checks) else None


def retention_line(trial: optuna.trial.FrozenTrial, base: dict | None) -> str:
    record = TrialRecord.of(trial)
    retention = record.retention
    quick = quick_retention(record)
    if retention is None and quick is not None:
        bar = f"; the study's bar was {percent(base.get('min_retention', 0))}" if base else ""
        return (f"Retention of base-task skill: {quick:.1%} on the quick check of these "
                f"weights (the trial stopped before its full check{bar})")
    if retention is None:
        return "Retention: not measured (the study had no base task, or the check did not run)"
    if not base:
        return f"Retention of base-task skill: {retention:.1%}"
    return (
        f"Retention of the base model's {base.get('kind')} skill: {retention:.1%} "
        f"({base.get('name')} "
        f"{record.base_score if record.base_score is not None else float('nan'):.4f} against "
        f"{base.get('score', float('nan')):.4f} before tuning; the study's bar was "
        f"{percent(base.get('min_retention', 0))})"
    )


def tuned_settings(task: Task, attrs: dict, model, study_dir: Path | None) -> dict:
    """What the task tunes on validation for the exported model (multi-label: its decision
    threshold), from the model's predictions on the study's prepared validation split, computed
    as the trials computed them; nothing for a kind that tunes nothing."""
    if not task.tunes_on_validation:
        return {}
    saved = load_prepared_data(Path(study_dir) / "prepared") if study_dir is not None else None
    if saved is None:
        raise UsageError(
            f"A {task.name} export tunes its decision threshold on the study's validation data, "
            f"which is not on this machine ({study_dir or 'no study folder given'}); export on "
            f"the machine that prepared the study, with its --studies-dir."
        )
    data, _, pad_id, _ = saved
    set_precision(attrs.get("config", {}).get("precision", "auto"))  # as the trials scored
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    predictions = predict(model.to(device), data, pad_id, device)
    model.to("cpu")
    return task.tuned_on_validation(data.metric, data.validation.labels, predictions,
                                    data.label_names)


def details_lines(trial: optuna.trial.FrozenTrial) -> list[str]:
    """The kept weights' validation precision and recall, where the trial recorded them."""
    words = describe_details(TrialRecord.of(trial).score_details)
    return [f"- Validation {words}"] if words else []


def per_class_table(details: dict | None) -> list[str]:
    """A Markdown table of each class's validation precision, recall, F1 and support, up to
    describe.MAX_CLASSES_SHOWN classes; [] otherwise."""
    rows = per_class_rows(details)
    if not rows:
        return []
    return ["", "## Per class (validation)", "", "| " + " | ".join(PER_CLASS_COLUMNS) + " |",
            "|" + "---|" * len(PER_CLASS_COLUMNS), *["| " + " | ".join(row) + " |" for row in rows]]


def model_card(study: optuna.Study, trial: optuna.trial.FrozenTrial, tuned: dict) -> str:
    """A README.md that says where the model came from, how it was trained and how good it is."""
    attrs = study.user_attrs
    params = full_params(trial)
    metric = metric_words(attrs["metric"], study.direction.name.lower())
    lines = [
        f"# autoft study '{study.study_name}', trial {trial.number}",
        "",
        f"Fine-tuned by autoft from {attrs.get('model')} on {attrs.get('data_description')}.",
        "",
        f"- Task: {recorded_task(attrs).name}",
        *recorded_task(attrs).card_lines(attrs["label_names"]),
        *(recorded_task(attrs).tuned_lines(tuned, attrs["label_names"]) if tuned else []),
        f"- Config: {describe_params(params, attrs['depth'])}",
        f"- {score_line(trial, metric)}",
        *details_lines(trial),
        f"- {retention_line(trial, attrs.get('base'))}",
        "",
        "## Parameters",
        "",
        "| parameter | value |",
        "|---|---|",
    ]
    lines += [f"| {name} | {value} |" for name, value in sorted(params.items())]
    lines += per_class_table(TrialRecord.of(trial).score_details)
    lines += [
        "",
        f"Load it with `{recorded_task(attrs).auto_class}.from_pretrained(this_folder)`.",
        "",
    ]
    return "\n".join(lines)


def soup_card(study: optuna.Study, soup: dict, tuned: dict) -> str:
    """A README.md for the soup: its members with their configs, its score against the best
    trial's and its retention."""
    attrs = study.user_attrs
    metric = metric_words(attrs["metric"], study.direction.name.lower())
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    members = describe_numbers(soup["members"])
    kept = soup.get("retention")
    lines = [
        f"# autoft study '{study.study_name}', a soup of trials {members}",
        "",
        f"Fine-tuned by autoft from {attrs.get('model')} on {attrs.get('data_description')}: "
        f"the weights of trials {members} averaged (a greedy soup: each joined only while it "
        f"improved validation and kept the forgetting bar).",
        "",
        f"- Task: {recorded_task(attrs).name}",
        *recorded_task(attrs).card_lines(attrs["label_names"]),
        *(recorded_task(attrs).tuned_lines(tuned, attrs["label_names"]) if tuned else []),
        *[f"- Trial {n}: {describe_params(full_params(trials[n]), attrs['depth'])} "
          f"(validation {trials[n].value:.4f})" for n in soup["members"]],
        f"- Validation {metric}: {soup['value']:.4f} (the best single trial, "
        f"{soup['best_trial']}, scored {soup['best_value']:.4f})",
        f"- Retention of base-task skill: {kept:.1%} (the study's bar was "
        f"{percent(attrs['base']['min_retention'])})" if kept is not None else
        "- Retention: not measured (the study had no base task)",
        "",
        f"Load it with `{recorded_task(attrs).auto_class}.from_pretrained(this_folder)`.",
        "",
    ]
    return "\n".join(lines)


def hub_name(model: str | None) -> str | None:
    """The base model's Hub name (`owner/name`), or None for a local folder or a packaged one."""
    if not model or Path(model).exists() or not HUB_NAME.fullmatch(model):
        return None
    return model


def card_file(study: optuna.Study, text: str) -> ModelCard:
    """The model card as the Hub reads it: `text` under metadata (library, pipeline, tags, and
    the base model where it is a Hub name), through huggingface_hub's ModelCard."""
    attrs = study.user_attrs
    task = recorded_task(attrs)
    data = ModelCardData(library_name="transformers", pipeline_tag=PIPELINE_TAGS.get(task.name),
                         tags=["autoft", task.name], base_model=hub_name(attrs.get("model")))
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{text}")


def answer(study: optuna.Study, trial_number: int | None = None
           ) -> tuple[dict | None, optuna.trial.FrozenTrial | None]:
    """What an export saves, as (soup, trial), one of them None: the trial numbered, or
    without a number the study's answer: its soup when one won (autoft.soup), else its best
    trial. A UsageError when there is none."""
    if trial_number is None:
        soup = winning_soup(study)
        if soup is not None:
            return soup, None
        best = best_feasible(study)
        if best is None:
            raise UsageError(
                f"Study '{study.study_name}' has no best trial yet; "
                f"pass --trial N or let the study finish a trial first."
            )
        return None, best
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if trial_number not in trials:
        raise UsageError(
            f"Study '{study.study_name}' has no trial {trial_number}; "
            f"`autoft status` lists its trials."
        )
    trial = trials[trial_number]
    if trial.state not in EXPORTABLE or TrialRecord.of(trial).checkpoint is None:
        raise UsageError(f"Trial {trial_number} {no_weights(trial)}; "
                         f"{exportable_words(trials.values())}")
    return None, trial


def no_weights(trial: optuna.trial.FrozenTrial) -> str:
    """Why a trial has no weights to export, in words."""
    record = TrialRecord.of(trial)
    if trial.state in (TrialState.RUNNING, TrialState.WAITING):
        return "is still running, so it has no final weights yet"
    if trial.state == TrialState.FAIL and record.fail_reason == "interrupted":
        return ("was interrupted (its config runs again when the study resumes), so it has no "
                "weights to export")
    if trial.state == TrialState.FAIL:
        return (f"failed: {record.fail_reason or 'no reason recorded'}, so it has no weights "
                f"to export")
    return "stopped before its first evaluation, so it has no weights to export"


def exportable_words(trials) -> str:
    """Which trials an export can save, as the end of a sentence."""
    numbers = sorted(t.number for t in trials
                     if t.state in EXPORTABLE and TrialRecord.of(t).checkpoint is not None)
    if not numbers:
        return "no trial of the study has finished with weights yet."
    return f"trial{'s' if len(numbers) > 1 else ''} {describe_numbers(numbers)} can be exported."


def load_answer_model(attrs: dict, soup: dict | None, trial: optuna.trial.FrozenTrial | None):
    """The model and processor of `answer`'s soup or trial, from the study's user attributes."""
    task = recorded_task(attrs)
    if soup is not None:
        return load_soup_model(task, attrs, soup)
    return load_trial_model(task, attrs["model"], attrs["label_names"], trial,
                            attrs.get("trust_remote_code", False))


def export_marker(study_name: str, soup: dict | None,
                  trial: optuna.trial.FrozenTrial | None) -> dict:
    """What an export's marker file says it holds: its study and trial, or the soup's members."""
    if soup is not None:
        return {"study": study_name, "trial": None, "soup": soup["members"]}
    return {"study": study_name, "trial": trial.number}


def read_marker(folder: Path) -> dict | None:
    """The marker of an export in `folder` (export_marker), or None where there is none."""
    try:
        marker = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def holds_answer(study: optuna.Study, folder: Path) -> bool:
    """Whether `folder` holds a whole export of the study's answer (its marker says which)."""
    soup, trial = answer(study)
    return read_marker(folder) == export_marker(study.study_name, soup, trial)


def export_trial(study: optuna.Study, trial_number: int | None, out_dir: Path,
                 study_dir: Path | None = None, overwrite: bool = False,
                 trust_remote_code: bool = False) -> Path:
    """Save a trial's model to out_dir, ready for from_pretrained; without a trial number the
    study's answer (see `answer`).

    out_dir may be new, empty or an earlier export of this study; any other folder only with
    `overwrite`, and never a study's folder or one inside it, nor one that holds the study's
    model, data or space.
    """
    soup, trial = answer(study, trial_number)
    check_out_dir(study, Path(out_dir), study_dir, overwrite)
    return save_model(study, soup, trial, Path(out_dir), study_dir, trust_remote_code)


def save_best_model(study: optuna.Study, study_dir: Path, trust_remote_code: bool) -> Path:
    """The study's answer in its own folder's best_model/, replaced whole: the one export that
    writes inside a study folder (the search's, and the report's when it is missing)."""
    soup, trial = answer(study)
    return save_model(study, soup, trial, Path(study_dir) / BEST_MODEL, study_dir,
                      trust_remote_code)


def save_model(study: optuna.Study, soup: dict | None, trial: optuna.trial.FrozenTrial | None,
               out_dir: Path, study_dir: Path | None, trust_remote_code: bool) -> Path:
    """Build `answer`'s soup or trial on the study's unchanged model and write it, with its card
    and marker, into out_dir whole."""
    attrs = study.user_attrs
    check_base_model(attrs, study_dir, trust_remote_code)
    task = recorded_task(attrs)
    model, processor = load_answer_model(attrs, soup, trial)
    tuned = tuned_settings(task, attrs, model, study_dir)
    model.config.update(tuned)  # saved in config.json, read back by from_pretrained
    card = card_file(study, soup_card(study, soup, tuned) if soup is not None else
                     model_card(study, trial, tuned))
    marker = export_marker(study.study_name, soup, trial)

    def write(folder: Path) -> None:
        with quiet_transformers():  # no 'Writing model shards' bar amid the study's own output
            model.save_pretrained(folder)
        task.save_processor(processor, folder)
        card.save(folder / "README.md")
        (folder / MARKER).write_text(json.dumps(marker))  # last: the export is whole

    replace_folder(out_dir, write)
    return out_dir


def study_inputs(study: optuna.Study, study_dir: Path | None) -> list[tuple[Path, str, bool]]:
    """The folders an export must never write over or contain, each with what it is and whether
    the folder is itself one (a model folder, a folder of images, the study folder: nothing may
    go inside it) or holds a file (a data or space file's folder: an export may go below it)."""
    config = study.user_attrs.get("config") or {}
    base = config.get("base") or {}
    named = [(study.user_attrs.get("model"), "model"), (config.get("train"), "training data"),
             (config.get("space"), "search space"),
             (config.get("validation"), "validation data"), (base.get("data"), "base-task data"),
             (base.get("ratings"), "base-task ratings"),
             (base.get("preserve_data"), "preservation data")]
    inputs = []
    for value, what in named:
        if value and Path(value).exists():
            path = Path(value).resolve()
            whole = path.is_dir()
            inputs.append((path if whole else path.parent, f"the study's {what}", whole))
    return inputs


def is_study_folder(folder: Path) -> bool:
    """Whether `folder` is a study's (any study's, of any storage), by what a study writes."""
    return any((folder / mark).exists() for mark in STUDY_MARKS)


def study_folder_near(out: Path, study_dir: Path | None) -> Path | None:
    """A study folder (this study's, or any other by `is_study_folder`) that `out` (resolved)
    is, lies in or holds; None where there is none."""
    own = Path(study_dir).resolve() if study_dir is not None else None
    for folder in (out, *out.parents):
        if folder == own or is_study_folder(folder):
            return folder
    if own is not None and own.is_relative_to(out):
        return own
    for mark in STUDY_MARKS if out.is_dir() else ():
        found = next(out.rglob(mark), None)
        if found is not None:
            return found.parents[mark.count("/")]
    return None


def check_out_dir(study: optuna.Study, out_dir: Path, study_dir: Path | None,
                  overwrite: bool) -> None:
    """Refuse a folder the export would mix into or write over (see export_trial)."""
    out = out_dir.resolve()
    for folder, what, whole in study_inputs(study, study_dir):
        holds = folder.is_relative_to(out)
        if holds or (whole and out.is_relative_to(folder)):
            raise UsageError(
                f"Cannot export into {out_dir}: it {'holds' if holds else 'lies in'} {what} "
                f"({folder}); choose another folder to export into."
            )
    folder = study_folder_near(out, study_dir)
    if folder is not None:
        where = "is" if folder == out else "lies in" if out.is_relative_to(folder) else "holds"
        whose = ("the study's own folder" if study_dir is not None
                 and folder == Path(study_dir).resolve() else "study folder")
        raise UsageError(
            f"Cannot export into {out_dir}: it {where} {whose} {folder}, whose storage, trials' "
            f"weights and logs an export would mix into or delete, even with --overwrite; "
            f"choose a folder outside every study folder."
        )
    if out.exists() and not out.is_dir():
        raise UsageError(f"Cannot export into {out_dir}: it is a file; choose a folder.")
    folder = unwritable_folder(out.parent)  # the export is written beside out, then swapped in
    if folder is not None:
        raise UsageError(f"Cannot export into {out_dir}: {folder} is read-only to this user; "
                         f"choose a folder you can write.")
    if overwrite or not out.exists() or not any(out.iterdir()) or is_export_of(out, study):
        return
    raise UsageError(
        f"{out_dir} already holds files that are not an export of study "
        f"'{study.study_name}'; choose an empty folder, or pass --overwrite to replace it."
    )


def is_export_of(folder: Path, study: optuna.Study) -> bool:
    """Whether `folder` is a whole earlier export of this study (its marker names the study)."""
    marker = read_marker(folder)
    return marker is not None and marker.get("study") == study.study_name
