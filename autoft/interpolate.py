"""Weight-space interpolation (the WiSE-FT idea): after a trial, its trained body is mixed back
toward the untouched weights at a few mixing weights, each point scored on validation and checked
against the forgetting bar, without training; the trial keeps the best point that passes.

The head (the new classifier and what runs after the last block) stays tuned: its untouched
weights are a random start, not knowledge worth returning to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from autoft.tasks.base import MAXIMIZE
from autoft.trials import direction_sign

TUNED = 1.0
UNTOUCHED = 0.0
# Points spent, after the space's mixes, halving the gap in which retention crosses the bar: the
# demo's full fine-tuning scored 0.70 at 90% kept (mix 0.5) and 0.65 at 96% (0.25), so the best
# point that keeps the bar lies between two fixed mixes.
BISECTIONS = 2


@dataclass(frozen=True)
class MixPoint:
    """One mixing weight's outcome; mix 1.0 is the tuned weights, 0.0 the untouched body.
    `retention` is the quick check's (None without a base task); `keepable` whether it passes;
    `source` which of the trial's weights were mixed: 'kept' (its kept checkpoint) or 'top' (its
    best-scoring weights, which failed the check)."""

    mix: float
    value: float
    retention: float | None
    keepable: bool
    source: str = "kept"


def mixed_state(
    untouched: dict[str, torch.Tensor],
    tuned: dict[str, torch.Tensor],
    head: frozenset[str],
    mix: float,
) -> dict[str, torch.Tensor]:
    """The tuned weights with every body tensor moved to untouched + mix × (tuned − untouched);
    a count (a BatchNorm's batches tracked) stays as tuned."""
    return {
        name: value if name in head or not value.is_floating_point()
        else torch.lerp(untouched[name], value, mix)
        for name, value in tuned.items()
    }


def best_mix(points: Iterable[MixPoint], direction: str = MAXIMIZE) -> MixPoint:
    """The best point (by the metric's `direction`) that passes the bar, or the best of all when
    none does; ties go to the kept weights' curve, then to the point nearer the tuned weights."""
    points = list(points)
    keepable = [p for p in points if p.keepable]
    sign = direction_sign(direction)
    return max(keepable or points, key=lambda p: (sign * p.value, p.source == "kept", p.mix))


def crossing(points: Iterable[MixPoint]) -> tuple[float, float] | None:
    """The mixes between which retention falls below the bar: the highest passing mix (the
    untouched body, UNTOUCHED, passes) and the lowest failing one above it; None when every
    point passes. `points` holds the tuned weights' own point (TUNED)."""
    points = list(points)
    passing = max([UNTOUCHED] + [p.mix for p in points if p.keepable])
    failing = [p.mix for p in points if not p.keepable and p.mix > passing]
    return (passing, min(failing)) if failing else None


def interpolate(
    model,
    untouched: dict[str, torch.Tensor],
    tuned: dict[str, torch.Tensor],
    head: frozenset[str],
    mixes: Iterable[float],
    score: Callable[[], float],
    check: Callable[[float], tuple[float | None, bool]],
    source: str = "kept",
    tuned_point: MixPoint | None = None,
) -> list[MixPoint]:
    """Score the model at each mixing weight (`score`, and `check(mix)` for (retention, passes),
    read the model as it is then), then BISECTIONS more points halving the gap where retention
    crosses the bar (`crossing`, with the tuned weights' own `tuned_point`), so the curve's best
    passing point lies near the bar; the model is left holding the tuned weights."""

    def point(mix: float) -> MixPoint:
        model.load_state_dict(mixed_state(untouched, tuned, head, mix), strict=False)
        return MixPoint(mix, score(), *check(mix), source)

    points = [point(mix) for mix in mixes]
    for _ in range(BISECTIONS if points else 0):
        gap = crossing([*points, *([tuned_point] if tuned_point else [])])
        if gap is None:
            break
        points.append(point(round(sum(gap) / 2, 4)))
    model.load_state_dict(tuned, strict=False)
    return points
