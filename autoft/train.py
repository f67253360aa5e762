"""One trial's fine-tuning loop in plain PyTorch: AdamW with warmup and linear decay, the task's
batches (autoft.tasks), an evaluation every epoch (or N samples) passed to a pruning callback.

The frozen prefix always runs in eval mode, so training from the prefix cache (autoft.cache) and
without it compute the same thing. No host synchronisation per step: the loss is summed on the
device and read once per evaluation. No torch.compile: on CPU, compiling costs more than a trial
saves (batches change shape with each length bucket, and every shape recompiles).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from autoft.adapters import get_adapter
from autoft.data import TargetData
from autoft.dropout import cpu_dropout
from autoft.model import evaluating, find_blocks, split_parameters
from autoft.params import TrialParams
from autoft.precision import autocast
from autoft.tasks import MAXIMIZE, get_task
from autoft.trials import direction_sign

if TYPE_CHECKING:
    from autoft.cache import PrefixCache
    from autoft.replay import SplitStates
    from autoft.tasks import Task

SCORE_RESAMPLES = 200  # bootstrap draws behind an evaluation's standard error


class TrialFailed(Exception):
    """The trial cannot go on (NaN loss, out of memory); its message is the recorded reason."""


class StopTraining(Exception):
    """Raised by an evaluation callback to end the trial early as complete, keeping what it has
    (a trial that fell below the forgetting bar after a feasible checkpoint)."""


class LossTerm(Protocol):
    """Something a trial adds to its training loss at some steps (autoft.preserve's preservation
    loss): called after the task's forward pass of optimizer step `step` (0, 1, ...), it returns
    a scalar to add, or None to add nothing at that step."""

    def __call__(self, model, step: int) -> torch.Tensor | None: ...


@dataclass(frozen=True)
class Evaluation:
    """One evaluation; `step` is the unit every trial shares (epoch, or evaluation index).
    `standard_error` says how precisely `value` is known from these validation rows (score_error):
    the pruner decides only beyond it. `train_seconds` is the training time up to it (without
    evaluations, checks or the cache), by which the pruner tells costly trials."""

    step: int
    samples_seen: int
    value: float
    standard_error: float | None
    train_loss: float
    seconds: float
    train_seconds: float = 0.0
    keepable: bool = True


@dataclass
class TrialResult:
    """What a trial produced: its best evaluation and the trainable weights at that moment.

    The best is the best *keepable* evaluation (one that passed the forgetting guard's check),
    or, while none is, the best of all, so a trial that never passed still keeps its weights.
    cache_used says whether it trained from the prefix cache, cache_note why not or whether it
    built or reused it, cache_seconds what finding, checking or building the cache cost.
    """

    evaluations: list[Evaluation] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    # the weights of the best-scoring evaluation, while that one is not `best` (it failed the
    # guard's check): a trial stopped for forgetting mixes them back toward the untouched weights
    top_state: dict[str, torch.Tensor] = field(default_factory=dict)
    # the frozen prefix's states for validation, when the trial trained from the cache: scoring
    # after training (the interpolation curve) replays them as the evaluations did
    validation_states: SplitStates | None = None
    train_seconds: float = 0.0
    samples_seen: int = 0
    cache_used: bool = False
    cache_note: str = ""
    cache_seconds: float = 0.0
    interpolated: float | None = None  # the score of the interpolation point it keeps, if any
    best_details: dict = field(default_factory=dict)  # the kept weights' Task.score_details
    head_first_seconds: float = 0.0  # LP-FT's head-only phase, apart from the trained samples
    direction: str = MAXIMIZE  # the metric's: which evaluation is best

    @property
    def value(self) -> float:
        """What the trial reports: its kept interpolation point's score, or its best kept
        evaluation's."""
        return self.interpolated if self.interpolated is not None else self.best.value

    @property
    def best(self) -> Evaluation | None:
        keepable = [e for e in self.evaluations if e.keepable]
        sign = direction_sign(self.direction)
        return max(keepable or self.evaluations, key=lambda e: sign * e.value, default=None)

    @property
    def top(self) -> Evaluation | None:
        """The best-scoring evaluation, kept or not."""
        sign = direction_sign(self.direction)
        return max(self.evaluations, key=lambda e: sign * e.value, default=None)

    @property
    def has_keepable(self) -> bool:
        return any(e.keepable for e in self.evaluations)

    @property
    def samples_per_second(self) -> float:
        return self.samples_seen / self.train_seconds if self.train_seconds else 0.0




def trial_seed(study_seed: int, params: dict) -> int:
    """A trial's seed, from the study seed and its params alone: the same config gets the same
    head, batches and dropout as trial 0, as a later trial or as a retry, in any worker."""
    identity = json.dumps({"seed": study_seed, "params": params}, sort_keys=True)
    return int.from_bytes(hashlib.sha256(identity.encode()).digest()[:8], "big")


def build_optimizer(model, params: TrialParams) -> torch.optim.Optimizer:
    """AdamW with the head at its own (larger) learning rate; no decay on biases and norms."""
    head_names = set(split_parameters(model).head)
    groups: dict[tuple[bool, bool], list] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            decays = parameter.ndim > 1
            groups.setdefault((name in head_names, decays), []).append(parameter)
    return torch.optim.AdamW(  # fused: one kernel for all tensors, where torch has one
        [
            {
                "params": members,
                "lr": params.learning_rate * (params.head_lr_multiplier if is_head else 1.0),
                "weight_decay": params.weight_decay if decays else 0.0,
            }
            for (is_head, decays), members in groups.items()
        ],
        fused=True,
    )


def linear_schedule(optimizer, total_steps: int, warmup_ratio: float):
    """Linear warmup from zero, then linear decay to zero at the last step."""
    warmup = max(1, int(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def set_train_mode(model, frozen: int) -> None:
    """Train mode, except for the frozen prefix (embeddings and the bottom `frozen` blocks).

    A module of the base model stays in eval mode (no dropout) unless it lies in a trainable
    block or holds a trainable parameter; everything outside the base model trains.
    """
    model.train()
    if frozen == 0:
        return
    trainable_blocks = set()
    for block in list(find_blocks(model))[frozen:]:
        trainable_blocks.update(id(m) for m in block.modules())
    for module in getattr(model, "base_model", model).modules():
        if id(module) not in trainable_blocks and not any(
            p.requires_grad for p in module.parameters()
        ):
            module.eval()


def frozen_blocks(model, trainable_layers: int) -> int:
    """How many bottom blocks stay frozen."""
    return len(find_blocks(model)) - trainable_layers


def forward(model, batch: dict, indices: list[int], prefix: SplitStates | None):
    """The model's output, from the cached prefix states when there are some."""
    return model(**batch) if prefix is None else prefix.forward(model, batch, indices)


@torch.no_grad()
def predict(
    model,
    data: TargetData,
    pad_id: int,
    device: torch.device,
    prefix: SplitStates | None = None,
) -> list:
    """The model's prediction for each validation row, in eval mode, as its task predicts;
    restores every module's mode after."""
    task, split = get_task(data.task), data.validation
    predictions = [None] * len(split)
    with evaluating(model):
        for indices, batch in task.eval_batches(split, pad_id, device):
            with autocast(device):
                logits = forward(model, batch, indices, prefix).logits
            for i, prediction in zip(indices, task.batch_predictions(logits, split, indices),
                                             strict=True):
                predictions[i] = prediction
    return predictions


def evaluate(
    model,
    data: TargetData,
    pad_id: int,
    device: torch.device,
    prefix: SplitStates | None = None,
) -> float:
    """The data's metric on its validation split, as its task scores the predictions."""
    predictions = predict(model, data, pad_id, device, prefix)
    return get_task(data.task).score(data.metric, data.validation.labels, predictions)


def score_details(task: Task, data: TargetData, predictions: list) -> dict:
    """Precision and recall beside the metric (Task.score_details) of these validation
    predictions, decided as the metric decides them."""
    labels = data.validation.labels
    return task.score_details(labels, task.decisions(data.metric, labels, predictions),
                              data.label_names)


def score_error(task: Task, metric: str, labels: list, predictions: list) -> float | None:
    """The standard error of `metric` on these rows: the spread of its value, scored as the task
    scores, over SCORE_RESAMPLES draws of the rows with repeats. How far the score could move had
    validation held other rows of the same kind; 500 rows with 65 of one class leave a macro-F1
    of 0.97 about ±0.01. Seeded, so every evaluation of every trial draws the same rows. None
    when no draw has a score (a model that predicts NaN)."""
    rows = np.random.default_rng(0).integers(0, len(labels), (SCORE_RESAMPLES, len(labels)))
    draws = task.scores_over(metric, labels, predictions, rows)
    finite = draws[np.isfinite(draws)]
    return float(finite.std()) if finite.size else None


def evaluation_points(
    n_train: int, batch_size: int, epochs: int, every_samples: int | None
) -> Iterator[tuple[int, int]]:
    """(epoch, batch index) after which to evaluate, with the step number each reports."""
    batches_per_epoch = math.ceil(n_train / batch_size)
    if every_samples is None:
        for epoch in range(epochs):
            yield epoch, batches_per_epoch - 1
        return
    total = n_train * epochs
    for k in range(1, total // every_samples + 1):
        seen = k * every_samples
        epoch, within = divmod(seen, n_train)
        if within == 0:
            epoch, within = epoch - 1, n_train
        yield epoch, math.ceil(within / batch_size) - 1


def update(loss: torch.Tensor, optimizer, scheduler) -> None:
    """One optimizer step on `loss`, the schedule advanced, the gradients freed."""
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def train_head_first(model, data: TargetData, params: TrialParams, device: torch.device,
                     pad_id: int, generator: torch.Generator, cache: PrefixCache | None) -> float:
    """LP-FT's linear probe: the head alone trains for `head_first_epochs` epochs before the chosen
    layers join it, so they start fine-tuning under a head that already fits instead of a random
    one whose gradients distort the pretrained features. Every block is frozen meanwhile, so the
    phase trains from the full-depth prefix cache where there is one. Not evaluated: the trial's
    evaluations, in samples seen, start with the layers. Returns its seconds."""
    started = time.perf_counter()
    head = set(split_parameters(model).head)
    body = [p for n, p in model.named_parameters() if p.requires_grad and n not in head]
    if not body:
        return 0.0  # only the head trains anyway
    for parameter in body:
        parameter.requires_grad_(False)
    depth = len(find_blocks(model))
    states = cache.states_for(model, data, depth, device, pad_id).states if cache else None
    set_train_mode(model, depth)
    task = get_task(data.task)
    optimizer = build_optimizer(model, params)
    steps = math.ceil(len(data.train) / params.batch_size) * params.head_first_epochs
    scheduler = linear_schedule(optimizer, steps, params.warmup_ratio)
    for _ in range(params.head_first_epochs):
        for batch_indices in task.train_batches(data.train, params.batch_size, generator):
            batch = task.collate(data.train, batch_indices, pad_id, device)
            with autocast(device):
                loss = forward(model, batch, batch_indices, states and states.train).loss
            update(loss, optimizer, scheduler)
    for parameter in body:
        parameter.requires_grad_(True)
    return time.perf_counter() - started


def train_trial(
    model,
    data: TargetData,
    params: TrialParams,
    device: torch.device,
    pad_id: int,
    seed: int,
    on_evaluation: Callable[[Evaluation], None],
    eval_every_samples: int | None = None,
    cache: PrefixCache | None = None,
    loss_terms: Sequence[LossTerm] = (),
    keepable: Callable[[], bool] | None = None,
) -> TrialResult:
    """Train a model its adapter has prepared; call `on_evaluation` after every evaluation.

    `keepable`, asked at each evaluation before `on_evaluation`, says whether the weights of
    that moment may be kept (the forgetting guard's check); without it every evaluation may.
    `on_evaluation` may raise StopTraining to end the trial here with what it kept.

    With a `cache` and some blocks frozen, the frozen prefix runs once per study (see
    autoft.cache) and the trial trains only the top blocks and the head from its states.
    The callback may raise (optuna.TrialPruned, say): the result so far stays in the exception's
    `result` attribute, so a pruned trial's best weights are not lost. `loss_terms` add to the
    loss that trains; the reported train loss stays the task's own, comparable across trials.
    """
    model.to(device)
    with cpu_dropout(model, device):  # training on a CPU: the faster dropout
        task = get_task(data.task)
        frozen = frozen_blocks(model, params.trainable_layers)
        result = TrialResult(cache_note="off" if cache is None else "nothing frozen",
                             direction=task.metric(data.metric).direction)
        states = None
        if cache is not None and frozen > 0:
            use = cache.states_for(model, data, frozen, device, pad_id)
            states, result.cache_note, result.cache_seconds = use.states, use.note, use.seconds
            result.cache_used = states is not None
            result.validation_states = states and states.validation
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        if params.head_first_epochs:
            result.head_first_seconds = train_head_first(model, data, params, device, pad_id,
                                                         generator, cache)
        set_train_mode(model, frozen)
        rows = len(data.train)
        steps_per_epoch = math.ceil(rows / params.batch_size)
        optimizer = build_optimizer(model, params)
        scheduler = linear_schedule(optimizer, steps_per_epoch * params.epochs, params.warmup_ratio)
        points = set(evaluation_points(rows, params.batch_size, params.epochs, eval_every_samples))
        adapter = get_adapter(params.adapter)
        loss_sum = torch.zeros((), device=device)
        loss_count = 0
        started = time.perf_counter()
        step = 0
        for epoch in range(params.epochs):
            for index, batch_indices in enumerate(
                task.train_batches(data.train, params.batch_size, generator)
            ):
                batch = task.collate(data.train, batch_indices, pad_id, device)
                with autocast(device):
                    loss = forward(model, batch, batch_indices, states and states.train).loss
                    extras = [term(model, step) for term in loss_terms]
                total = sum((extra for extra in extras if extra is not None), loss)
                update(total, optimizer, scheduler)
                loss_sum += loss.detach()
                loss_count += 1
                step += 1
                result.samples_seen += len(batch_indices)
                if (epoch, index) in points:
                    result.train_seconds += time.perf_counter() - started
                    _evaluate_and_report(
                        model,
                        data,
                        device,
                        pad_id,
                        result,
                        adapter,
                        loss_sum.item() / loss_count,
                        on_evaluation,
                        states and states.validation,
                        keepable,
                    )
                    set_train_mode(model, frozen)  # the callback may have changed modes
                    loss_sum.zero_()
                    loss_count = 0
                    started = time.perf_counter()
        return result


def _evaluate_and_report(
    model, data, device, pad_id, result, adapter, train_loss, on_evaluation, prefix, keepable
) -> None:
    if not math.isfinite(train_loss):
        raise TrialFailed(f"training loss became {train_loss} (not finite)")
    began = time.perf_counter()
    task, labels = get_task(data.task), data.validation.labels
    predictions = predict(model, data, pad_id, device, prefix)
    evaluation = Evaluation(
        step=len(result.evaluations) + 1,
        samples_seen=result.samples_seen,
        value=task.score(data.metric, labels, predictions),
        standard_error=score_error(task, data.metric, labels, predictions),
        train_loss=train_loss,
        seconds=time.perf_counter() - began,
        train_seconds=result.train_seconds,
        keepable=keepable() if keepable is not None else True,
    )
    result.evaluations.append(evaluation)
    if result.best is evaluation:
        result.best_state = adapter.kept_weights(model)
        result.best_details = score_details(task, data, predictions)
    elif result.top is evaluation:
        result.top_state = adapter.kept_weights(model)
    try:
        on_evaluation(evaluation)
    except Exception as error:
        error.result = result
        raise
