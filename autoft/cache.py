"""The frozen-prefix cache: the hidden states leaving the frozen bottom blocks, computed once per
model, data, max length and depth, kept memory-mapped in the study folder and replayed in training.

Layout: one file per key, `<key>.states`: a 4 KiB JSON header (dtype, hidden size, token rows per
split, payload size, SHA-256 of the payload) and then every example's states unpadded, one row per
real token, train first and validation after, in the data's order. Offsets come from the token
counts, so padding is rebuilt per batch (zeros, masked out) and never stored. Files appear only by
rename, under a lock, so concurrent workers either build or reuse, and a damaged file is rebuilt.

Precision: the cache is built under the autocast training runs under (autoft.precision: bf16
where the hardware has it, or as the study asks) and stores each state in the dtype the block gave
there, unrounded, so a cached trial computes what an uncached one does on the same device. The
device type and autocast are part of the key, and the replay is proven on the device it serves
before first use.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autoft.data import Split, TargetData
from autoft.model import evaluating, find_blocks, split_parameters
from autoft.precision import autocast, autocast_dtype
from autoft.train import collate, eval_batches

__all__ = ["CacheUse", "PrefixCache", "PrefixMemo", "PrefixStates", "SplitStates", "cache_key"]

log = logging.getLogger("autoft")

FORMAT_VERSION = 2
HEADER_BYTES = 4096
MAX_CACHE_BYTES = 4 * 2**30  # the whole cache folder of a study
MAX_MEMO_BYTES = 2**29  # a worker's in-memory states of the base task's fixed batches
FREE_DISK_MARGIN = 2**30
CHECK_EXAMPLES = 6
CHECK_TOLERANCE = 1e-4
_SPLITS = ("train", "validation")
_DTYPES = ("float32", "bfloat16", "float16")  # what blocks give under training's autocast
_VERIFIED: set[tuple[str, int, int]] = set()  # files whose checksum this process has checked
_REPLAYED: dict[str, tuple[int, torch.dtype]] = {}  # keys whose replay this process has proven,
# with the hidden size and dtype of the states


class CacheUnusable(Exception):
    """The cache cannot serve this trial; the message says why, and the trial trains uncached."""


@dataclass
class SplitStates:
    """One split's cached states: a flat (tokens × hidden) tensor and where each example starts."""

    flat: torch.Tensor
    offsets: np.ndarray
    blocks: nn.ModuleList
    frozen: int

    def forward(self, model: nn.Module, batch: dict, indices: list[int]):
        """The model's output on a padded batch, with the frozen prefix replaced by the cache.

        `collate` pads on the right, so row r's tokens are at positions 0..length of that row; the
        padding keeps zeros, which the attention mask hides from every real token.
        """
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


@dataclass
class PrefixStates:
    """The cached states of both splits, for one model, data and freeze depth."""

    train: SplitStates
    validation: SplitStates


@dataclass
class CacheUse:
    """What a trial got from the cache: states or None, what happened, and what it cost."""

    states: PrefixStates | None
    note: str
    seconds: float = 0.0


class _Skip(nn.Module):
    """Stands in for a frozen block below the last one: passes its input on, computes nothing."""

    def forward(self, *args, **kwargs):
        return args[0] if args else kwargs["hidden_states"]


class _Replay(nn.Module):
    """Stands in for the last frozen block: returns the cached output of that block."""

    def __init__(self, state: torch.Tensor):
        super().__init__()
        self.state = state

    def forward(self, *args, **kwargs):
        return self.state


