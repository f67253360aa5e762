"""Greedy soups (Wortsman et al. 2022): after a search, the weights of its best feasible trials
averaged, each next-best trial added only while validation improves and the forgetting bar holds.

Owns building, scoring and checking the soup from a finished study's trials, and its record (the
study's user attribute `soup`); its weights, when it wins, in `studies/<name>/soup/`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState
from safetensors.torch import load_file, save_file

from autoft.audit import recorded_base_task
from autoft.describe import describe_numbers
from autoft.files import write_whole
from autoft.guard import ForgettingGuard, observe
from autoft.precision import set_precision
from autoft.prepared import load_prepared_data
from autoft.record import TrialRecord
from autoft.tasks import recorded_task
from autoft.train import evaluate
from autoft.trials import best_feasible, is_feasible, score_sign

__all__ = ["CANDIDATES", "Judge", "Step", "average", "cook_soup", "greedy", "soup_path"]

CANDIDATES = 5  # the best feasible complete trials tried, best first: a few evaluations at most


@dataclass(frozen=True)
class Step:
    """One candidate's turn: the soup's validation score with it added, the retention of that
    soup (None when not checked: its score did not improve, or the study has no base task) and
    whether it joined."""

    number: int
    value: float
    retention: float | None
    added: bool


def greedy(ranked: list[int], score: Callable[[list[int]], float],
           check: Callable[[list[int]], tuple[float | None, bool]], sign: int = 1) -> list[Step]:
    """The greedy soup of `ranked` (trial numbers, best first): start from the first, then add
    each next one only when the soup with it scores better (by `sign`) and `check` says it still
    keeps the bar. The first step is the start, added without conditions; the members are the
    numbers of the added steps."""
    members = ranked[:1]
    steps = [Step(ranked[0], score(members), check(members)[0], True)]
    best = steps[0].value
    for number in ranked[1:]:
        value = score([*members, number])
        improves = sign * value > sign * best
        kept, passes = check([*members, number]) if improves else (None, False)
        added = improves and passes
        steps.append(Step(number, value, kept, added))
        if added:
            members, best = [*members, number], value
    return steps


def average(states: list[dict[str, torch.Tensor]], untouched: dict[str, torch.Tensor]
            ) -> dict[str, torch.Tensor]:
    """The mean of each parameter any of `states` holds (a trial's checkpoint holds only what it
    trained), a state lacking it counting as the untouched value; a count (a BatchNorm's batches
    tracked) is the first holder's."""
    names = sorted(set().union(*states))
    soup = {}
    for name in names:
        values = [state.get(name, untouched[name]) for state in states]
        soup[name] = (torch.stack([v.float() for v in values]).mean(0).to(values[0].dtype)
                      if values[0].is_floating_point()
                      else next(state[name] for state in states if name in state))
    return soup


def soup_path(study_dir: Path) -> Path:
    return Path(study_dir) / "soup" / "trainable.safetensors"


