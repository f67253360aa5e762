"""The frozen-prefix cache: the hidden states leaving the frozen bottom blocks, computed once per
model, data, max length and depth, kept memory-mapped in the study folder and replayed in training.

Layout: one file per key, `<key>.states`: a 4 KiB JSON header (dtype, row width, rows per split,
payload size, SHA-256 of the payload, and for fixed-shape states the shape of one) and then every
example's states, train first and validation after, in the data's order: text's unpadded, one row
per real token (offsets come from the token counts, so padding is rebuilt per batch: zeros, masked
out), an image's as one row (the task's cache_layout says which). Files appear only by rename,
under a lock, so concurrent workers either build or reuse, and a damaged file is rebuilt.

Precision: the cache is built under the autocast training runs under (autoft.precision: bf16
where the hardware has it, or as the study asks) and stores each state in the dtype the block gave
there, unrounded, so a cached trial computes what an uncached one does on the same device. The
device type and autocast are part of the key, and the replay is proven on the device it serves
before first use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autoft.data import TargetData
from autoft.files import file_lock
from autoft.model import evaluating, find_blocks, split_parameters
from autoft.precision import autocast, autocast_dtype
from autoft.replay import CacheUnusable, SplitStates, capture, check_replay, offsets
from autoft.tasks import get_task

__all__ = ["CacheUse", "PrefixCache", "PrefixStates", "cache_key"]

log = logging.getLogger("autoft")

FORMAT_VERSION = 2
HEADER_BYTES = 4096
MAX_CACHE_BYTES = 4 * 2**30  # the whole cache folder of a study
FREE_DISK_MARGIN = 2**30
_SPLITS = ("train", "validation")
_DTYPES = ("float32", "bfloat16", "float16")  # what blocks give under training's autocast
_VERIFIED: set[tuple[str, int, int]] = set()  # files whose checksum this process has checked
_REPLAYED: dict[str, tuple[int, torch.dtype]] = {}  # keys whose replay this process has proven,
# with the hidden size and dtype of the states


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


def cache_key(model: nn.Module, data: TargetData, frozen: int, device: torch.device) -> str:
    """A fingerprint of everything the cached states depend on.

    The weights and buffers that run below the first trainable block, the model's class and config
    (minus its folder, labels and loss, which the first forward with labels sets), every input
    the task feeds the model (token ids and segment ids for text), the max length, the freeze
    depth, and the device type and autocast dtype the states are computed under.
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
    task = get_task(data.task)
    for split in (data.train, data.validation):
        task.digest_inputs(split, digest)
    return digest.hexdigest()[:32]


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
        refusal = get_task(data.task).cache_refusal(data.train)
        if refusal:
            raise CacheUnusable(refusal)
        blocks = find_blocks(model)
        with evaluating(model):
            key = cache_key(model, data, frozen, device)
            if key not in _REPLAYED:  # the same key means the same architecture, depth and weights
                _REPLAYED[key] = check_replay(model, blocks, frozen, get_task(data.task),
                                              data.train, pad_id, device)
            hidden, dtype = _REPLAYED[key]
            path = self.folder / f"{key}.states"
            header = _open_valid(path, data, warn=False)
            note = "reused"
            if header is None:
                with file_lock(path.with_suffix(".lock")):  # one builder; the others then reuse it
                    header = _open_valid(path, data, warn=True)
                    if header is None:
                        paths = {frozen: path} | self._spare_depths(
                            model, data, frozen, len(blocks), hidden, dtype, device
                        )
                        _build(paths, model, blocks, data, pad_id, device, dtype)
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
            raise CacheUnusable(
                f"the cache would take {_size(size)}, more than {self._short(room)}")
        spare = {}
        for other in sorted(range(1, depth + 1), key=lambda d: abs(d - frozen)):
            if other == frozen or size * (len(spare) + 2) > room:
                continue
            path = self.folder / f"{cache_key(model, data, other, device)}.states"
            if not path.is_file():
                spare[other] = path
        return spare

    def _free(self) -> int:
        """Bytes the cache may take from the disk: all but FREE_DISK_MARGIN of the free space
        (less than nothing on a nearly full disk)."""
        return shutil.disk_usage(self.folder).free - FREE_DISK_MARGIN

    def _short(self, room: int) -> str:
        """What limits the cache's room, in words with real figures."""
        free = shutil.disk_usage(self.folder).free
        if room < free - FREE_DISK_MARGIN:
            return (f"its budget allows in {self.folder} ({_size(max(room, 0))} left of "
                    f"{_size(self.max_bytes)})")
        return (f"the disk holding {self.folder} can spare: {_size(free)} free, and autoft "
                f"leaves {_size(FREE_DISK_MARGIN)} of a disk free")

    def _room(self, data: TargetData, hidden: int, dtype: torch.dtype) -> tuple[int, int]:
        """Bytes one depth's states take, and bytes the folder may still grow by."""
        task = get_task(data.task)
        tokens = sum(sum(task.sizes(split)) for split in (data.train, data.validation))
        size = HEADER_BYTES + tokens * hidden * torch.finfo(dtype).bits // 8
        self.folder.mkdir(parents=True, exist_ok=True)
        used = sum(f.stat().st_size for f in self.folder.glob("*.states"))
        return size, min(self.max_bytes - used, self._free())


