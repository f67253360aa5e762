"""The objective that runs one trial (sample, load, adapt, train with reporting and pruning, record,
save) and the facts a study records once. Everything a trial learns goes into the storage as
its record (autoft.record: user attributes).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import socket
import time
from pathlib import Path

import optuna
import torch
from safetensors.torch import save_file

from autoft.adapters import get_adapter
from autoft.cache import PrefixCache
from autoft.config import StudyConfig
from autoft.files import is_disk_full, write_whole
from autoft.forgetting import BaseSplit, study_base_task
from autoft.guard import ForgettingGuard, ForgettingPruned, observe, quick_is_search
from autoft.interpolate import TUNED, MixPoint, best_mix, interpolate, mixed_state
from autoft.model import split_parameters
from autoft.params import TrialParams
from autoft.precision import precision_name, set_precision
from autoft.prepared import Prepared
from autoft.preserve import Cost, Preservation, PreservedTexts, texts_to_preserve
from autoft.pruning import against_the_best, plateau, prune_reason
from autoft.record import TrialRecord
from autoft.train import (
    Evaluation,
    StopTraining,
    TrialFailed,
    TrialResult,
    evaluate,
    frozen_blocks,
    predict,
    score_details,
    train_trial,
    trial_seed,
)
from autoft.trials import direction_sign

log = logging.getLogger("autoft")

MIN_EVALUATIONS_WITH_BASE = 4


def trial_dir(config: StudyConfig, number: int) -> Path:
    return config.study_dir / "trials" / f"{number:04d}"


def save_trial_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Only the trained parameters: the rest equal the base model's and are not copied."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.contiguous() for name, tensor in state.items()}
    write_whole(path, lambda tmp: save_file(tensors, str(tmp)))


def make_guard(prepared: Prepared, device: torch.device):
    """This worker's forgetting guard, built from the base facts measured once for the study
    (the base task keeps its own max length, and the study's split of its data), with the
    untouched model's observations of the parts the checks read, for their intervals."""
    config = prepared.config
    split = BaseSplit.from_dict(prepared.base.get("split"))
    model, processor = prepared.task.load_model(config.model, prepared.data.label_names,
                                                config.trust_remote_code)
    task = study_base_task(config, processor, prepared.base["max_length"], split)
    model.to(device)
    quick = observe(task, model, device, "quick")
    search = quick if quick_is_search(task) else observe(task, model, device, "search")
    observed = {"quick": quick, "search": search}
    return ForgettingGuard(task, prepared.base, observed, config.seed)


def make_preservation(prepared: Prepared, task) -> tuple[Preservation, PreservedTexts]:
    """This worker's preservation batches, with the study's stored targets, and the texts they
    come from (autoft.preserve.texts_to_preserve, as prepare_study chose them)."""
    config = prepared.config
    split = BaseSplit.from_dict(prepared.base["split"])
    processor = prepared.task.load_processor(config.model, config.trust_remote_code)
    preserved = texts_to_preserve(config.base, split, prepared.data, prepared.task, processor,
                                  config.seed)
    # never longer than the model reads: the base facts' max length is within its limit
    cost = Cost(max_length=min(Cost.max_length, prepared.base["max_length"]))
    return Preservation(task, preserved.texts, processor, config.study_dir / "preserve",
                        config.model, cost), preserved
def evaluation_interval(prepared: Prepared) -> int | None:
    """Samples between evaluations: the user's setting; with a base task, at least
    MIN_EVALUATIONS_WITH_BASE in the shortest run the space allows, so a trial sees the
    forgetting bar coming (the same number of samples for every trial, so steps compare);
    otherwise None, once an epoch."""
    config = prepared.config
    if config.eval_every_samples or not prepared.base:
        return config.eval_every_samples
    shortest = len(prepared.data.train) * prepared.space.lowest("epochs")
    return max(1, shortest // MIN_EVALUATIONS_WITH_BASE)


def worth_mixing(trial: optuna.Trial, evaluation: Evaluation, source: str) -> bool:
    """Whether a trial's curve from these weights may lead: weights clearly behind the best
    feasible trial so far are not mixed back (where a mix helped a feasible trial it moved the
    score by about its noise; it gains most on weights that scored well and forgot), and why is
    recorded as `kept_not_mixed` or `top_not_mixed`."""
    behind = against_the_best(trial.study, evaluation.value, evaluation.standard_error)
    if behind is None or not behind.worse:
        return True
    name = "kept" if source == "kept" else "best-scoring"
    TrialRecord.write(trial, **{f"{source}_not_mixed": f"its {name} weights are clearly behind "
                                f"the best feasible trial so far ({behind.numbers}), so they "
                                f"were not mixed back"})
    return False


class Objective:
    """Runs one trial: sample, load, adapt (autoft.adapters), train with reporting and pruning,
    record, save."""

    def __init__(self, prepared: Prepared, device: torch.device):
        self.prepared = prepared
        self.device = device
        set_precision(prepared.config.precision)  # this process computes in it from now
        self.base_check = make_guard(prepared, device) if prepared.base else None
        self.preservation = None  # built by the first trial with preserve_weight > 0

    def __call__(self, trial: optuna.Trial) -> float:
        config, data = self.prepared.config, self.prepared.data
        sampled = self.prepared.space.sample(trial)
        params = TrialParams.from_sampled(sampled)
        seed = trial_seed(config.seed, sampled)
        TrialRecord.write(trial, params=sampled, device=str(self.device),
                          precision=precision_name(self.device), host=socket.gethostname(),
                          seed=seed, threads=torch.get_num_threads(), adapter=params.adapter)
        torch.manual_seed(seed)  # the new head's initial weights, whatever ran before
        model, _ = self.prepared.task.load_model(config.model, data.label_names,
                                                 config.trust_remote_code)
        self.prepared.task.start_head(model, data)
        adapter = get_adapter(params.adapter)
        TrialRecord.write(
            trial, trainable_parameters=adapter.apply(model, params.trainable_layers, params)
        )
        if self.base_check is not None:
            self.base_check.on_start(trial, model, frozen_blocks(model, params.trainable_layers))
        loss_terms = self._preservation_loss(trial, model, params)
        guard = self.base_check
        # what the curve mixes toward: only where training can change what the base task reads
        untouched = (adapter.kept_weights(model) if guard is not None and not guard.untouched
                     and self.prepared.space.mixes else None)
        evaluations: list[dict] = []

        def on_evaluation(evaluation: Evaluation) -> None:
            evaluations.append(dataclasses.asdict(evaluation))
            TrialRecord.write(trial, evaluations=evaluations)
            log.info(
                "trial %d evaluation %d after %d samples: %s %.4f, train loss %.4f",
                trial.number,
                evaluation.step,
                evaluation.samples_seen,
                data.metric,
                evaluation.value,
                evaluation.train_loss,
            )
            trial.report(evaluation.value, evaluation.step)  # the pruner knows the direction
            if guard is not None:
                guard.after_evaluation(trial, any(e["keepable"] for e in evaluations))
            if trial.should_prune():
                reason = prune_reason(trial.study, evaluations)
                TrialRecord.write(trial, prune_reason=reason)
                raise optuna.TrialPruned(f"{data.metric} at step {evaluation.step}: {reason}")
            if reason := plateau(evaluations, len(data.train) * params.epochs,
                                 direction_sign(self.prepared.direction)):
                TrialRecord.write(trial, stop_reason=reason)
                log.info("trial %d: %s", trial.number, reason)
                raise StopTraining

        pruned = None
        try:
            result = train_trial(
                model,
                data,
                params,
                self.device,
                self.prepared.pad_id,
                seed=seed,
                on_evaluation=on_evaluation,
                eval_every_samples=evaluation_interval(self.prepared),
                cache=PrefixCache(config.study_dir / "cache") if config.cache else None,
                loss_terms=loss_terms,
                keepable=None if guard is None else functools.partial(
                    guard.keepable, trial, model, self.device),
            )
        except StopTraining as stopped:
            result = stopped.result
        except optuna.TrialPruned as error:
            result, pruned = error.result, error
        except TrialFailed as failed:
            self._fail(trial, str(failed))
        except torch.OutOfMemoryError:
            self._fail(trial, "out of memory")
        if result.best is None and pruned is None:
            self._fail(trial, "training ended before its first evaluation")
        mixed_passes, weights = False, (result.best.step if result.best else 0, TUNED)
        if untouched is not None and (pruned is None or isinstance(pruned, ForgettingPruned)):
            mixed_passes, weights = self._curve(trial, model, adapter, untouched, result)
        if pruned is not None and not mixed_passes:
            self._record(trial, result)
            if guard is not None:
                guard.on_prune(trial)
            raise pruned
        if pruned is not None:
            TrialRecord.write(trial, stop_reason=f"{TrialRecord.of(trial).prune_reason}; mixed "
                              f"back toward the untouched weights it keeps the bar")
        best = self._record(trial, result)
        if guard is not None:
            adapter.restore(model, result.best_state)
            guard.on_finish(trial, model, result.best_state, self.device, weights)
        return best

    def _preservation_loss(self, trial: optuna.Trial, model, params: TrialParams) -> list:
        """The preservation loss term, when the trial asks for one and trains what the base task
        reads (prepare_study holds preserve_weight at 0 where there is nothing to preserve)."""
        if params.preserve_weight <= 0:
            return []
        if self.base_check.untouched:
            TrialRecord.write(trial, preserve_targets="skipped: nothing it trains is read")
            return []
        if self.preservation is None:
            self.preservation = make_preservation(self.prepared, self.base_check.task)
        preservation, preserved = self.preservation
        term, note = preservation.loss(
            model, params.preserve_weight, self.base_check.frozen, self.device)
        TrialRecord.write(trial, preserve_targets=note, preserve_on=preserved.source)
        return [term]

    def _curve(self, trial: optuna.Trial, model, adapter, untouched: dict,
               result: TrialResult) -> tuple[bool, tuple[int, float]]:
        """Weight-space interpolation (autoft.interpolate) of every trial with a base task: its
        kept weights' trained body, and its best-scoring weights' when the guard did not let it
        keep them, mixed back toward the untouched body at the space's mixing weights, each point
        scored and quick-checked, unless they are clearly behind the best feasible trial so far
        (`worth_mixing`). The trial keeps the best point that passes the bar (none passing, its
        kept weights as trained). Every point is recorded (`interpolation`:
        autoft.interpolate.MixPoint), the choice as `mix` and `mixed_from`. True when the
        chosen point passes the bar, and the chosen weights as the guard's checks name them
        (their checkpoint's evaluation step, the mix)."""
        head = frozenset(split_parameters(model).head)
        curves = [("kept", result.best_state, result.best)]
        if result.top_state and result.top is not result.best:
            curves.append(("top", result.top_state, result.top))
        if not set(result.best_state) - head:  # only the head trained: nothing to mix
            TrialRecord.write(trial, interpolation=[])
            return result.has_keepable, (result.best.step, TUNED)
        prepared, guard = self.prepared, self.base_check

        def score() -> float:
            return evaluate(model, prepared.data, prepared.pad_id, self.device,
                            result.validation_states)

        def check(step: int, mix: float) -> tuple[float | None, bool]:
            checked = guard.checks.get((step, mix))  # each evaluation's, at mix TUNED
            kept = (checked or guard.quick(model, self.device, (step, mix))).retention
            return kept, guard.passes(kept)

        began = time.perf_counter()
        points, states, steps = [], {}, {}
        for source, tuned, evaluation in curves:
            adapter.restore(model, tuned)
            states[source], steps[source] = tuned, evaluation.step
            at = functools.partial(check, evaluation.step)
            mixes = prepared.space.mixes if worth_mixing(trial, evaluation, source) else ()
            as_tuned = MixPoint(TUNED, evaluation.value, *at(TUNED), source)
            points += [as_tuned, *interpolate(model, untouched, tuned, head, mixes, score, at,
                                              source, as_tuned)]
        chosen = best_mix(points, prepared.direction)
        if not chosen.keepable:  # no point passes: the trial stays as it trained, infeasible
            chosen = points[0]
        TrialRecord.write(trial, interpolation=[dataclasses.asdict(p) for p in points],
                          interpolation_seconds=round(time.perf_counter() - began, 3),
                          mix=chosen.mix, mixed_from=chosen.source)
        if (chosen.mix, chosen.source) != (TUNED, "kept"):
            result.best_state = mixed_state(untouched, states[chosen.source], head, chosen.mix)
            result.interpolated = chosen.value
            adapter.restore(model, result.best_state)
            result.best_details = score_details(
                prepared.task, prepared.data,
                predict(model, prepared.data, prepared.pad_id, self.device,
                        result.validation_states))
            log.info("trial %d keeps its %s weights mixed %.2f of the way from the untouched "
                     "ones: %s %.4f", trial.number, "kept" if chosen.source == "kept" else
                     "best-scoring", chosen.mix, prepared.data.metric, chosen.value)
        return chosen.keepable, (steps[chosen.source], chosen.mix)

    def _fail(self, trial: optuna.Trial, reason: str) -> None:
        TrialRecord.write(trial, fail_reason=reason, counts_toward_budget=True)
        raise TrialFailed(reason)

    def _record(self, trial: optuna.Trial, result) -> float:
        """Store what the trial produced; its weights are saved before it counts as finished."""
        best = result.best
        value = result.value
        path = trial_dir(self.prepared.config, trial.number) / "trainable.safetensors"
        try:
            save_trial_weights(path, result.best_state)
        except OSError as error:
            if not is_disk_full(error):
                raise
            self._fail(trial, f"could not save its weights to {path}: the disk is full")
        TrialRecord.write(trial, checkpoint=str(path.resolve()), best_value=value,
                          best_step=best.step, train_seconds=round(result.train_seconds, 3),
                          samples_per_second=round(result.samples_per_second, 1))
        if result.best_details:
            TrialRecord.write(trial, score_details=result.best_details)
        if result.head_first_seconds:
            TrialRecord.write(trial, head_first_seconds=round(result.head_first_seconds, 3))
        TrialRecord.write(trial, cache_used=result.cache_used, cache_note=result.cache_note,
                          cache_seconds=round(result.cache_seconds, 3))
        return value