def candidates(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The best CANDIDATES feasible complete trials whose weights are on this machine, best
    first."""
    sign = score_sign(study)
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if is_feasible(t) and t.value is not None
              and Path(TrialRecord.of(t).checkpoint or "").is_file()]
    return sorted(trials, key=lambda t: -sign * t.value)[:CANDIDATES]


class Judge:
    """Scores soups of a study's trials on its prepared validation data and checks them with
    the search's full forgetting check, in one model that each soup is loaded into."""

    def __init__(self, study: optuna.Study, study_dir: Path, trials: list):
        self.attrs = attrs = study.user_attrs
        config = attrs["config"]
        set_precision(config.get("precision", "auto"))  # scored as the trials were
        self.device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        self.data, _, self.pad_id, _ = load_prepared_data(Path(study_dir) / "prepared")
        self.model, self.tokenizer = recorded_task(attrs).load_model(
            attrs["model"], attrs["label_names"], config["trust_remote_code"])
        self.model.to(self.device)
        records = {t.number: TrialRecord.of(t) for t in trials}
        self.trained = {n: load_file(record.checkpoint) for n, record in records.items()}
        self.recorded = {n: record.retention for n, record in records.items()}
        self.intervals = {(n,): record.retention_interval for n, record in records.items()}
        names = set().union(*self.trained.values())
        self.untouched = {n: v.detach().cpu().clone() for n, v in self.model.state_dict().items()
                          if n in names}  # beside the checkpoints, which load on the CPU
        self.base = attrs.get("base")

    @functools.cached_property
    def guard(self) -> ForgettingGuard:
        """The search's forgetting guard, built once a soup first needs checking (often none
        scores better), with the untouched model's observations for its intervals."""
        task = recorded_base_task(self.attrs, self.tokenizer)
        self.model.load_state_dict(self.untouched, strict=False)  # the untouched model again
        observed = {"search": observe(task, self.model, self.device, "search")}
        return ForgettingGuard(task, self.base, observed, self.attrs["config"]["seed"])

    def soup(self, members: list[int]) -> dict[str, torch.Tensor]:
        return average([self.trained[n] for n in members], self.untouched)

    def _load(self, members: list[int]) -> None:
        self.model.load_state_dict({**self.untouched, **self.soup(members)}, strict=False)

    def score(self, members: list[int]) -> float:
        self._load(members)
        return evaluate(self.model, self.data, self.pad_id, self.device)

    def check(self, members: list[int]) -> tuple[float | None, bool]:
        """The soup's retention and whether it keeps the bar, by the full check that decided
        the trials' feasibility (its interval kept in `intervals`); (None, True) without a base
        task. A lone trial passed that check at its end (it is feasible): its recorded one."""
        if not self.base:
            return None, True
        if len(members) == 1:
            return self.recorded[members[0]], True
        guard = self.guard
        self._load(members)
        check = guard.measure(self.model, self.device, "search")
        self.intervals[tuple(members)] = [check.low, check.high]
        return check.retention, guard.passes(check.retention)


def cook_soup(study: optuna.Study, study_dir: Path, echo=print) -> dict | None:
    """Build the greedy soup of the study's best feasible trials, scored on the prepared
    validation data and checked as the search checked trials, and record the outcome (`soup`
    user attribute; its weights in soup/ when it beats the best trial). None when fewer than two
    trials can be averaged."""
    began = time.perf_counter()
    ranked = candidates(study)
    if len(ranked) < 2:
        return None
    echo(f"Trying a greedy soup of trials {describe_numbers([t.number for t in ranked])} "
         f"(weights averaged) ...")
    judge = Judge(study, study_dir, ranked)
    sign = score_sign(study)
    steps = greedy([t.number for t in ranked], judge.score, judge.check, sign)
    members = [s.number for s in steps if s.added]
    final = next(s for s in reversed(steps) if s.added)
    best = best_feasible(study)  # the answer otherwise, even if its weights are not here
    won = len(members) > 1 and sign * final.value > sign * best.value
    outcome = {"members": members, "candidates": [t.number for t in ranked],
               "value": final.value, "retention": final.retention,
               "retention_interval": judge.intervals.get(tuple(members)),
               "best_trial": best.number,
               "best_value": best.value, "won": won, "steps": [asdict(s) for s in steps],
               "checkpoint": None}
    path = soup_path(study_dir)
    if won:
        state = {n: v.contiguous() for n, v in judge.soup(members).items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_whole(path, lambda tmp: save_file(state, str(tmp)))
        outcome["checkpoint"] = str(path.resolve())
    else:
        path.unlink(missing_ok=True)  # an earlier search's soup, beaten since
    outcome["seconds"] = round(time.perf_counter() - began, 3)
    study.set_user_attr("soup", outcome)
    metric = study.user_attrs["metric"]
    echo(f"  the soup of trials {describe_numbers(members)} scored {metric} {final.value:.4f}, "
         f"the best trial {best.value:.4f}: it is the answer ({outcome['seconds']:.1f} s)" if won
         else f"  no soup beat the best trial ({metric} {best.value:.4f}; "
         f"{outcome['seconds']:.1f} s)")
    return outcome
