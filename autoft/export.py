"""Exporting a trial's model in the Hugging Face format, with its tokenizer, label names and a
model card, rebuilt from the base model plus the parameters that trial trained.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from safetensors.torch import load_file

from autoft.describe import describe_params
from autoft.errors import UsageError
from autoft.model import load_model


def load_trial_model(
    model_source: str,
    label_names: list[str],
    trial: optuna.trial.FrozenTrial,
    trust_remote_code: bool = False,
):
    """The base model with the trial's trained parameters put back; returns model and tokenizer."""
    checkpoint = trial.user_attrs.get("checkpoint")
    if not checkpoint or not Path(checkpoint).is_file():
        raise UsageError(
            f"Trial {trial.number} has no saved weights on this machine ({checkpoint or 'none'}); "
            f"export a finished trial, on the machine whose worker ran it."
        )
    model, tokenizer = load_model(model_source, label_names, trust_remote_code)
    trained = load_file(checkpoint)
    missing = set(trained) - set(dict(model.named_parameters()))
    if missing:
        raise UsageError(
            f"{checkpoint} holds parameters the model lacks ({sorted(missing)[0]}); "
            f"was the study's model changed?"
        )
    model.load_state_dict(trained, strict=False)
    return model, tokenizer


def model_card(
    study_name: str, trial: optuna.trial.FrozenTrial, depth: int, metric: str, data_description: str
) -> str:
    """A README.md that says where the model came from and how good it is."""
    retention = trial.user_attrs.get("retention")
    lines = [
        f"# autoft study '{study_name}', trial {trial.number}",
        "",
        f"Fine-tuned by autoft on {data_description}.",
        "",
        f"- Config: {describe_params(trial.params or trial.user_attrs.get('params', {}), depth)}",
        f"- Validation {metric}: {trial.value:.4f}"
        if trial.value is not None
        else f"- Validation {metric}: not finished",
    ]
    if retention is not None:
        lines.append(
            f"- Base-task retention: {retention:.3f} "
            f"({trial.user_attrs.get('base_kind', 'base task')})"
        )
    lines += ["", "## Parameters", "", "| parameter | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in sorted(trial.params.items())]
    lines += [
        "",
        "Load it with `AutoModelForSequenceClassification.from_pretrained(this_folder)`.",
        "",
    ]
    return "\n".join(lines)


def export_trial(study: optuna.Study, trial_number: int | None, out_dir: Path) -> Path:
    """Save a trial's model (the best by default) to out_dir, ready for from_pretrained."""
    attrs = study.user_attrs
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if trial_number is None:
        trial_number = attrs.get("best_trial")
        if trial_number is None:
            raise UsageError(
                f"Study '{study.study_name}' has no best trial yet; "
                f"pass --trial N or let the study finish a trial first."
            )
    if trial_number not in trials:
        raise UsageError(
            f"Study '{study.study_name}' has no trial {trial_number}; "
            f"`autoft status` lists its trials."
        )
    trial = trials[trial_number]
    model, tokenizer = load_trial_model(
        attrs["model"], attrs["label_names"], trial, attrs.get("trust_remote_code", False)
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "README.md").write_text(
        model_card(
            study.study_name, trial, attrs["depth"], attrs["metric"], attrs["data_description"]
        )
    )
    return out_dir