@contextlib.contextmanager
def replaying(blocks: nn.ModuleList, frozen: int, state: torch.Tensor) -> Iterator[None]:
    """Swap the bottom `frozen` blocks for stand-ins, so a normal forward call starts from `state`.

    The stack keeps its length, so layer indices, attention masks and whatever runs between blocks
    stay as the model computes them; only the frozen blocks' work is skipped.
    """
    originals = [blocks[i] for i in range(frozen)]
    for i in range(frozen - 1):
        blocks[i] = _Skip()
    blocks[frozen - 1] = _Replay(state)
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
        handle = blocks[frozen - 1].register_forward_hook(lambda _m, _a, out: seen.append(out))
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
    model: nn.Module, blocks: nn.ModuleList, depths: tuple[int, ...], batch: dict
) -> dict[int, torch.Tensor]:
    """The output of block `d - 1` for every depth `d`, on a padded batch; eval mode required.

    One pass serves every depth, stopping where block `max(depths)` would start; a block that runs
    several times (ALBERT's shared layer) keeps its last output.
    """
    outputs: dict[int, list] = {depth: [] for depth in depths}
    handles = [
        blocks[depth - 1].register_forward_hook(
            lambda _m, _a, out, depth=depth: outputs[depth].append(out)
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


def cache_key(model: nn.Module, data: TargetData, frozen: int, device: torch.device) -> str:
    """A fingerprint of everything the cached states depend on.

    The weights and buffers that run below the first trainable block, the model's class and config
    (minus its folder, labels and loss, which the first forward with labels sets), every token id
    and segment id, the max length, the freeze depth, and the device type and autocast dtype the
    states are computed under.
    """
    digest = hashlib.sha256()
    config = {
        k: v
        for k, v in model.config.to_dict().items()
        if k not in ("_name_or_path", "id2label", "label2id", "num_labels", "problem_type")
    }
    header = [FORMAT_VERSION, type(model).__name__, config, data.max_length, frozen,
              torch.device(device).type, str(autocast_dtype(torch.device(device)))]
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    groups = split_parameters(model)
    below = set(groups.prefix).union(*groups.blocks[:frozen])
    tensors = [(n, p) for n, p in model.named_parameters() if n in below]
    for name, tensor in sorted(tensors + list(model.named_buffers())):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    for split in (data.train, data.validation):
        lengths = np.array([len(ids) for ids in split.input_ids], dtype=np.int64)
        digest.update(lengths.tobytes())
        for per_token in (split.input_ids, split.token_type_ids):
            digest.update(b"-" if per_token is None else _flat(per_token).tobytes())
    return digest.hexdigest()[:32]


def _flat(per_token: list[list[int]]) -> np.ndarray:
    return np.fromiter((t for ids in per_token for t in ids), np.int64)


class PrefixCache:
    """The study's cache folder: finds, checks, builds and opens the states for one trial."""

    def __init__(self, folder: Path, max_bytes: int = MAX_CACHE_BYTES):
        self.folder = Path(folder)
        self.max_bytes = max_bytes

    def states_for(
        self, model: nn.Module, data: TargetData, frozen: int, device: torch.device, pad_id: int
    ) -> CacheUse:
        """The cached states with the bottom `frozen` blocks frozen, built if missing or damaged.

        Never raises for a cache that cannot serve: the trial then trains uncached, and the note
        says why (the architecture failed the replay check, or the disk budget is too small).
        """
        started = time.perf_counter()
        try:
            states, note = self._states(model, data, frozen, device, pad_id)
        except (CacheUnusable, OSError) as error:
            reason = (
                str(error)
                if isinstance(error, CacheUnusable)
                else (f"its folder {self.folder} cannot be used ({error})")
            )
            log.warning("autoft: training without the prefix cache: %s.", reason)
            return CacheUse(None, reason, time.perf_counter() - started)
        return CacheUse(states, note, time.perf_counter() - started)

    def _states(self, model, data, frozen, device, pad_id) -> tuple[PrefixStates, str]:
        blocks = find_blocks(model)
        with evaluating(model):
            key = cache_key(model, data, frozen, device)
            if key not in _REPLAYED:  # the same key means the same architecture, depth and weights
                _REPLAYED[key] = check_replay(model, blocks, frozen, data.train, pad_id, device)
            hidden, dtype = _REPLAYED[key]
            path = self.folder / f"{key}.states"
            header = _open_valid(path, data, warn=False)
            note = "reused"
            if header is None:
                with _locked(path.with_suffix(".lock")):
                    header = _open_valid(path, data, warn=True)
                    if header is None:
                        paths = {frozen: path} | self._spare_depths(
                            model, data, frozen, len(blocks), hidden, dtype, device
                        )
                        _build(paths, model, blocks, data, pad_id, device, dtype, hidden)
                        header = _open_valid(path, data, warn=True)
                        note = "built"
        if header is None:
            raise CacheUnusable(f"the cache file {path} it just wrote does not read back")
        return _load(path, header, data, blocks, frozen, device), note

    def _spare_depths(self, model, data, frozen, depth, hidden, dtype, device) -> dict[int, Path]:
        """Other freeze depths whose states the same pass writes, as far as the budget allows.

        A study samples many depths; without this each would pay its own build, while one pass
        through every block (no gradients) serves them all.
        """
        size, room = self._room(data, hidden, dtype)
        if size > room:
            which = "what is left of its budget" if room < self._free() else "the free disk space"
            raise CacheUnusable(
                f"the cache would take {size / 2**30:.2f} GiB, more than {which} "
                f"({room / 2**30:.2f} GiB) in {self.folder}"
            )
        spare = {}
        for other in sorted(range(1, depth + 1), key=lambda d: abs(d - frozen)):
            if other == frozen or size * (len(spare) + 2) > room:
                continue
            path = self.folder / f"{cache_key(model, data, other, device)}.states"
            if not path.is_file():
                spare[other] = path
        return spare

    def _free(self) -> int:
        return shutil.disk_usage(self.folder).free - FREE_DISK_MARGIN

    def _room(self, data: TargetData, hidden: int, dtype: torch.dtype) -> tuple[int, int]:
        """Bytes one depth's states take, and bytes the folder may still grow by."""
        tokens = sum(len(ids) for split in (data.train, data.validation) for ids in split.input_ids)
        size = HEADER_BYTES + tokens * hidden * torch.finfo(dtype).bits // 8
        self.folder.mkdir(parents=True, exist_ok=True)
        used = sum(f.stat().st_size for f in self.folder.glob("*.states"))
        return size, min(self.max_bytes - used, self._free())


def check_replay(model, blocks, frozen, split: Split, pad_id: int, device):
    """Prove on real examples, on `device` and under training's autocast, that replaying cached
    states gives the model's own logits.

    The examples have different lengths, so the batch is padded and the states are stored unpadded
    and re-padded with zeros, as in training. Returns the hidden size and the dtype of the states;
    raises CacheUnusable if the architecture does not replay exactly (its blocks return something
    else, or the logits differ).
    """
    order = sorted(range(len(split)), key=lambda i: len(split.input_ids[i]))
    picks = sorted(set(order[: CHECK_EXAMPLES // 2] + order[-(CHECK_EXAMPLES // 2) :]))
    batch = collate(split, picks, pad_id, device)
    batch.pop("labels")
    name = type(model).__name__
    try:
        with torch.no_grad(), autocast(device):
            expected = model(**batch).logits
            state = capture(model, blocks, (frozen,), batch)[frozen]
            mask = batch["attention_mask"].bool()
            rows = state[mask]
            flat = SplitStates(
                rows, _offsets([len(split.input_ids[i]) for i in picks]), blocks, frozen
            )
            replayed = flat.forward(model, batch, list(range(len(picks)))).logits
    except CacheUnusable as error:
        raise CacheUnusable(f"{name} cannot be replayed from a cache: {error}") from None
    except Exception as error:  # an architecture that breaks under the stand-ins: train uncached
        raise CacheUnusable(f"{name} fails when replayed from a cache ({error})") from None
    gap = (replayed - expected).abs().max().item()
    if not gap <= CHECK_TOLERANCE * max(1.0, expected.abs().max().item()):
        raise CacheUnusable(
            f"{name} gives other logits when replayed from a cache (off by {gap:.2g})"
        )
    return state.shape[-1], state.dtype


def _offsets(lengths: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder per key across processes; the others wait, then reuse what it wrote."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@torch.no_grad()
def _build(paths: dict[int, Path], model, blocks, data, pad_id, device, dtype, hidden) -> None:
    """Run the frozen prefix once over both splits and write the states of every depth asked for,
    each to a temp file, then renamed into place.

    Batches go shortest examples first (train.eval_batches), so they pad little (in the data's
    order every batch of short tweets padded to its longest: twice the work); each example's rows
    still land at its place in the file.
    """
    depths = tuple(sorted(paths))
    log.info(
        "autoft: caching the frozen prefix (depths %s) in %s ...",
        ", ".join(map(str, depths)),
        next(iter(paths.values())).parent,
    )
    lengths = {name: [len(ids) for ids in getattr(data, name).input_ids] for name in _SPLITS}
    rows = {name: sum(lengths[name]) for name in _SPLITS}
    shape = (sum(rows.values()), hidden)
    element = _stored_as(dtype)
    tmps = {d: p.with_name(f"{p.name}.{os.getpid()}.tmp") for d, p in paths.items()}
    try:
        files = {
            d: np.memmap(tmps[d], dtype=element, mode="w+", offset=HEADER_BYTES, shape=shape)
            for d in depths
        }
        first_row = 0
        for name in _SPLITS:
            split: Split = getattr(data, name)
            starts = _offsets(lengths[name]) + first_row
            for indices, batch in eval_batches(split, pad_id, device):
                with autocast(device):
                    states = capture(model, blocks, depths, batch)
                for depth, state in states.items():
                    state = _to_numpy(state.to(dtype))  # already `dtype`: proven by check_replay
                    for row, i in enumerate(indices):
                        files[depth][starts[i] : starts[i + 1]] = state[row, : lengths[name][i]]
            first_row += rows[name]
        for depth, states in files.items():
            states.flush()
            header = {
                "version": FORMAT_VERSION,
                "dtype": str(dtype).removeprefix("torch."),
                "hidden": hidden,
                "rows": rows,
                "payload_bytes": shape[0] * hidden * element.itemsize,
                "sha256": _payload_digest(tmps[depth]),
            }
            with open(tmps[depth], "r+b") as out:
                out.write(json.dumps(header).encode().ljust(HEADER_BYTES, b" "))
                out.flush()
                os.fsync(out.fileno())
        files.clear()  # unmaps them
        for depth, tmp in tmps.items():
            tmp.replace(paths[depth])
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)


def _stored_as(dtype: torch.dtype) -> np.dtype:
    """How states of `dtype` lie in the file: numpy has no bfloat16, whose bits go as int16."""
    return np.dtype(np.int16) if dtype == torch.bfloat16 else np.dtype(str(dtype)[len("torch."):])


def _to_numpy(state: torch.Tensor) -> np.ndarray:
    bits = state.view(torch.int16) if state.dtype == torch.bfloat16 else state
    return bits.cpu().numpy()


def _payload_digest(path: Path) -> str:
    """SHA-256 of everything after the header."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(HEADER_BYTES)
        while chunk := handle.read(2**24):
            digest.update(chunk)
    return digest.hexdigest()


def _open_valid(path: Path, data: TargetData, warn: bool) -> dict | None:
    """The file's header when the file is whole and matches the data; None when absent or damaged.

    A damaged file (short, wrong rows, wrong checksum) is left for the builder to replace: only
    the holder of the lock says so, and the rename of the new file replaces it.
    """
    if not path.is_file():
        return None
    problem, header = _inspect(path, data)
    if problem is None:
        return header
    if warn:
        log.warning("autoft: cache file %s is damaged (%s); rebuilding it.", path, problem)
    return None


def _inspect(path: Path, data: TargetData) -> tuple[str | None, dict]:
    try:
        with open(path, "rb") as handle:
            header = json.loads(handle.read(HEADER_BYTES))
    except (OSError, ValueError):
        return "unreadable header", {}
    if not isinstance(header, dict):
        return "unreadable header", {}
    stat = path.stat()
    if stat.st_size != HEADER_BYTES + header.get("payload_bytes", -1):
        return f"{stat.st_size} bytes where the header promises more or less", header
    expected = {name: sum(map(len, getattr(data, name).input_ids)) for name in _SPLITS}
    if header.get("rows") != expected or header.get("version") != FORMAT_VERSION:
        return "rows or version do not match the data", header
    if header.get("dtype") not in _DTYPES:
        return f"unknown dtype {header.get('dtype')!r}", header
    identity = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if identity not in _VERIFIED:
        if _payload_digest(path) != header.get("sha256"):
            return "checksum mismatch", header
        _VERIFIED.add(identity)
    return None, header


def _load(path, header, data, blocks, frozen, device) -> PrefixStates:
    """Memory-map the file; on a GPU the states of each split go to its memory once per trial."""
    dtype = getattr(torch, header["dtype"])
    total = sum(header["rows"].values())
    shape = (total, header["hidden"])
    whole = np.memmap(path, dtype=_stored_as(dtype), mode="c", offset=HEADER_BYTES, shape=shape)
    splits, start = {}, 0
    for name in _SPLITS:
        count = header["rows"][name]
        flat = torch.from_numpy(whole[start : start + count]).view(dtype)
        if device.type != "cpu":
            flat = flat.to(device)
        lengths = [len(ids) for ids in getattr(data, name).input_ids]
        splits[name] = SplitStates(flat, _offsets(lengths), blocks, frozen)
        start += count
    return PrefixStates(**splits)
