"""The score-retention trade-off the search measured: a point per trial (complete ones at their
full check, pruned ones at the score and quick-check retention they had when stopped, and any
interpolated weights a trial records), and the best score each retention bar allows.
"""

from __future__ import annotations

from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

from autoft.describe import describe_params
from autoft.record import TrialRecord
from autoft.trials import full_params, last_value

# The bars of the price table, besides the study's own; None is "no bar".
PRICE_BARS = (1.0, 0.99, 0.90, 0.80)
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Point:
    """One measured (score, retention) of the search.

    how: 'complete' (the full check of the kept weights), 'pruned' (the last evaluation and
    quick check before the trial was stopped) or 'interpolated' (the trial's weights mixed
    toward the untouched ones, `mix` being the tuned share).
    """

    number: int
    value: float
    retention: float
    how: str
    params: dict
    mix: float | None = None


def search_points(trials: list[FrozenTrial]) -> list[Point]:
    """Every (score, retention) the search measured, in trial order."""
    points = []
    for trial in trials:
        record = TrialRecord.of(trial)
        if trial.state == TrialState.COMPLETE and trial.value is not None:
            if record.retention is not None:
                points.append(Point(trial.number, trial.value, record.retention, "complete",
                                    full_params(trial)))
        elif trial.state == TrialState.PRUNED and record.quick_retention:
            value = last_value(trial)
            if value is not None:
                points.append(Point(trial.number, value, record.quick_retention[-1], "pruned",
                                    full_params(trial)))
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            # the trial's curve: [{"mix", "value", "retention", ...}, ...] (a pruned trial's
            # too); without a base task its points have no retention, so no place here
            points += [Point(trial.number, p["value"], p["retention"], "interpolated",
                             full_params(trial), p["mix"])
                       for p in record.interpolation if p["retention"] is not None]
    return points


def price_bars(min_retention: float) -> list[float | None]:
    """1.0, 0.99, the user's bar, 0.90, 0.80 (highest first, each once), then no bar."""
    return [*sorted({*PRICE_BARS, min_retention}, reverse=True), None]


def price_of_the_bar(trials: list[FrozenTrial], min_retention: float, depth: int,
                     sign: int = 1) -> list[dict]:
    """For each bar, the best score (the highest, or with `sign` -1 the lowest) among points that
    kept at least that much, with its config in words; None where no point reached the bar."""
    points = search_points(trials)
    rows = []
    for bar in price_bars(min_retention):
        kept = [p for p in points if bar is None or p.retention >= bar - _TOLERANCE]
        best = max(kept, key=lambda p: (sign * p.value, -p.number), default=None)
        row = {"bar": bar, "users_bar": bar == min_retention, "value": None}
        if best is not None:
            row |= {"value": best.value, "retention": best.retention, "number": best.number,
                    "how": best.how, "mix": best.mix, "config": point_words(best, depth)}
        rows.append(row)
    return rows


def point_words(point: Point, depth: int) -> str:
    """The point's config in words, saying how its score was measured when it is not plain."""
    words = describe_params(point.params, depth, point.mix if point.how == "interpolated" else None)
    if point.how == "pruned":
        return f"{words}; stopped early (pruned), at the score it had then"
    if point.how == "interpolated" and point.mix == 1.0:
        return f"{words}; as trained, at its quick check's retention"
    return words
