"""The sampler and the pruner a study's trials run with (`policies`): TPE seeded per trial,
whose random start-up fits the budget, and the pruner autoft.pruning builds.
"""

from __future__ import annotations

import hashlib
import warnings

import optuna

from autoft.config import StudyConfig
from autoft.pruning import make_pruner


class TrialSeededSampler(optuna.samplers.TPESampler):
    """TPE whose random draws for a trial are seeded by the study seed and the trial's number.

    One seed per sampler made every process that opened the study draw the same numbers: two
    `autoft search` runs on one SQLite study sampled identical configs for trials 1 and 2, and a
    seed per process made a parallel study irreproducible. Seeded per trial, concurrent trials
    differ and a trial's config depends only on the seed, its number and the trials before it.
    Optuna has no public hook for this; `before_trial` reseeds the two generators TPE holds.
    """

    def __init__(self, seed: int, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.study_seed = seed

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        digest = hashlib.sha256(f"{self.study_seed}:{trial.number}".encode()).digest()
        seed = int.from_bytes(digest[:4], "big")
        self._rng.rng.seed(seed)
        self._random_sampler._rng.rng.seed(seed)
        super().before_trial(study, trial)


def make_sampler(seed: int, n_trials: int) -> TrialSeededSampler:
    """Seeded TPE whose random start-up fits the budget, aware of params that act together;
    `group` models each set of params that appear together (LoRA's only under adapter lora)."""
    startup = max(2, min(10, n_trials // 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return TrialSeededSampler(seed, n_startup_trials=startup, multivariate=True, group=True)


def policies(config: StudyConfig) -> tuple[TrialSeededSampler, optuna.pruners.BasePruner]:
    """The sampler and the pruner the study's trials are run with."""
    return (make_sampler(config.seed, config.n_trials),
            make_pruner(config.pruner, config.pruner_startup, config.pruner_warmup_steps))
