"""Weight-space interpolation: the mixed weights lie on the line between untouched and tuned for
the body and keep the tuned head; scoring a grid leaves the model tuned; the best point is the
best one that passes the bar.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from test_cache import PAD, PARAMS, fresh_model, make_data

from autoft.interpolate import MixPoint, best_mix, interpolate, mixed_state
from autoft.model import split_parameters
from autoft.train import evaluate, train_trial


def trained(model_dir):
    model = fresh_model(model_dir, 2)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    untouched = {n: p.detach().clone() for n, p in model.named_parameters() if n in names}
    data = make_data(n_train=64, n_val=32)
    params = replace(PARAMS, trainable_layers=2, epochs=2, learning_rate=3e-3)
    result = train_trial(model, data, params, torch.device("cpu"), PAD, 0, lambda e: None)
    return model, data, untouched, result.best_state, frozenset(split_parameters(model).head)


def test_mixed_weights_move_the_body_and_keep_the_tuned_head(tiny_model_dir) -> None:
    _, _, untouched, tuned, head = trained(tiny_model_dir)
    body = [n for n in tuned if n not in head]
    assert body and head & set(tuned)
    half = mixed_state(untouched, tuned, head, 0.5)
    start = mixed_state(untouched, tuned, head, 0.0)
    for name in body:
        assert torch.allclose(half[name], (untouched[name] + tuned[name]) / 2)
        assert torch.equal(start[name], untouched[name])
    for name in head & set(tuned):
        assert torch.equal(half[name], tuned[name]) and torch.equal(start[name], tuned[name])


def test_a_grid_is_scored_and_the_model_is_left_tuned(tiny_model_dir) -> None:
    model, data, untouched, tuned, head = trained(tiny_model_dir)
    mixes = []

    def score() -> float:
        return evaluate(model, data.validation, "accuracy", PAD, torch.device("cpu"))

    def keepable() -> bool:
        name = next(n for n in tuned if n not in head)
        current = dict(model.named_parameters())[name].detach()
        mixes.append(float((current - untouched[name]).norm() / (tuned[name] - untouched[name])
                           .norm()))
        return True

    points = interpolate(model, untouched, tuned, head, [0.25, 0.5, 0.75], score, keepable)
    assert [p.mix for p in points] == [0.25, 0.5, 0.75]
    assert [round(m, 4) for m in mixes] == [0.25, 0.5, 0.75], "each check saw its own mix"
    assert all(0.0 <= p.value <= 1.0 for p in points)
    current = dict(model.named_parameters())
    assert all(torch.equal(current[n].detach(), tuned[n]) for n in tuned)


def test_the_best_point_is_the_best_that_passes_the_bar() -> None:
    points = [MixPoint(1.0, 0.90, False), MixPoint(0.75, 0.85, True), MixPoint(0.5, 0.80, True)]
    assert best_mix(points).mix == 0.75
    assert best_mix([MixPoint(1.0, 0.9, False), MixPoint(0.5, 0.8, False)]).mix == 1.0
