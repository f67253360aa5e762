"""The report's plots, drawn with matplotlib into PNG bytes from a study's trials (Optuna's own
matplotlib plots where they show what the report needs); a plot that the study cannot support yet
(too few trials, no retention measured) becomes a sentence instead.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402
from optuna.visualization import matplotlib as optuna_plots  # noqa: E402

from autoft.describe import describe_params  # noqa: E402
from autoft.record import TrialRecord  # noqa: E402
from autoft.tradeoff import search_points  # noqa: E402
from autoft.trials import full_params as _params  # noqa: E402
from autoft.trials import is_feasible, last_value, score_sign  # noqa: E402

TOP_CURVES = 5
WIDTH, HEIGHT, DPI = 6.4, 3.6, 100
FEASIBLE, INFEASIBLE, PRUNED, BEST = "#1f77b4", "#d62728", "#7f7f7f", "#2ca02c"
INTERPOLATED = "#9467bd"


@dataclass(frozen=True)
class Plot:
    """One figure of the report: PNG bytes, or None with `text` saying why there is no plot."""

    title: str
    text: str
    png: bytes | None = None


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return buffer.getvalue()


def _figure():
    fig, ax = plt.subplots(figsize=(WIDTH, HEIGHT))
    ax.grid(alpha=0.3)
    return fig, ax


def _optuna_plot(draw, *args, **kwargs):
    """The axes of one of Optuna's matplotlib plots, in the report's size, without its warnings
    (the plots are marked experimental; importances warn on few trials) on the reader's screen."""
    with warnings.catch_warnings(), plt.rc_context({"figure.figsize": (WIDTH, HEIGHT)}):
        warnings.simplefilter("ignore")
        return draw(*args, **kwargs)


def complete_trials(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]


def history_plot(trials: list[FrozenTrial], metric: str, sign: int = 1) -> Plot:
    """Scores by trial number and the best so far (`sign` -1: lower is better)."""
    title = "Optimization history"
    complete = complete_trials(trials)
    pruned = [t for t in trials if t.state == TrialState.PRUNED and last_value(t) is not None]
    if not complete and not pruned:
        return Plot(title, "No trial has a score yet, so there is no history to draw.")
    fig, ax = _figure()
    feasible = [t for t in complete if is_feasible(t)]
    forgetful = [t for t in complete if not is_feasible(t)]
    ax.scatter([t.number for t in feasible], [t.value for t in feasible], color=FEASIBLE,
               label="complete", zorder=3)
    if forgetful:
        ax.scatter([t.number for t in forgetful], [t.value for t in forgetful], color=INFEASIBLE,
                   marker="s", label="complete, forgot too much", zorder=3)
    if pruned:
        ax.scatter([t.number for t in pruned], [last_value(t) for t in pruned], color=PRUNED,
                   marker="x", label="pruned (score when stopped)", zorder=3)
    best, xs, ys = None, [], []
    for t in sorted(feasible, key=lambda t: t.number):
        best = t.value if best is None else sign * max(sign * best, sign * t.value)
        xs.append(t.number)
        ys.append(best)
    if xs:  # drawn on to the last trial, so a single feasible trial still shows as a line
        last = max(t.number for t in trials)
        ax.step([*xs, last], [*ys, ys[-1]], where="post", color=BEST, label="best so far")
    ax.set_xlabel("trial number")
    ax.set_ylabel(metric)
    ax.legend(fontsize="small")
    return Plot(
        title,
        f"Each dot is a trial's best validation {metric}; the green line is the best feasible "
        "score found so far. Crosses are trials stopped early because they trailed the others.",
        _png(fig),
    )


def importance_plot(study: optuna.Study) -> Plot:
    """Optuna's plot of its parameter importances, or a sentence where it cannot rank them."""
    title = "Which settings mattered"
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return Plot(title, f"Parameter importances need at least 2 complete trials; this study "
                           f"has {len(complete)}.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError) as error:
        return Plot(title, f"Optuna could not rank the settings yet ({error}).")
    if not importances:
        return Plot(title, "The complete trials share one config, so no setting can be ranked.")
    ax = _optuna_plot(optuna_plots.plot_param_importances, study)
    ax.set_title("", loc="left")  # the report's heading names it
    ax.get_legend().remove()  # one bar per setting, all of the one objective
    ax.set_xlabel("share of the score's variation explained")
    return Plot(
        title,
        f"Optuna's parameter importances over {len(complete)} complete trials: how much each "
        "setting explains the differences in score. With few trials this is only a hint.",
        _png(ax.figure),
    )


def layers_plot(trials: list[FrozenTrial], metric: str, depth: int | None) -> Plot:
    title = f"{metric} against the number of trained layers"
    complete = [t for t in complete_trials(trials) if "trainable_layers" in _params(t)]
    if not complete:
        return Plot(title, "No complete trial yet.")
    fig, ax = _figure()
    for group, color, label in (
        ([t for t in complete if is_feasible(t)], FEASIBLE, "complete"),
        ([t for t in complete if not is_feasible(t)], INFEASIBLE, "forgot too much"),
    ):
        if group:
            ax.scatter([_params(t)["trainable_layers"] for t in group], [t.value for t in group],
                       color=color, label=label, zorder=3)
    everything = f", {depth} = all" if depth else ""
    ax.set_xlabel(f"trainable layers (0 = only the new head{everything})")
    ax.set_ylabel(metric)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize="small")
    return Plot(
        title,
        "Training more of the top layers usually fits the new task better but costs time and "
        "forgets more; this shows where this task's sweet spot lies.",
        _png(fig),
    )