def _size(size: int) -> str:
    """A size in the unit that shows it: 0.00 GiB of a few megabytes says nothing."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if size >= scale // 10:
            return f"{size / scale:.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{size / 2**10:.1f} KiB"


@torch.no_grad()
def _build(paths: dict[int, Path], model, blocks, data, pad_id, device, dtype) -> None:
    """Run the frozen prefix once over both splits and write the states of every depth asked for,
    each to a temp file, then renamed into place. A file is sized on its depth's first batch: in
    a model built in stages (ResNet) each depth's states have their own shape.

    Batches go shortest examples first (the task's eval_batches), so they pad little (in the data's
    order every batch of short tweets padded to its longest: twice the work); each example's rows
    still land at its place in the file.
    """
    depths = tuple(sorted(paths))
    log.info(
        "autoft: caching the frozen prefix (depths %s) in %s ...",
        ", ".join(map(str, depths)),
        next(iter(paths.values())).parent,
    )
    task = get_task(data.task)
    lengths = {name: task.sizes(getattr(data, name)) for name in _SPLITS}
    rows = {name: sum(lengths[name]) for name in _SPLITS}
    total = sum(rows.values())
    fixed = task.cache_layout == "fixed"
    element = _stored_as(dtype)
    tmps = {d: p.with_name(f"{p.name}.{os.getpid()}.tmp") for d, p in paths.items()}
    files: dict[int, np.memmap] = {}
    shapes: dict[int, list[int] | None] = {}
    try:
        first_row = 0
        for name in _SPLITS:
            split = getattr(data, name)
            starts = offsets(lengths[name]) + first_row
            for indices, batch in task.eval_batches(split, pad_id, device):
                with autocast(device):
                    states = capture(model, blocks, depths, batch)
                for depth, state in states.items():
                    if depth not in files:
                        shapes[depth] = list(state.shape[1:]) if fixed else None
                        width = math.prod(state.shape[1:]) if fixed else state.shape[-1]
                        files[depth] = np.memmap(tmps[depth], dtype=element, mode="w+",
                                                 offset=HEADER_BYTES, shape=(total, width))
                    if fixed:
                        state = state.flatten(1).unsqueeze(1)  # one row per example
                    state = _to_numpy(state.to(dtype))  # already `dtype`: proven by check_replay
                    for row, i in enumerate(indices):
                        files[depth][starts[i] : starts[i + 1]] = state[row, : lengths[name][i]]
            first_row += rows[name]
        for depth, states in files.items():
            states.flush()
            header = {
                "version": FORMAT_VERSION,
                "dtype": str(dtype).removeprefix("torch."),
                "hidden": states.shape[1],
                "shape": shapes[depth],
                "rows": rows,
                "payload_bytes": states.size * element.itemsize,
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
    task = get_task(data.task)
    expected = {name: sum(task.sizes(getattr(data, name))) for name in _SPLITS}
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
        sizes = get_task(data.task).sizes(getattr(data, name))
        shape = tuple(header["shape"]) if header.get("shape") else None
        splits[name] = SplitStates(flat, offsets(sizes), blocks, frozen, shape)
        start += count
    return PrefixStates(**splits)
