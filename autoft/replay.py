"""Replaying a model from stored prefix states: one pass captures what the frozen bottom blocks
output, stand-ins skip those blocks and hand on a state, a split's stored states are laid back
into a batch (`SplitStates`: per token, re-padded, or one fixed shape per example), a worker's
in-memory states of fixed batches (`PrefixMemo`), and the proof on real examples that a replay
gives the model's own logits (`check_replay`). autoft.cache keeps such states on disk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from autoft.model import Blocks, find_blocks
from autoft.precision import autocast
from autoft.tasks import Task

MAX_MEMO_BYTES = 2**29  # a worker's in-memory states of the base task's fixed batches
CHECK_EXAMPLES = 6
CHECK_TOLERANCE = 1e-4
_TUPLE_LENGTHS: dict[type, int] = {}  # block classes that return a tuple (Swin: the state and
# its attention weights), with its length, seen by `hidden_state`


class CacheUnusable(Exception):
    """The cache cannot serve this trial; the message says why, and the trial trains uncached."""


@dataclass
class SplitStates:
    """One split's cached states: a flat (rows × width) tensor and where each example starts; for
    the fixed layout (images) the shape of one example's state, which is its one row."""

    flat: torch.Tensor
    offsets: np.ndarray
    blocks: Blocks
    frozen: int
    shape: tuple[int, ...] | None = None

    def forward(self, model: nn.Module, batch: dict, indices: list[int]):
        """The model's output on a batch, with the frozen prefix replaced by the cache.

        Per token: `collate` pads on the right, so row r's tokens are at positions 0..length of
        that row; the padding keeps zeros, which the attention mask hides from every real token.
        Fixed: each example's row, in its shape.
        """
        if self.shape is not None:
            device = self.flat.device
            rows = self.flat.index_select(0, torch.tensor(indices, device=device))
            state = rows.view(len(indices), *self.shape).to(next(iter(batch.values())).device)
            with replaying(self.blocks, self.frozen, state):
                return model(**batch)
        shape = batch["attention_mask"].shape
        spans = [(self.offsets[i], self.offsets[i + 1]) for i in indices]
        source = np.concatenate([np.arange(start, end) for start, end in spans])
        target = np.concatenate(
            [row * shape[1] + np.arange(end - start) for row, (start, end) in enumerate(spans)]
        )  # index arithmetic on the host: no boolean mask, so no device sync
        device = self.flat.device
        rows = self.flat.index_select(0, torch.from_numpy(source).to(device, non_blocking=True))
        state = torch.zeros((shape[0] * shape[1], rows.shape[1]), dtype=rows.dtype, device=device)
        state.index_copy_(0, torch.from_numpy(target).to(device), rows)
        state = state.view(*shape, rows.shape[1]).to(batch["attention_mask"].device)
        with replaying(self.blocks, self.frozen, state):
            return model(**batch)


def hidden_state(block: nn.Module, output):
    """The hidden state in a block's output: the output, or the first item of a tuple, whose
    length is remembered for the block's class so that its stand-ins return the same form."""
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        _TUPLE_LENGTHS[type(block)] = len(output)
        return output[0]
    return output


class _StandIn(nn.Module):
    """Takes a frozen block's place: returns `state`, or for a block below the last frozen one
    (state None) its own input, in the form the block returns (a tensor, or a tuple with empty
    extras such as attention weights)."""

    def __init__(self, block: nn.Module, state: torch.Tensor | None):
        super().__init__()
        self.state = state
        self.length = _TUPLE_LENGTHS.get(type(block), 0)

    def forward(self, *args, **kwargs):
        state = self.state
        if state is None:
            state = args[0] if args else kwargs["hidden_states"]
        return (state,) + (None,) * (self.length - 1) if self.length else state


@contextlib.contextmanager
def replaying(blocks: Blocks, frozen: int, state: torch.Tensor) -> Iterator[None]:
    """Swap the bottom `frozen` blocks for stand-ins, so a normal forward call starts from `state`.

    The stack keeps its length, so layer indices, attention masks and whatever runs between blocks
    stay as the model computes them; only the frozen blocks' work is skipped.
    """
    originals = [blocks[i] for i in range(frozen)]
    for i, block in enumerate(originals):
        blocks[i] = _StandIn(block, state if i == frozen - 1 else None)
    try:
        yield
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block


