"""Plain-words descriptions of configs and durations, for people who do not tune models daily."""

from __future__ import annotations

from autoft.adapters import ADAPTERS, SEARCH_PARAMETERS


def describe_params(params: dict, depth: int, mix: float | None = None,
                    short: bool = False) -> str:
    """'train the top 4 of 6 layers at learning rate 3.0e-05 (the head 10× that), batches of 32,
    3 epochs', or `short` for tables and log lines: 'top 4/6 layers, lr 3.0e-05 (head ×10),
    batch 32, 3 epochs'. One list of parts for both, so a table names what the answer names;
    `mix` is the tuned share of weights mixed back toward the untouched ones. The blocks are said
    by the trial's adapter, every other part by its parameter's declared words."""
    if not params:
        return "config not sampled yet" if short else "unknown config"
    adapter = ADAPTERS.get(params.get("adapter"), ADAPTERS["freeze"])()  # one since removed: freeze
    rate = params["learning_rate"]
    parts = [adapter.describe(params, depth, short)
             + (f", lr {rate:.1e}" if short else f" at learning rate {rate:.1e}")]
    if "head_lr_multiplier" in params:
        parts[-1] += (f" (head ×{params['head_lr_multiplier']:.0f})" if short else
                      f" (the head {params['head_lr_multiplier']:.0f}× that)")
    parts += [spec.words(params[spec.name], short) for spec in SEARCH_PARAMETERS
              if spec.words and params.get(spec.name)]
    if mix is not None and mix != 1.0:
        parts.append(f"mixed back, {mix:.0%} tuned" if short else
                     f"weights mixed back toward the base model ({mix:.0%} tuned)")
    return ", ".join(parts)


def metric_words(metric: str, direction: str | None) -> str:
    """The metric's name, saying so where lower is better (RMSE)."""
    return f"{metric} (lower is better)" if direction == "minimize" else metric


def describe_seconds(seconds: float) -> str:
    """'2h05m', '4m12s', '38s'."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def describe_settings(settings: dict) -> str:
    """'search space 'quick', a budget of 8 trials, pruning once 2 trials are complete (...)'."""
    text = f"search space '{settings['space']}', a budget of {settings['n_trials']} trials, "
    pruner = settings.get("pruner", "median")  # studies from before the setting used the median
    if pruner != "median":
        text += f"Optuna's {pruner} pruning"
    else:
        text += f"pruning once {settings['pruner_startup_trials']} trials are complete"
        if settings.get("pruner_warmup_steps"):
            text += f" and never at the first {settings['pruner_warmup_steps']} evaluation(s)"
    if settings.get("preset"):
        text += f" (preset '{settings['preset']}'; the study file and flags win over it)"
    return text


def describe_numbers(numbers: list[int]) -> str:
    """'3', '3 and 5', '3, 5 and 7': trial numbers in a sentence."""
    names = [str(n) for n in numbers]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


MAX_CLASSES_SHOWN = 20  # per-class precision and recall are shown up to this many classes
PER_CLASS_COLUMNS = ["class", "precision", "recall", "F1", "support"]


def describe_details(details: dict | None) -> str:
    """'precision 0.8123, recall 0.7900 (macro average)', with ', subset accuracy 0.4100' where
    there is one (multi-label): a trial's Task.score_details in words; '' where none was
    recorded (regression, older studies)."""
    if not details:
        return ""
    words = (f"precision {details['precision']:.4f}, recall {details['recall']:.4f} "
             f"({details['average']} average)")
    if "subset_accuracy" in details:
        words += f", subset accuracy {details['subset_accuracy']:.4f}"
    return words


def shown_details(details: dict | None) -> dict | None:
    """A trial's score_details as summary.json shows them: per class only up to
    MAX_CLASSES_SHOWN classes."""
    if not details or len(details.get("per_label", {})) <= MAX_CLASSES_SHOWN:
        return details
    return {key: value for key, value in details.items() if key != "per_label"}


def per_class_rows(details: dict | None) -> list[list[str]]:
    """One row per class (PER_CLASS_COLUMNS) of a trial's score_details; [] where none were
    recorded or there are more than MAX_CLASSES_SHOWN classes."""
    per_label = (shown_details(details) or {}).get("per_label") or {}
    return [[name, f"{scores['precision']:.4f}", f"{scores['recall']:.4f}",
             f"{scores['f1']:.4f}", str(scores["support"])]
            for name, scores in per_label.items()]


def percent(share: float) -> str:
    """A setting given as a share (a bar), in as few decimals as it needs: a bar of 0.999 is
    99.9%, not the 100% that `:.0%` rounds it to."""
    for decimals in range(3):
        if round(share * 100, decimals) == round(share * 100, 6):
            break
    return f"{share:.{decimals}%}"
