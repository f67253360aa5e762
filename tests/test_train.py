"""Tests for autoft.train: batches, evaluation points, the loop's reporting, pruning and failure,
on a tiny real BERT that learns a toy task in seconds.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from autoft.tasks.text import bucketed_batches
from autoft.train import (
    TrialFailed,
    evaluate,
    evaluation_points,
    linear_schedule,
    train_trial,
)


def test_bucketed_batches_cover_every_example_once_with_little_padding() -> None:
    lengths = [(i * 7919) % 61 + 1 for i in range(500)]
    batches = bucketed_batches(lengths, 16, torch.Generator().manual_seed(0))
    assert sorted(i for batch in batches for i in batch) == list(range(500))
    assert all(len(batch) <= 16 for batch in batches)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.1 * sum(lengths)  # random batches would pad to about 1.9×
    again = bucketed_batches(lengths, 16, torch.Generator().manual_seed(0))
    assert again == batches


def test_evaluation_points_every_epoch_and_every_n_samples() -> None:
    assert list(evaluation_points(100, 32, 3, None)) == [(0, 3), (1, 3), (2, 3)]
    # every 50 samples of 100 a epoch, batch 32: after batches 1 and 3 of each epoch
    assert list(evaluation_points(100, 32, 2, 50)) == [(0, 1), (0, 3), (1, 1), (1, 3)]


def test_a_trial_reports_each_evaluation_and_learns(
    tiny_model_dir, pad_id, trial_params, fresh_model, make_data
) -> None:
    data = make_data(n_train=64, n_val=32)
    model = fresh_model(tiny_model_dir, 2)
    seen = []
    params = replace(trial_params, trainable_layers=2, epochs=4, learning_rate=3e-3)
    result = train_trial(model, data, params, torch.device("cpu"), pad_id, 0, seen.append)
    assert [e.step for e in seen] == [1, 2, 3, 4]
    assert [e.samples_seen for e in seen] == [64, 128, 192, 256]
    assert seen[-1].train_loss < seen[0].train_loss
    assert result.best == max(seen, key=lambda e: e.value)
    assert set(result.best_state) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert result.samples_per_second > 0 and not result.cache_used and result.cache_note == "off"


def test_a_pruned_trial_keeps_its_result(
    tiny_model_dir, pad_id, trial_params, fresh_model, make_data
) -> None:
    class Pruned(Exception):
        pass

    def prune(_evaluation):
        raise Pruned

    with pytest.raises(Pruned) as caught:
        train_trial(
            fresh_model(tiny_model_dir, 1), make_data(), trial_params, torch.device("cpu"), pad_id,
            0, prune,
        )
    assert len(caught.value.result.evaluations) == 1 and caught.value.result.best_state


def test_a_non_finite_loss_fails_the_trial(
    tiny_model_dir, pad_id, trial_params, fresh_model, make_data
) -> None:
    params = replace(trial_params, learning_rate=math.inf)
    with pytest.raises(TrialFailed, match="not finite"):
        train_trial(
            fresh_model(tiny_model_dir, 1), make_data(), params, torch.device("cpu"), pad_id, 0,
            print,
        )


def test_evaluate_restores_every_module_mode(
    tiny_model_dir, pad_id, fresh_model, make_data
) -> None:
    model = fresh_model(tiny_model_dir, 1).train()
    model.bert.embeddings.eval()
    value = evaluate(model, make_data(), pad_id, torch.device("cpu"))
    assert 0.0 <= value <= 1.0
    assert model.training and not model.bert.embeddings.training
    assert model.bert.encoder.training


def test_a_trial_keeps_its_best_keepable_evaluation_not_its_best(
    tiny_model_dir, pad_id, trial_params, fresh_model, make_data
) -> None:
    model = fresh_model(tiny_model_dir, 2)
    params = replace(trial_params, trainable_layers=2, epochs=4, learning_rate=1e-3)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    data = make_data(n_train=128, n_val=32)
    at_first = {}

    def remember_first(evaluation) -> None:
        if evaluation.step == 1:
            at_first.update({n: p.detach().clone() for n, p in model.named_parameters()
                             if n in trained})

    answers = iter([True, False, False, False])
    result = train_trial(model, data, params, torch.device("cpu"), pad_id, 0, remember_first,
                         keepable=lambda: next(answers))
    assert [e.keepable for e in result.evaluations] == [True, False, False, False]
    assert max(e.value for e in result.evaluations) > result.evaluations[0].value, "it learned"
    assert result.best is result.evaluations[0] and result.has_keepable
    assert all(torch.equal(result.best_state[n], at_first[n]) for n in trained)


def test_without_a_keepable_evaluation_the_best_of_all_is_kept(
    tiny_model_dir, pad_id, trial_params, fresh_model, make_data
) -> None:
    model = fresh_model(tiny_model_dir, 2)
    params = replace(trial_params, trainable_layers=2, epochs=3, learning_rate=3e-3)
    result = train_trial(model, make_data(n_train=64, n_val=32), params, torch.device("cpu"),
                         pad_id, 0, lambda e: None, keepable=lambda: False)
    assert not result.has_keepable
    assert result.best == max(result.evaluations, key=lambda e: e.value)


def test_the_learning_rate_warms_up_from_the_first_step_and_decays_to_zero() -> None:
    """The rates every trial has trained with. transformers' get_linear_schedule_with_warmup
    gives the first step a rate of 0 and reaches the full rate a step later, so it is not used."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = linear_schedule(optimizer, 20, 0.1)  # 2 warmup steps
    rates = []
    for _ in range(20):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:2] == [0.5, 1.0]
    assert rates[2:] == pytest.approx([(20 - step) / 18 for step in range(2, 20)])
