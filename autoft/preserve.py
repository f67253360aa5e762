"""The preservation loss (`preserve_weight`): texts run through the trial's model, and their
distance to the untouched model's output, in what the base task reads, joins the loss. The texts
are base-side (base.preserve_data, or base items no check reads) or, with none, the task's own
training texts (Learning without Forgetting): `texts_to_preserve` chooses, in one place.

The untouched outputs (targets) are computed once per study, by the first trial that needs them
while its model is still untouched, and kept checksummed in `studies/<name>/preserve/`. The cost
per trial stays small: short texts, a few per step, every k steps, and the frozen prefix's output
on each fixed batch computed once per worker and depth (the untouched bottom blocks on fixed
texts: the same in every trial) and replayed, proven on each trial's first batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from autoft.config import GENERAL_TEXT, BaseTaskConfig
from autoft.files import file_lock, write_whole
from autoft.forgetting import BaseSplit, BaseTask, Replay, no_replay, preservation_texts
from autoft.model import Blocks, evaluating, find_blocks
from autoft.replay import CacheUnusable, capture, replaying
from autoft.tasks.base import Preserving

__all__ = ["Cost", "Preservation", "PreservationLoss", "PreservedTexts", "texts_to_preserve"]

log = logging.getLogger("autoft")

MAX_TEXTS = 512
ENGLISH_WORDS = frozenset("the a an and of to in is it you i that for on with was are this".split())
OWN_TEXTS = 256  # the task's own training texts preserved on: a seeded sample, a few hundred
PRESERVE_DATA, SPARE_ITEMS, OWN = "base.preserve_data", "spare base items", "training texts"
REPLAY_TOLERANCE = 1e-4
MAX_PREFIX_BYTES = 2**28  # a worker's frozen-prefix states of the preservation batches, all depths


@dataclass(frozen=True)
class Cost:
    """How much preservation a training step pays for: texts of at most `max_length` tokens,
    `batch_texts` of them every `every_steps` optimizer steps (see benchmarks/preserve_cost.py)."""

    max_length: int = 64
    batch_texts: int = 8
    every_steps: int = 1


@dataclass(frozen=True)
class PreservedTexts:
    """The texts a study preserves on (none: preserve_weight is held at 0), `source` where they
    came from (PRESERVE_DATA, SPARE_ITEMS or OWN; empty with none), and `words`, the same for the
    screen and the report, or why there are none."""

    texts: list[str]
    source: str
    words: str

    def facts(self) -> dict:
        """What the prepared base facts record of it (`preserve_on`)."""
        return {"source": self.source, "texts": len(self.texts), "words": self.words}


def texts_to_preserve(base: BaseTaskConfig | None, split: BaseSplit | None, data, task,
                      processor, seed: int) -> PreservedTexts:
    """The texts the preservation loss reads, and where they came from: base.preserve_data; else
    the base items that neither the checks nor the audit read (forgetting.preservation_texts);
    else, every base item being scored, a seeded sample of OWN_TEXTS of the task's own training
    texts (`data.train`, the prepared split: never validation), on which the untouched model's
    output is the target, as in Learning without Forgetting (Li & Hoiem). None without a base
    task or for a task without the preservation loss (not `Preserving`: images)."""
    if base is None:
        return PreservedTexts([], "", "there is no base task")
    if not isinstance(task, Preserving):
        return PreservedTexts([], "", f"{task.name} has no preservation loss")
    texts = preservation_texts(base, split)
    if base.preserve_data:
        return PreservedTexts(texts, PRESERVE_DATA,
                              f"{len(texts)} texts of {Path(base.preserve_data).name} "
                              f"(base.preserve_data)")
    rows = len(data.train)
    chosen = sorted(random.Random(seed).sample(range(rows), min(rows, OWN_TEXTS)))
    own = [text for text in task.input_texts(data.train, processor, chosen) if text]
    if texts and base.data == GENERAL_TEXT and not mostly_english(own):
        return PreservedTexts(
            own, OWN, f"{len(own)} of the task's own {rows} training texts (autoft's general "
            f"text is English, and most of them are not)")
    if texts:
        return PreservedTexts(texts, SPARE_ITEMS,
                              f"{len(texts)} texts of {Path(base.data).name} that neither the "
                              f"check nor the audit reads")
    return PreservedTexts(
        own, OWN, f"{len(own)} of the task's own {rows} training texts (the check and the "
        f"audit read every text of {Path(base.data).name}, and no base.preserve_data is set)")


def mostly_english(texts: list[str]) -> bool:
    """Whether most texts hold a common English word: where they do not, autoft's general
    English would pull the model toward a language the task does not use."""
    hits = sum(bool(ENGLISH_WORDS & set(text.lower().split())) for text in texts)
    return hits >= len(texts) / 2


class Preservation:
    """A study's preservation batches and the stored targets of the untouched model."""

    def __init__(self, task: BaseTask, texts: list[str], tokenizer, folder: Path,
                 model_name: str, cost: Cost = Cost()):
        self.task = task
        self.cost = cost
        self.batches = task.preservation_batches(
            tokenizer, texts[:MAX_TEXTS], cost.max_length, cost.batch_texts)
        digest = hashlib.sha256(json.dumps([type(task).__name__, model_name]).encode())
        for batch in self.batches:  # the shape too: 4-text and 8-text batches of equal-length
            digest.update(str(tuple(batch["input_ids"].shape)).encode())  # texts hold the same ids
            digest.update(batch["input_ids"].numpy().tobytes())
        self.path = Path(folder) / f"{digest.hexdigest()[:32]}.safetensors"
        self.prefixes = PrefixStates()

    def loss(self, model, weight: float, frozen: int, device: torch.device
             ) -> tuple[PreservationLoss, str]:
        """The trial's loss term, and whether its targets were 'computed' now or 'reused'.
        `model` must still be untouched (before training) in case the targets are computed."""
        targets, note = self.targets(model, device)
        return PreservationLoss(self.task, self.batches, targets, weight, frozen, self.cost,
                                self.prefixes), note

    def targets(self, model, device: torch.device) -> tuple[list[torch.Tensor], str]:
        """The stored targets, or computed from the untouched `model` and stored (one worker
        computes, under a lock; a damaged file is computed again)."""
        targets = self._read()
        if targets is not None:
            return targets, "reused"
        with file_lock(self.path.with_suffix(".lock")):
            targets = self._read()
            if targets is not None:
                return targets, "reused"
            model.to(device)
            with evaluating(model):
                targets = [self.task.target(model, b.to(device)).cpu() for b in self.batches]
            tensors = {f"batch_{i:05d}": t.contiguous() for i, t in enumerate(targets)}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            metadata = {"sha256": _digest(targets)}
            write_whole(self.path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
        return targets, "computed"

    def _read(self) -> list[torch.Tensor] | None:
        if not self.path.is_file():
            return None
        try:
            with safe_open(str(self.path), "pt") as handle:
                expected = (handle.metadata() or {}).get("sha256")
            tensors = load_file(str(self.path))
        except (SafetensorError, OSError) as error:
            log.warning("autoft: preservation targets %s unreadable (%s); computing them again.",
                        self.path, error)
            return None
        targets = [tensors[name] for name in sorted(tensors)]
        if len(targets) != len(self.batches) or _digest(targets) != expected:
            log.warning("autoft: preservation targets %s damaged; computing them again.",
                        self.path)
            return None
        return targets


def _digest(targets: list[torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for target in targets:
        digest.update(str(tuple(target.shape)).encode())
        digest.update(target.contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


class PrefixStates:
    """The frozen prefix's output on the preservation batches, kept by a worker across its
    trials: every trial leaves its bottom `frozen` blocks as the base model's, so their output on a
    fixed batch is the same in each (as autoft.replay.PrefixMemo for the base checks). Keyed by
    depth, batch and device; past `max_bytes` a trial keeps what it captures to itself."""

    def __init__(self, max_bytes: int = MAX_PREFIX_BYTES):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.states: dict[tuple[int, int, str], torch.Tensor] = {}

    def get(self, frozen: int, index: int, device: torch.device) -> torch.Tensor | None:
        return self.states.get((frozen, index, str(device)))

    def keep(self, frozen: int, index: int, device: torch.device, state: torch.Tensor) -> bool:
        """Whether `state` was kept for later trials (within the budget)."""
        size = state.numel() * state.element_size()
        if self.bytes + size > self.max_bytes:
            return False
        self.states[(frozen, index, str(device))] = state
        self.bytes += size
        return True


class PreservationLoss:
    """One trial's `train.LossTerm`: weight × the task's distance on one fixed batch every
    `every_steps` steps, the batches in turn. The pass runs in eval mode (no dropout), as the
    check and the targets do."""

    def __init__(self, task: BaseTask, batches: list, targets: list[torch.Tensor],
                 weight: float, frozen: int, cost: Cost, shared: PrefixStates | None = None):
        self.task = task
        self.batches = batches
        self.targets = targets
        self.weight = weight
        self.frozen = frozen
        self.every = cost.every_steps
        self.prefix: dict[int, torch.Tensor] = {}  # this trial's, the shared ones copied in
        self.shared = shared if shared is not None else PrefixStates(0)
        self.proven = False
        self.stacks: dict[int, Blocks] = {}
        self.replays = frozen > 0 and task.replays_prefix

    def __call__(self, model, step: int) -> torch.Tensor | None:
        if step % self.every:
            return None
        index = (step // self.every) % len(self.batches)
        device = next(model.parameters()).device
        batch = self.batches[index].to(device)
        with evaluating(model):
            tuned = self.task.reads(model, batch, self._replay(model, index, batch))
        return self.weight * self.task.distance(tuned, self.targets[index].to(device))

    def _replay(self, model, index: int, batch) -> Replay:
        """Replays the frozen blocks' output on this batch, computed once per worker and depth
        (`PrefixStates`; once per trial past its budget); on the trial's first batch it is proven
        against the whole model, and a model it fails runs whole."""
        if not self.replays:
            return no_replay
        with torch.no_grad(), evaluating(model):
            if index not in self.prefix:
                device = next(iter(batch.values())).device
                state = self.shared.get(self.frozen, index, device)
                if state is None:
                    try:
                        state = capture(model, self._blocks(model), (self.frozen,), batch)[
                            self.frozen]
                    except CacheUnusable:
                        self.replays = False
                        return no_replay
                    if not self._proven(model, batch, state):
                        return no_replay
                    self.shared.keep(self.frozen, index, device, state)
                self.prefix[index] = state
            if not self._proven(model, batch, self.prefix[index]):
                return no_replay
        return self._replayer(index)

    def _replayer(self, index: int) -> Replay:
        return self._replaying(self.prefix[index])

    def _replaying(self, state: torch.Tensor) -> Replay:
        return lambda module: replaying(self._blocks(module), self.frozen, state)

    def _blocks(self, module) -> Blocks:
        """The module's stack of blocks, found once (find_blocks walks the whole model)."""
        if id(module) not in self.stacks:
            self.stacks[id(module)] = find_blocks(module)
        return self.stacks[id(module)]

    def _proven(self, model, batch, state: torch.Tensor) -> bool:
        """Whether replaying is proven for this trial: on its first batch, by comparison with
        the whole model (a model that fails runs whole from then on)."""
        if not self.proven:
            self.proven = self._replay_matches(model, batch, state)
            self.replays = self.proven
        return self.proven

    def _replay_matches(self, model, batch, state: torch.Tensor) -> bool:
        whole = self.task.reads(model, batch).float()
        try:
            replayed = self.task.reads(model, batch, self._replaying(state)).float()
        except Exception:  # an architecture that breaks under the stand-ins runs whole
            return False
        gap = (replayed - whole).abs().max().item() if whole.numel() else 0.0
        return gap <= REPLAY_TOLERANCE * max(1.0, whole.abs().max().item())