def retention_plot(trials: list[FrozenTrial], metric: str, min_retention: float | None) -> Plot:
    """Every point the search measured (autoft.tradeoff.search_points), marked by how."""
    title = f"{metric} against retention of the base skill"
    points = search_points(trials)
    if not points:
        return Plot(title, "No trial measured base-task retention (no base task was set for "
                           "this study, or no trial reached a check).")
    fig, ax = _figure()
    xs = [p.retention for p in points]
    if min_retention is not None:
        right = max(max(xs), min_retention) + 0.05
        ax.axvspan(min_retention, right, color=BEST, alpha=0.12,
                   label=f"feasible: retention ≥ {min_retention:g}")
        ax.axvline(min_retention, color=BEST, linestyle="--")
        ax.set_xlim(min(min(xs), min_retention) - 0.05, right)
    feasible = {t.number for t in trials if is_feasible(t)}
    groups = (
        ("complete", lambda p: p.number in feasible, FEASIBLE, "o", "complete"),
        ("complete", lambda p: p.number not in feasible, INFEASIBLE, "s",
         "complete, forgot too much"),
        ("pruned", lambda p: True, PRUNED, "x", "pruned (score and quick check when stopped)"),
        ("interpolated", lambda p: True, INTERPOLATED, "D",
         "interpolated toward the base weights"),
    )
    for how, keep, color, marker, label in groups:
        group = [p for p in points if p.how == how and keep(p)]
        if group:
            ax.scatter([p.retention for p in group], [p.value for p in group], color=color,
                       marker=marker, label=label, zorder=3)
    for p in points:
        ax.annotate(str(p.number), (p.retention, p.value), fontsize="x-small", xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel("retention (share of the base model's skill kept)")
    ax.set_ylabel(metric)
    ax.legend(fontsize="small", loc="lower left")
    return Plot(
        title,
        "Each mark is a trial, labelled with its number; crosses are trials stopped early, at "
        "the score and quick-check retention they had then. Trials in the green region kept "
        "enough of what the model knew before; the best config is chosen among them.",
        _png(fig),
    )


def curves_plot(trials: list[FrozenTrial], metric: str, depth: int | None, sign: int = 1) -> Plot:
    """The curves of the trials whose best evaluation is best (`sign` -1: lower is better)."""
    title = f"Learning curves of the top {TOP_CURVES} trials"
    curves = [(t, TrialRecord.of(t).evaluations) for t in trials]
    scored = [(t, evaluations) for t, evaluations in curves if evaluations]
    if not scored:
        return Plot(title, "No trial has recorded an evaluation yet.")
    top = sorted(scored, key=lambda curve: -max(sign * e["value"] for e in curve[1]))
    fig, ax = _figure()
    for t, evaluations in top[:TOP_CURVES]:
        label = f"trial {t.number}: {describe_params(_params(t), depth or 0, short=True)}"
        if t.state == TrialState.PRUNED:
            label += " (pruned)"
        ax.plot([e["samples_seen"] for e in evaluations], [e["value"] for e in evaluations],
                marker="o", label=label)
    ax.set_xlabel("training examples seen")
    ax.set_ylabel(f"validation {metric}")
    ax.legend(fontsize="x-small")
    return Plot(
        title,
        "The validation score after each evaluation, for the trials that reached the best "
        "scores. A curve still improving at its end would gain from more epochs.",
        _png(fig),
    )


def study_plots(study: optuna.Study) -> list[Plot]:
    """Every plot of the report, in reading order."""
    attrs = study.user_attrs
    trials = study.get_trials(deepcopy=False)
    metric = attrs.get("metric") or "score"
    depth = attrs.get("depth")
    base = attrs.get("base") or {}
    sign = score_sign(study)
    return [
        history_plot(trials, metric, sign),
        importance_plot(study),
        layers_plot(trials, metric, depth),
        retention_plot(trials, metric, base.get("min_retention")),
        curves_plot(trials, metric, depth, sign),
    ]
