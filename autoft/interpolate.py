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


def interpolate(
    model,
    untouched: dict[str, torch.Tensor],
    tuned: dict[str, torch.Tensor],
    head: frozenset[str],
    mixes: Iterable[float],
    score: Callable[[], float],
    check: Callable[[float], tuple[float | None, bool]],
    source: str = "kept",
) -> list[MixPoint]:
    """Score the model at each mixing weight (`score`, and `check(mix)` for (retention, passes),
    read the model as it is then); the model is left holding the tuned weights."""
    points = []
    for mix in mixes:
        model.load_state_dict(mixed_state(untouched, tuned, head, mix), strict=False)
        points.append(MixPoint(mix, score(), *check(mix), source))
    model.load_state_dict(tuned, strict=False)
    return points
