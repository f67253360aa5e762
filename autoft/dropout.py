"""Dropout for training on a CPU: the same distribution as torch's, in fewer passes over memory.

torch's CPU dropout draws one random number per element (`bernoulli_`), and SDPA, asked for
attention dropout, leaves its fused kernel for an unfused math path; in a MiniLM full
fine-tuning step the two took a fifth of the time (benchmarks/trainer_vs_autoft.py: 86 → 103
samples per CPU-second, bf16, one thread). Here one 64-bit random draw gives four 16-bit
numbers, each compared with a threshold, and attention computes its probabilities, drops them
out and weights the values in three plain operations. That plain attention also serves a pass
without dropout that will be backpropagated (the preservation loss's, in eval mode): SDPA's
fused CPU backward is slower in bf16 (MiniLM, 8 texts × 64 tokens, forward and backward: 226
against 150 ms). Evaluation, GPUs and every attention this does not cover (grouped keys and
values, biases, soft caps, a key cache) keep transformers' own SDPA path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.utils import logging as hf_logging

ATTENTION = "autoft_cpu_dropout"
_LEVELS = 1 << 16  # the random numbers are 16-bit: a drop probability is a multiple of 2**-16
# Arguments that leave attention as it is when absent (None); any other needs SDPA's handling.
_PASSIVE = frozenset({"position_ids", "cache_position", "encoder_hidden_states", "sliding_window",
                      "output_attentions", "use_cache"})


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """True where an element is kept, each with probability 1 - p, independently (p rounded to
    a multiple of 2**-16)."""
    count = shape.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device)
    numbers = words.random_(-(1 << 63), (1 << 63) - 1).view(torch.int16)[:count].view(shape)
    return numbers >= round(p * _LEVELS) - _LEVELS // 2


def drop(x: torch.Tensor, p: float) -> torch.Tensor:
    """`x` with each element zeroed with probability p and the rest scaled to keep the mean."""
    dropped = round(p * _LEVELS) / _LEVELS
    return x * keep_mask(x.shape, p, x.device).to(x.dtype).mul_(1 / (1 - dropped))


class CpuDropout(nn.Dropout):
    """nn.Dropout, whose training pass on a CPU uses `drop` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and 0 < self.p < 1 and not self.inplace and x.device.type == "cpu":
            return drop(x, self.p)
        return super().forward(x)


def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout: float = 0.0,
              scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers' attention function (AttentionInterface): SDPA, except for a CPU pass that
    will be backpropagated (training, or the preservation loss's eval-mode pass) over full masks
    or none, which runs matmul, softmax, `drop` where there is dropout, matmul."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    plain = (
        backpropagated(query, key, value) and dropout < 1 and query.device.type == "cpu"
        and key.shape[1] == query.shape[1]  # no grouped keys and values
        and (attention_mask is not None or not causal or key.shape[2] == query.shape[2])
        and all(value is None or name in _PASSIVE for name, value in kwargs.items())
        and not kwargs.get("output_attentions")
    )
    if not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    if attention_mask is None and causal:  # SDPA's is_causal: each position sees those before
        length = query.shape[2]
        attention_mask = torch.ones(length, length, dtype=torch.bool).tril()
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)).mul_(scale)
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    elif attention_mask is not None:
        scores = scores + attention_mask
    probabilities = scores.softmax(-1)
    if dropout:
        probabilities = drop(probabilities, dropout)
    return torch.matmul(probabilities, value).transpose(1, 2).contiguous(), None


def backpropagated(*tensors: torch.Tensor) -> bool:
    """Whether a gradient will flow back through these: not in evaluation, nor in the frozen
    blocks, which must compute as the cache of their output was built (under SDPA)."""
    return torch.is_grad_enabled() and any(tensor.requires_grad for tensor in tensors)


AttentionInterface.register(ATTENTION, attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the masks SDPA gets


@contextlib.contextmanager
def cpu_dropout(model: nn.Module, device: torch.device) -> Iterator[None]:
    """While a model trains on a CPU: its dropout layers are `CpuDropout` and its SDPA
    attention is `attention` above; put back as they were afterwards."""
    if device.type != "cpu":
        yield
        return
    swapped = [module for module in model.modules() if type(module) is nn.Dropout]
    for module in swapped:
        module.__class__ = CpuDropout
    switched = _switch_attention(model, "sdpa", ATTENTION)
    try:
        yield
    finally:
        if switched:
            _switch_attention(model, ATTENTION, "sdpa")
        for module in swapped:
            module.__class__ = nn.Dropout


def _switch_attention(model: nn.Module, current: str, new: str) -> bool:
    """Whether a transformers model that computes attention by `current` now does by `new`;
    models that cannot switch (their attention does not go through AttentionInterface) stay."""
    if not isinstance(model, PreTrainedModel) or model.config._attn_implementation != current:
        return False
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "does not support setting its attention implementation"
    try:
        model.set_attn_implementation(new)
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.config._attn_implementation == new
