"""What a process computes in: bf16 autocast or float32 (the study's `precision`: auto, bf16, fp32).

Every forward pass of a trial (training, evaluation, the prefix cache's build and replay proof)
runs under `autocast(device)`, and the cache key holds `autocast_dtype(device)`, so the three agree.
The forgetting checks autocast as well (guard.observe), the base score measured at prepare time
included, so retention compares like with like; the audit reads both models in float32.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

_NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 AVX-512/AMX, Arm's BF16 extension
_precision = "auto"


def set_precision(precision: str) -> None:
    """How this process computes (config.precision: auto, bf16 or fp32). A worker sets it once
    before its first trial, like its thread count, so every forward pass, the cache build and
    the cache key agree."""
    global _precision
    _precision = precision


@functools.cache  # asked at every forward pass; the CPU does not change
def cpu_has_native_bf16() -> bool:
    """Whether the CPU multiplies bf16 in hardware (on 2 cores with avx512_bf16 a trial trained
    1.7-2× the samples per second of float32); emulated bf16 is slower than float32."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(_NATIVE_BF16_FLAGS & set(line.split(":", 1)[1].split())
               for line in text.splitlines() if line.startswith(("flags", "Features")))


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype every forward pass autocasts to on `device`, or None (plain float32): bf16 when
    asked for, or under auto where the device computes it natively (a GPU that supports it, a CPU
    with bf16 instructions). The prefix cache is built under the same, so it computes what
    training would (autoft.cache)."""
    if _precision == "fp32" or device.type not in ("cpu", "cuda"):
        return None
    if _precision == "bf16":
        return torch.bfloat16
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()
    return torch.bfloat16 if native else None


def precision_name(device: torch.device) -> str:
    """'bf16' or 'fp32': what a trial on `device` computes in, for its record and the summary."""
    return "fp32" if autocast_dtype(device) is None else "bf16"


def autocast(device: torch.device):
    """The autocast context of every forward pass of a trial, its cache build included."""
    dtype = autocast_dtype(device)
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)
