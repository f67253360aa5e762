"""Where trials run: the devices this machine has (CPU cores, visible CUDA GPUs) and the slots a
`--devices` value asks for, one worker process each, checked against the machine.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

from autoft.errors import UsageError

CORES_PER_CPU_WORKER = 4


@dataclass(frozen=True)
class Slot:
    """One place a trial runs: a device, the torch threads it may use, and for a GPU the value of
    CUDA_VISIBLE_DEVICES that pins the worker to that card (it then sees it as cuda:0)."""

    device: str
    threads: int
    visible: str | None = None

    @property
    def torch_device(self) -> str:
        return "cpu" if self.visible is None else "cuda:0"


def cpu_cores() -> int:
    """The cores this process may use: its CPU affinity (a container or taskset may allow fewer
    than exist), capped by OMP_NUM_THREADS when set, the usual way to cap a job's threads."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(cores or 1, int(cap))) if cap.isdigit() and int(cap) > 0 else cores or 1


def visible_gpus() -> int:
    """CUDA GPUs this process sees; counting them does not create a CUDA context."""
    return torch.cuda.device_count()


def device_slots(
    devices: str,
    trials_per_gpu: int = 1,
    where: str = "--devices",
    cores: int | None = None,
    gpus: int | None = None,
) -> list[Slot]:
    """The slots for auto, cpu, cpu:N, cuda or cuda:0,cuda:2, checked against this machine.

    `auto` takes every visible GPU, `trials_per_gpu` slots on each (a small model leaves a card
    mostly idle, so several trials fill it). Without a GPU, `auto` splits the cores into workers
    of CORES_PER_CPU_WORKER cores: one trial's small batches do not keep many threads busy, so
    more workers finish more trials (benchmarks/workers.py on a quiet 2-core machine: one 2-thread
    worker 807 trials/hour, two 1-thread workers 1,044), while each worker costs a process start
    and its own copy of the model. `cpu:N` chooses N workers explicitly.
    """
    if trials_per_gpu < 1:
        raise UsageError(f"--trials-per-gpu: {trials_per_gpu} must be a positive whole number.")
    cores = cores or cpu_cores()
    gpus = visible_gpus() if gpus is None else gpus
    spec = devices.strip().lower().replace(" ", "")
    if spec == "auto":
        spec = "cuda" if gpus else f"cpu:{max(1, cores // CORES_PER_CPU_WORKER)}"
    if spec == "cuda":
        if not gpus:
            raise UsageError(f"{where}: 'cuda' asks for GPUs, but none is visible; use cpu.")
        spec = ",".join(f"cuda:{k}" for k in range(gpus))
    cpu = re.fullmatch(r"cpu(?::(\d+))?", spec)
    if cpu:
        workers = int(cpu.group(1) or 1)
        if workers < 1:
            raise UsageError(f"{where}: '{devices}' asks for no worker; use cpu:1 or more.")
        return [Slot("cpu", max(1, cores // workers)) for _ in range(workers)]
    indices = [_cuda_index(part, devices, where, gpus) for part in spec.split(",")]
    if len(set(indices)) != len(indices):
        raise UsageError(
            f"{where}: '{devices}' names a GPU twice; use --trials-per-gpu to run several "
            f"trials on one card."
        )
    threads = max(1, cores // (len(indices) * trials_per_gpu))
    return [
        Slot(f"cuda:{k}", threads, _physical_gpu(k))
        for k in indices
        for _ in range(trials_per_gpu)
    ]


def _cuda_index(part: str, devices: str, where: str, gpus: int) -> int:
    match = re.fullmatch(r"cuda:(\d+)", part)
    if not match:
        raise UsageError(
            f"{where}: '{devices}' is not a device list; write auto, cpu, cpu:4, cuda or "
            f"cuda:0,cuda:2."
        )
    index = int(match.group(1))
    if index >= gpus:
        seen = f"cuda:0 to cuda:{gpus - 1}" if gpus else "none"
        raise UsageError(
            f"{where}: {part} does not exist (visible CUDA GPUs: {seen}); name one of those, "
            f"or use auto or cpu."
        )
    return index


def _physical_gpu(index: int) -> str:
    """The card the parent calls cuda:index, as CUDA_VISIBLE_DEVICES names it for a child."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
    visible = [v for v in visible if v]
    return visible[index] if visible else str(index)
