"""The Optuna study: storage, sampler, pruner, the objective that runs one trial, the total-trial
budget, and resuming. Everything a trial learns goes into the storage as user attributes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import importlib.util
import json
import logging
import os
import socket
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import optuna
import torch
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from safetensors.torch import save_file
from sqlalchemy.engine import make_url

from autoft.adapters import get_adapter
from autoft.cache import PrefixCache
from autoft.config import BaseTaskConfig, StudyConfig
from autoft.data import Split, TargetData
from autoft.errors import UsageError
from autoft.interpolate import TUNED, MixPoint, best_mix, interpolate, mixed_state
from autoft.model import load_model, split_parameters
from autoft.precision import precision_name, set_precision
from autoft.presets import search_settings
from autoft.space import SearchSpace
from autoft.train import (
    Evaluation,
    StopTraining,
    TrialFailed,
    TrialParams,
    TrialResult,
    evaluate,
    frozen_blocks,
    train_trial,
    trial_seed,
)

log = logging.getLogger("autoft")

# A worker's running trial writes a heartbeat this often; one silent for GRACE_SECONDS (two
# heartbeats, Optuna's own default) is stale and its config runs again. AUTOFT_HEARTBEAT_SECONDS
# shortens both, so tests of killed workers take seconds.
HEARTBEAT_SECONDS = int(os.environ.get("AUTOFT_HEARTBEAT_SECONDS", "30"))
GRACE_SECONDS = 2 * HEARTBEAT_SECONDS
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
COUNTS_TOWARD_BUDGET = "counts_toward_budget"
MIN_EVALUATIONS_WITH_BASE = 4
# User attributes a queued trial starts with: which of the space's starts it runs (0 is the
# default config) and which trial's config it runs again.
START = "start"
RETRY_OF = "retry_of"
# A config whose trial went stale this many times is not queued again: it likely kills its worker.
MAX_ATTEMPTS = 3
REPEATED_FAILURES = 3  # this many trials in a row failing alike stop the study


@dataclass(frozen=True)
class Prepared:
    """What every worker needs to run trials, computed once per study and kept on disk."""

    config: StudyConfig
    data: TargetData
    space: SearchSpace
    depth: int
    pad_id: int
    base: dict | None = None


def redact(url: str) -> str:
    """A storage URL safe to print: any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def sqlite_path(study_dir: Path) -> Path:
    """The default storage: a SQLite file in the study folder."""
    return Path(study_dir) / "study.db"


def storage_url(config: StudyConfig) -> str:
    """The user's storage, or the SQLite file in the study folder."""
    return config.storage or f"sqlite:///{sqlite_path(config.study_dir).resolve()}"


def with_installed_driver(url: str) -> str:
    """SQLAlchemy 2.1 reads postgresql:// as psycopg 3; use psycopg2 when only that is installed
    (autoft's postgres extra), so the URL a user copies from Optuna's docs works."""
    if not url.startswith("postgresql://"):
        return url
    if importlib.util.find_spec("psycopg") or not importlib.util.find_spec("psycopg2"):
        return url
    return "postgresql+psycopg2://" + url[len("postgresql://") :]


