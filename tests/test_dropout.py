"""autoft.dropout: CPU training's dropout has torch's distribution, its attention computes what
SDPA computes, on every architecture, and a model is put back as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoft import dropout
from autoft.dropout import ATTENTION, CpuDropout, cpu_dropout, drop, keep_mask

CPU = torch.device("cpu")


def test_drop_zeroes_a_share_p_and_scales_the_rest_to_keep_the_mean() -> None:
    torch.manual_seed(0)
    x = torch.full((2000, 500), 3.0)
    for p in (0.1, 0.5):
        out = drop(x, p)
        zeroed = (out == 0).float().mean().item()
        assert abs(zeroed - p) < 5 * (p * (1 - p) / x.numel()) ** 0.5
        kept = out[out != 0]
        assert torch.allclose(kept, torch.tensor(3.0 / (1 - round(p * 65536) / 65536)))
        assert abs(out.mean().item() - 3.0) < 0.01


def test_every_16_bit_lane_of_a_random_word_is_drawn_alike() -> None:
    """Each 64-bit draw serves four elements; none of the four may lean."""
    torch.manual_seed(1)
    kept = keep_mask(torch.Size([400_000]), 0.1, CPU).view(-1, 4).float().mean(0)
    assert torch.all((kept - 0.9).abs() < 5 * (0.09 / 100_000) ** 0.5), kept


def test_the_same_seed_draws_the_same_mask() -> None:
    shape = torch.Size([7, 13])
    torch.manual_seed(5)
    first = keep_mask(shape, 0.3, CPU)
    torch.manual_seed(5)
    assert torch.equal(first, keep_mask(shape, 0.3, CPU))


class Attention(nn.Module):
    """What transformers' attention functions read of their module."""

    is_causal = False

    def __init__(self):
        super().__init__()
        self.training = True


def test_attention_drops_out_probabilities_and_its_gradients_follow(monkeypatch) -> None:
    """The plain path is softmax(q kᵀ · scale + mask), dropped out, times v, in SDPA's layout."""
    generator = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=generator, requires_grad=True)
               for _ in range(3))
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[0, :, :, 3:] = False
    torch.manual_seed(3)
    out, _ = dropout.attention(Attention(), q, k, v, mask, dropout=0.2, scaling=0.5)
    out.sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    torch.manual_seed(3)
    keep = keep_mask(torch.Size([2, 3, 5, 5]), 0.2, CPU)
    scores = (q @ k.transpose(-1, -2) * 0.5).masked_fill(~mask, torch.finfo(q.dtype).min)
    dropped = scores.softmax(-1) * keep / (1 - round(0.2 * 65536) / 65536)
    expected = (dropped @ v).transpose(1, 2)
    for t in (q, k, v):
        t.grad = None
    expected.sum().backward()
    assert torch.allclose(out, expected, atol=1e-6)
    for grad, t in zip(grads, (q, k, v), strict=True):
        assert torch.allclose(grad, t.grad, atol=1e-6)


def test_attention_leaves_evaluation_and_what_it_does_not_cover_to_sdpa(
    monkeypatch,
) -> None:
    calls = []
    monkeypatch.setattr(dropout, "sdpa_attention_forward",
                        lambda *args, **kwargs: calls.append(kwargs) or (args[1], None))
    frozen = torch.randn(1, 2, 3, 4)  # what frozen blocks compute: no gradient flows back
    q = frozen.clone().requires_grad_()
    module = Attention()
    module.training = False
    with torch.no_grad():  # evaluation
        dropout.attention(module, q, q, q, None, dropout=0.0)
    dropout.attention(module, frozen, frozen, frozen, None, dropout=0.0)
    module.training = True
    dropout.attention(module, q, q[:, :1], q[:, :1], None, dropout=0.1)  # grouped keys
    dropout.attention(module, q, q, q, None, dropout=0.1, softcap=30.0)
    assert len(calls) == 4
    dropout.attention(module, q, q, q, None, dropout=0.1)
    module.training = False
    dropout.attention(module, q, q, q, None, dropout=0.0)  # eval mode, backpropagated
    assert len(calls) == 4


def test_attention_without_dropout_is_sdpas() -> None:
    """The plain path of a backpropagated pass without dropout (the preservation loss's) gives
    SDPA's attention, forward and backward."""
    q, k, v = (torch.randn(2, 3, 5, 4, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[0, :, :, -2:] = False
    module = Attention()
    module.training = False
    out, _ = dropout.attention(module, q, k, v, mask, dropout=0.0)
    out.sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, mask).transpose(1, 2)
    expected.sum().backward()
    assert torch.allclose(out, expected, atol=1e-6)
    for grad, t in zip(grads, (q, k, v), strict=True):
        assert torch.allclose(grad, t.grad, atol=1e-6)


def test_training_with_the_faster_dropout_computes_what_the_model_does(arch, monkeypatch) -> None:
    """With dropout keeping everything, a training pass under cpu_dropout gives the model's own
    evaluation logits: masks, causality, scaling and layout are right on each architecture."""
    model = arch.build()
    for module in model.modules():
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.0  # stochastic depth (Swin) is not dropout: off for the comparison
    unpadded = {k: v for k, v in arch.random_batch(model).items() if k != "labels"}
    batches = [unpadded]  # without padding, a causal model's mask may be None
    if "attention_mask" in unpadded:
        padded = {**unpadded, "attention_mask": unpadded["attention_mask"].clone()}
        padded["attention_mask"][0, -2:] = 0  # a real mask reaches attention
        batches.append(padded)
    with torch.no_grad():
        expected = [model.eval()(**batch).logits for batch in batches]
    monkeypatch.setattr(dropout, "drop", lambda x, p: x)
    sdpa = dropout.sdpa_attention_forward  # where it leaves attention to SDPA: no dropout either
    monkeypatch.setattr(dropout, "sdpa_attention_forward",
                        lambda *args, **kwargs: sdpa(*args, **{**kwargs, "dropout": 0.0}))
    implementation = getattr(model.config, "_attn_implementation", None)
    with cpu_dropout(model, CPU):  # with gradients, as training: the plain attention
        assert not any(type(m) is nn.Dropout for m in model.modules())
        model.train()
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()  # batch statistics are not dropout: the running ones, as evaluated
        got = [model(**batch).logits for batch in batches]
    for logits, wanted in zip(got, expected, strict=True):
        assert torch.allclose(logits, wanted, atol=1e-5)
    assert getattr(model.config, "_attn_implementation", None) == implementation
    assert not any(isinstance(m, CpuDropout) for m in model.modules())


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_a_model_trains_through_the_faster_attention_and_gets_its_own_back(
    name, archs, monkeypatch
) -> None:
    model = archs[name].build()
    assert model.config._attn_implementation == "sdpa"
    sdpa = dropout.sdpa_attention_forward
    left = []

    def spy(module, *args, **kwargs):
        left.append(module.training)
        return sdpa(module, *args, **kwargs)

    monkeypatch.setattr(dropout, "sdpa_attention_forward", spy)
    with cpu_dropout(model, CPU):
        assert model.config._attn_implementation == ATTENTION
        model.train()
        loss = model(**archs["bert"].random_batch(model)).loss
        loss.backward()
    assert torch.isfinite(loss)
    assert left == []  # every training pass took the plain path
    assert model.config._attn_implementation == "sdpa"


def test_a_gpu_keeps_torch_s_dropout(archs) -> None:
    model = archs["bert"].build()
    with cpu_dropout(model, torch.device("cuda")):
        assert model.config._attn_implementation == "sdpa"
        assert not any(isinstance(m, CpuDropout) for m in model.modules())