class PrefixMemo:
    """The frozen prefix's output on fixed batches (a base task's), kept in memory and replayed.

    Every trial of a study leaves its bottom blocks as the base model's, so their output on the
    base task's batches is the same in every check: computed once per worker and depth, then each
    check runs only the blocks the trial trains. Proven on first use, as the disk cache is: a
    model whose replayed output differs from its own is simply run whole.
    """

    def __init__(self, max_bytes: int = MAX_MEMO_BYTES):
        self.max_bytes = max_bytes
        self.states: dict[tuple[int, int], torch.Tensor] = {}
        self.refused: set[tuple[str, int]] = set()  # (model class, depth) that failed the proof

    @torch.no_grad()
    def run(self, model: nn.Module, batch, frozen: int):
        """`model(**batch)` in eval mode, with its bottom `frozen` blocks replayed when they can be.

        `batch` must be the same object each time (a task's fixed batch): it is the key.
        """
        name = type(model).__name__
        if frozen == 0 or (name, frozen) in self.refused:
            return model(**batch)
        blocks = find_blocks(model)
        key = (id(batch), frozen)
        if key in self.states:
            with replaying(blocks, frozen, self.states[key]):
                return model(**batch)
        seen = []
        handle = blocks[frozen - 1].register_forward_hook(
            lambda m, _a, out: seen.append(hidden_state(m, out))
        )
        try:
            output = model(**batch)
        finally:
            handle.remove()
        state = seen[-1] if seen else None
        if isinstance(state, torch.Tensor) and self._room() >= state.nbytes:
            with replaying(blocks, frozen, state):
                replayed = model(**batch)
            gap = (replayed[0] - output[0]).abs().max().item()
            if gap <= CHECK_TOLERANCE * max(1.0, output[0].abs().max().item()):
                self.states[key] = state
            else:
                self.refused.add((name, frozen))
        return output

    def _room(self) -> int:
        return self.max_bytes - sum(state.nbytes for state in self.states.values())


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the states are captured."""


@torch.no_grad()
def capture(
    model: nn.Module, blocks: Blocks, depths: tuple[int, ...], batch: dict
) -> dict[int, torch.Tensor]:
    """The output of block `d - 1` for every depth `d`, on a padded batch; eval mode required.

    One pass serves every depth, stopping where block `max(depths)` would start; a block that runs
    several times (ALBERT's shared layer) keeps its last output.
    """
    outputs: dict[int, list] = {depth: [] for depth in depths}
    handles = [
        blocks[depth - 1].register_forward_hook(
            lambda m, _a, out, depth=depth: outputs[depth].append(hidden_state(m, out))
        )
        for depth in depths
    ]
    if max(depths) < len(blocks):

        def stop(_module, _args):
            raise _Stop

        handles.append(blocks[max(depths)].register_forward_pre_hook(stop))
    try:
        model(**batch)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    for seen in outputs.values():
        if not seen or not isinstance(seen[-1], torch.Tensor):
            kind = type(seen[-1]).__name__ if seen else "nothing"
            raise CacheUnusable(f"its blocks return {kind}, not a hidden-state tensor")
    return {depth: seen[-1] for depth, seen in outputs.items()}


def check_replay(model, blocks, frozen, task: Task, split, pad_id: int, device):
    """Prove on real examples, on `device` and under training's autocast, that replaying cached
    states gives the model's own logits.

    Text examples have different lengths, so the batch is padded and the states are stored
    unpadded and re-padded with zeros, as in training; fixed-shape states (images) are stored one
    row per example. Returns the row width and the dtype of the states;
    raises CacheUnusable if the architecture does not replay exactly (its blocks return something
    else, or the logits differ).
    """
    sizes = task.sizes(split)
    order = sorted(range(len(split)), key=lambda i: sizes[i])
    picks = sorted(set(order[: CHECK_EXAMPLES // 2] + order[-(CHECK_EXAMPLES // 2) :]))
    batch = task.collate(split, picks, pad_id, device)
    batch.pop("labels")
    name = type(model).__name__
    try:
        with torch.no_grad(), autocast(device):
            expected = model(**batch).logits
            state = capture(model, blocks, (frozen,), batch)[frozen]
            shape = tuple(state.shape[1:]) if task.cache_layout == "fixed" else None
            rows = _rows(state, batch, shape)
            flat = SplitStates(rows, offsets([sizes[i] for i in picks]), blocks, frozen, shape)
            replayed = flat.forward(model, batch, list(range(len(picks)))).logits
    except CacheUnusable as error:
        raise CacheUnusable(f"{name} cannot be replayed from a cache: {error}") from None
    except Exception as error:  # an architecture that breaks under the stand-ins: train uncached
        raise CacheUnusable(f"{name} fails when replayed from a cache ({error})") from None
    expected, replayed = _real_positions(expected, batch), _real_positions(replayed, batch)
    gap = (replayed - expected).abs().max().item()
    if not gap <= CHECK_TOLERANCE * max(1.0, expected.abs().max().item()):
        raise CacheUnusable(
            f"{name} gives other logits when replayed from a cache (off by {gap:.2g})"
        )
    return rows.shape[-1], state.dtype


def _real_positions(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """Logits per token (a causal LM's) at the real tokens only: at a padding position the
    replay holds zeros where the model had its pad token's state, and no loss or score reads
    what comes out there. Logits per example are kept whole."""
    mask = batch.get("attention_mask")
    if mask is None or logits.dim() < 3 or logits.shape[:2] != mask.shape:
        return logits
    return logits[mask.bool()]


def _rows(state: torch.Tensor, batch: dict, shape: tuple[int, ...] | None) -> torch.Tensor:
    """A batch's states as stored: a row per real token, or for fixed shapes a row per example."""
    return state.flatten(1) if shape is not None else state[batch["attention_mask"].bool()]


def offsets(lengths: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