@contextlib.contextmanager
def sqlite_lock(database: str):
    """An exclusive fcntl lock on a file beside a SQLite database, shared by every process of its
    studies on this machine; the kernel frees it when its holder dies, even by kill -9."""
    with open(f"{database}.start-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_storage(url: str) -> RDBStorage:
    """An RDB storage with heartbeats, so trials of a killed worker are found and run again.

    A new SQLite file gets its tables under the file lock beside it: two processes creating
    them at once would otherwise both insert Alembic's version row, and one would fail.
    """
    url = with_installed_driver(url)
    sqlite = url.startswith("sqlite")
    engine_kwargs = {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
    try:
        database = make_url(url).database if sqlite else None
        creating = (sqlite_lock(database) if database not in (None, "", ":memory:")
                    else contextlib.nullcontext())
        with creating, warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=run_stale_again,
            )
    except Exception as error:  # SQLAlchemy raises many kinds; the user needs one sentence
        reason = str(error).splitlines()[0]
        raise UsageError(
            f"Cannot open storage {redact(url)} ({reason}); check the URL and that "
            f"the database server is running."
        ) from None


def make_sampler(config: StudyConfig) -> optuna.samplers.TPESampler:
    """Seeded TPE whose random start-up fits the budget, aware of params that act together;
    `group` models each set of params that appear together (LoRA's only under adapter lora)."""
    startup = max(2, min(10, config.n_trials // 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=config.seed, n_startup_trials=startup, multivariate=True, group=True)


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    """Median pruning after a few complete trials, so early trials are not all cut."""
    return optuna.pruners.MedianPruner(
        n_startup_trials=config.pruner_startup, n_warmup_steps=config.pruner_warmup_steps
    )


def open_study(config: StudyConfig, storage: RDBStorage | None = None) -> optuna.Study:
    """Create the study or load it to resume; same name and storage means the same study."""
    return optuna.create_study(
        storage=storage or open_storage(storage_url(config)),
        study_name=config.name,
        direction="maximize",
        sampler=make_sampler(config),
        pruner=make_pruner(config),
        load_if_exists=True,
    )


def trial_config(trial: optuna.trial.FrozenTrial) -> dict:
    """The searched params a trial ran, or was queued to run if it stopped before asking."""
    return {**trial.system_attrs.get("fixed_params", {}), **trial.params}


def to_run_again(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Interrupted trials (a signal or the hard time limit) whose config is not queued again yet,
    the default config's first."""
    queued = {t.user_attrs.get(RETRY_OF) for t in trials}
    waiting = [
        t for t in trials
        if t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") == "interrupted"
        and t.number not in queued and trial_config(t)
    ]
    return sorted(waiting, key=lambda t: (t.user_attrs.get(START) != 0, t.number))


def queue_again(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue a stopped trial's config as a new trial that starts clean: only its params and
    where it came from, none of the stopped attempt's measurements."""
    attrs = {RETRY_OF: trial.number}
    if START in trial.user_attrs:
        attrs[START] = trial.user_attrs[START]
    study.enqueue_trial(trial_config(trial), user_attrs=attrs)


def run_stale_again(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna calls this once for each trial it finds stale (its worker died)."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    attempts, earlier = 1, trial
    while RETRY_OF in earlier.user_attrs and earlier.user_attrs[RETRY_OF] in by_number:
        attempts, earlier = attempts + 1, by_number[earlier.user_attrs[RETRY_OF]]
    if attempts >= MAX_ATTEMPTS:
        log.warning("trial %d's worker died; workers died on its config %d times, so it is not "
                    "run again", trial.number, attempts)
        return
    queue_again(study, trial)


def queue_next_config(study: optuna.Study) -> None:
    """Choose the config the next asked trial runs; call it under the start lock.

    Optuna's ask pops waiting trials in the order they were queued, so configs are queued one
    at a time, when none waits: an interrupted trial's config first (the default's before any
    other), then the space's next start (the default is start 0), then none, and the sampler
    chooses.
    """
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return
    again = to_run_again(trials)
    if again:
        queue_again(study, again[0])
        return
    taken = {t.user_attrs.get(START) for t in trials}
    for index, params in enumerate(study.user_attrs.get("starts", [])):
        if index not in taken:
            study.enqueue_trial(params, user_attrs={START: index})
            return


def counts_toward_budget(trial: optuna.trial.FrozenTrial) -> bool:
    """Complete and pruned trials, and failures that were the trial's own (not interrupted or
    stale ones, which are run again)."""
    return trial.state in FINISHED or (
        trial.state == TrialState.FAIL and bool(trial.user_attrs.get(COUNTS_TOWARD_BUDGET))
    )


def budget_used(study: optuna.Study) -> int:
    """Finished trials that count toward n_trials."""
    return sum(1 for t in study.get_trials(deepcopy=False) if counts_toward_budget(t))


def budget_left(study: optuna.Study, n_trials: int) -> int:
    """Trials still to start: the budget minus finished and running ones."""
    running = sum(1 for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING)
    return n_trials - budget_used(study) - running


def repeated_failure(study: optuna.Study, since: datetime) -> str | None:
    """A sentence when the last REPEATED_FAILURES trials started since `since` all failed for the
    same reason (interruptions aside): a setting or a bug, which more trials would only repeat."""
    ended = sorted(
        (
            t for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.FAIL))
            if t.datetime_start and t.datetime_start >= since and t.datetime_complete
        ),
        key=lambda t: t.datetime_complete,
    )[-REPEATED_FAILURES:]
    reasons = {t.user_attrs.get("fail_reason") if t.state == TrialState.FAIL else None
               for t in ended}
    reason = reasons.pop() if len(ended) == REPEATED_FAILURES and len(reasons) == 1 else None
    if reason in (None, "interrupted"):
        return None
    numbers = ", ".join(str(t.number) for t in ended)
    return (
        f"Study '{study.study_name}' stopped: trials {numbers} all failed with \"{reason}\", so "
        f"the next would most likely fail alike; fix that cause (each trial's log is in the "
        f"study's logs/ folder) and run the same command again."
    )


def check_not_stopped(study: optuna.Study, since: datetime, n_trials: int) -> None:
    """After the workers end: a UsageError when repeated failures, not the budget, ended them."""
    stopped = repeated_failure(study, since)
    if stopped and budget_left(study, n_trials) > 0:
        raise UsageError(stopped)


def trial_dir(config: StudyConfig, number: int) -> Path:
    return config.study_dir / "trials" / f"{number:04d}"


def save_trial_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Only the trained parameters: the rest equal the base model's and are not copied."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(tmp))
    tmp.replace(path)


def load_tokenizer(config: StudyConfig):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(config.model, trust_remote_code=config.trust_remote_code)


def make_guard(prepared: Prepared):
    """This worker's forgetting guard, built from the base facts measured once for the study."""
    from autoft.audit import BaseSplit
    from autoft.guard import ForgettingGuard, build_task

    config = prepared.config
    split = BaseSplit.from_dict(prepared.base.get("split"))
    return ForgettingGuard(build_task(config, load_tokenizer(config), prepared.base["max_length"],
                                      split),
                           prepared.base)


def make_preservation(prepared: Prepared, task):
    """This worker's preservation batches, with the study's stored targets (autoft.preserve)."""
    from autoft.audit import BaseSplit
    from autoft.forgetting import preservation_texts
    from autoft.preserve import Preservation

    config = prepared.config
    split = BaseSplit.from_dict(prepared.base["split"])
    return Preservation(task, preservation_texts(config.base, split), load_tokenizer(config),
                        config.study_dir / "preserve", config.model)
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


class Objective:
    """Runs one trial: sample, load, adapt (freeze or LoRA), train with reporting and pruning,
    record, save."""

    def __init__(self, prepared: Prepared, device: torch.device):
        self.prepared = prepared
        self.device = device
        set_precision(prepared.config.precision)  # this process computes in it from now
        self.base_check = make_guard(prepared) if prepared.base else None
        self.preservation = None  # built by the first trial with preserve_weight > 0

    def __call__(self, trial: optuna.Trial) -> float:
        config, data = self.prepared.config, self.prepared.data
        sampled = self.prepared.space.sample(trial)
        params = TrialParams(**sampled)
        trial.set_user_attr("params", sampled)
        trial.set_user_attr("device", str(self.device))
        trial.set_user_attr("precision", precision_name(self.device))
        trial.set_user_attr("host", socket.gethostname())
        seed = trial_seed(config.seed, sampled)
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("threads", torch.get_num_threads())  # CPU sums depend on it
        torch.manual_seed(seed)  # the new head's initial weights, whatever ran before
        trial.set_user_attr("adapter", params.adapter)
        model, _ = load_model(config.model, data.label_names, config.trust_remote_code)
        adapter = get_adapter(params.adapter)
        trial.set_user_attr(
            "trainable_parameters", adapter.apply(model, params.trainable_layers, params)
        )
        if self.base_check is not None:
            self.base_check.on_start(trial, model, frozen_blocks(model, params.trainable_layers))
        loss_terms = self._preservation_loss(trial, model, params)
        untouched = adapter.kept_weights(model) if params.interpolate else None
        # An interpolating trial trains to its end (unless the median stops it) and checks its
        # mixed points afterwards: mixing is what brings back the skill a check would stop it for.
        guard = None if params.interpolate else self.base_check
        evaluations: list[dict] = []

        def on_evaluation(evaluation: Evaluation) -> None:
            evaluations.append(dataclasses.asdict(evaluation))
            trial.set_user_attr("evaluations", evaluations)
            log.info(
                "trial %d evaluation %d after %d samples: %s %.4f, train loss %.4f",
                trial.number,
                evaluation.step,
                evaluation.samples_seen,
                data.metric,
                evaluation.value,
                evaluation.train_loss,
            )
            trial.report(evaluation.value, evaluation.step)
            if guard is not None:
                guard.after_evaluation(trial, any(e["keepable"] for e in evaluations))
            if trial.should_prune():
                trial.set_user_attr("prune_reason", "below the median of earlier trials")
                raise optuna.TrialPruned(
                    f"{data.metric} {evaluation.value:.4f} at step "
                    f"{evaluation.step} is below the median"
                )

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
        except optuna.TrialPruned as pruned:
            self._record(trial, pruned.result)
            if self.base_check is not None:
                self.base_check.on_prune(trial)
            raise
        except TrialFailed as failed:
            self._fail(trial, str(failed))
        except torch.OutOfMemoryError:
            self._fail(trial, "out of memory")
        if result.best is None:
            self._fail(trial, "training ended before its first evaluation")
        if untouched is not None:
            self._interpolate(trial, model, adapter, untouched, result)
        best = self._record(trial, result)
        if self.base_check is not None:
            adapter.restore(model, result.best_state)
            self.base_check.on_finish(trial, model, result.best_state, self.device)
        return best

    def _preservation_loss(self, trial: optuna.Trial, model, params: TrialParams) -> list:
        """The preservation loss term, when the trial asks for one and trains what the base task
        reads (prepare_study holds preserve_weight at 0 where there is nothing to preserve)."""
        if params.preserve_weight <= 0:
            return []
        if self.base_check.untouched:
            trial.set_user_attr("preserve_targets", "skipped: nothing it trains is read")
            return []
        if self.preservation is None:
            self.preservation = make_preservation(self.prepared, self.base_check.task)
        term, note = self.preservation.loss(
            model, params.preserve_weight, self.base_check.frozen, self.device)
        trial.set_user_attr("preserve_targets", note)
        return [term]

    def _interpolate(self, trial: optuna.Trial, model, adapter, untouched: dict,
                     result: TrialResult) -> None:
        """Weight-space interpolation (autoft.interpolate): the kept weights' trained body mixed
        back toward the untouched one at the space's mixing weights, each point scored and
        checked; the trial keeps the best point that passes the bar. Every point, the tuned one
        (mix 1.0) first, is recorded (`interpolation`), the chosen mixing weight as `mix`."""
        tuned = result.best_state
        adapter.restore(model, tuned)
        head = frozenset(split_parameters(model).head)
        if not set(tuned) - head:
            trial.set_user_attr("interpolation", [])
            return
        prepared, guard = self.prepared, self.base_check

        def score() -> float:
            data = prepared.data
            return evaluate(model, data.validation, data.metric, prepared.pad_id, self.device)

        def check() -> tuple[float | None, bool]:
            if guard is None:
                return None, True
            kept = guard.quick_retention(model, self.device)
            return kept, guard.passes(kept)

        points = [MixPoint(TUNED, result.best.value, *check()),
                  *interpolate(model, untouched, tuned, head, prepared.space.mixes, score, check)]
        chosen = best_mix(points)
        trial.set_user_attr("interpolation", [dataclasses.asdict(p) for p in points])
        trial.set_user_attr("mix", chosen.mix)
        if chosen.mix != TUNED:
            result.best_state = mixed_state(untouched, tuned, head, chosen.mix)
            result.interpolated = chosen.value
            log.info("trial %d keeps its weights mixed %.2f of the way from the untouched ones: "
                     "%s %.4f", trial.number, chosen.mix, prepared.data.metric, chosen.value)

    def _fail(self, trial: optuna.Trial, reason: str) -> None:
        trial.set_user_attr("fail_reason", reason)
        trial.set_user_attr(COUNTS_TOWARD_BUDGET, True)
        raise TrialFailed(reason)

    def _record(self, trial: optuna.Trial, result) -> float:
        """Store what the trial produced; its weights are saved before it counts as finished."""
        best = result.best
        value = result.value
        path = trial_dir(self.prepared.config, trial.number) / "trainable.safetensors"
        save_trial_weights(path, result.best_state)
        trial.set_user_attr("checkpoint", str(path.resolve()))
        trial.set_user_attr("best_value", value)
        trial.set_user_attr("best_step", best.step)
        trial.set_user_attr("train_seconds", round(result.train_seconds, 3))
        trial.set_user_attr("samples_per_second", round(result.samples_per_second, 1))
        if result.head_first_seconds:
            trial.set_user_attr("head_first_seconds", round(result.head_first_seconds, 3))
        trial.set_user_attr("cache_used", result.cache_used)
        trial.set_user_attr("cache_note", result.cache_note)
        trial.set_user_attr("cache_seconds", round(result.cache_seconds, 3))
        return value


def record_study_facts(study: optuna.Study, prepared: Prepared) -> None:
    """What the report, the export and remote workers need, kept in the storage itself."""
    config, data = prepared.config, prepared.data
    facts = {
        "model": config.model,
        "label_names": data.label_names,
        "depth": prepared.depth,
        "metric": data.metric,
        "notes": data.notes,
        "trust_remote_code": config.trust_remote_code,
        "default_params": prepared.space.default_params(),
        "starts": prepared.space.start_params(),
        "settings": search_settings(config),
        "base": prepared.base,
        "config": recordable_config(config),
        "train_examples": len(data.train),
        "data_description": (
            f"{Path(config.train).name} ({len(data.train)} training and "
            f"{len(data.validation)} validation examples, labels "
            f"{', '.join(data.label_names)})"
        ),
    }
    for key, value in facts.items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)


def recordable_config(config: StudyConfig) -> dict:
    """The study config as plain values for the storage, its storage password hidden."""
    values = dataclasses.asdict(config)
    values.pop("origins")
    if values["storage"]:
        values["storage"] = redact(values["storage"])
    return values


def recorded_config(study: optuna.Study, studies_dir: str, storage: str) -> StudyConfig:
    """The config `autoft search` recorded in the study, for a worker joining it from anywhere."""
    values = dict(study.user_attrs.get("config") or {})
    if not values:
        raise UsageError(
            f"Study '{study.study_name}' records no config (made by an older autoft?); start it "
            f"with autoft search."
        )
    base = values.pop("base")
    values.update(studies_dir=studies_dir, storage=storage)
    return StudyConfig(**values, base=BaseTaskConfig(**base) if base else None)


def load_study(name: str, studies_dir: str, storage: str | None) -> optuna.Study:
    """An existing study, for status, report and export; a clear error when there is none."""
    path = sqlite_path(Path(studies_dir) / name)
    url = storage or f"sqlite:///{path.resolve()}"
    if url.startswith("sqlite") and not path.is_file():
        raise UsageError(
            f"No study '{name}' in {studies_dir}/ (no {name}/study.db); check "
            f"--study and --studies-dir."
        )
    try:
        return optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        raise UsageError(f"Storage {redact(url)} holds no study '{name}'; check --study.") from None


def save_prepared(prepared: Prepared, folder: Path) -> None:
    """Keep the tokenized data and resolved space beside the storage, for workers and resumes."""
    folder.mkdir(parents=True, exist_ok=True)
    data = prepared.data
    content = {
        "train": dataclasses.asdict(data.train),
        "validation": dataclasses.asdict(data.validation),
        "label_names": data.label_names,
        "metric": data.metric,
        "max_length": data.max_length,
        "notes": data.notes,
        "depth": prepared.depth,
        "pad_id": prepared.pad_id,
        "base": prepared.base,
    }
    tmp = folder / f"target.json.{os.getpid()}.tmp"  # two processes may prepare one new study
    tmp.write_text(json.dumps(content))
    tmp.replace(folder / "target.json")


def load_prepared_data(folder: Path) -> tuple[TargetData, int, int, dict | None] | None:
    """The tokenized data saved by `save_prepared`, or None when there is none yet; a ValueError
    when the file is damaged (truncated, edited)."""
    path = folder / "target.json"
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text())
        data = TargetData(
            train=Split(**content["train"]),
            validation=Split(**content["validation"]),
            label_names=content["label_names"],
            metric=content["metric"],
            max_length=content["max_length"],
            notes=content["notes"],
        )
        return data, content["depth"], content["pad_id"], content.get("base")
    except (KeyError, TypeError) as error:
        raise ValueError(f"{type(error).__name__}: {error}") from None
