"""Reading a model for a base-task check: tokenizing base texts, the original model with its own
head, the tuned encoder copied into it, pooled states and linear CKA, and whether a check reads
what a trial trains.
"""

from __future__ import annotations

import torch
from torch.func import functional_call
from transformers import AutoModel

from autoft.adapters import plain_state_dict
from autoft.errors import UsageError
from autoft.forgetting.base import Replay
from autoft.model import evaluating, loading
from autoft.replay import PrefixMemo


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) of two representations (items × features) of one item set.

    Feature-space form on centered features: ||YᵀX||²_F / (||XᵀX||_F ||YᵀY||_F), in float64 so
    that a representation compared with itself gives 1.0. No variance at all shares nothing: 0.0.
    """
    x = x.detach().cpu().double()
    y = y.detach().cpu().double()
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    norms = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    if norms <= 0:
        return 0.0
    return float(torch.linalg.matrix_norm(y.T @ x) ** 2 / norms)


def load_encoder(model_source: str, trust_remote_code: bool):
    """The untouched base model without a head, loaded as every model autoft loads
    (autoft.model.loading), for the checks that compare with its representations."""
    with loading(model_source):
        return AutoModel.from_pretrained(model_source, dtype=torch.float32,
                                         trust_remote_code=trust_remote_code)


def load_with_head(auto_class, model_source: str, kind: str, trust_remote_code: bool):
    """The original model with its saved head; a head transformers had to invent knows nothing."""
    suggestion = f"use base-task kind 'drift' or 'similarity' instead of '{kind}'"
    try:
        with loading(model_source):  # quiet: the MISSING keys are said below, in one sentence
            model, info = auto_class.from_pretrained(
                model_source,
                dtype=torch.float32,
                trust_remote_code=trust_remote_code,
                output_loading_info=True,
            )
    except ValueError as error:
        raise UsageError(
            f"{model_source} cannot load as {auto_class.__name__} ({error}); {suggestion}."
        ) from None
    prefix = model.base_model_prefix + "."
    new = sorted(key for key in info["missing_keys"] if not key.startswith(prefix))
    if new:
        raise UsageError(
            f"{model_source} has no saved head for '{kind}' ({', '.join(new[:2])} "
            f"would be newly initialized); {suggestion}."
        )
    return model.eval().requires_grad_(False)


def copy_encoder(tuned, original) -> None:
    """Put the tuned encoder's weights into the original model, whose own head stays as saved
    (a LoRA trial's merged into plain weights). A part the tuned encoder was built without
    (a token classifier's BERT has no pooler) stays as saved too: no trial changed it."""
    weights = plain_state_dict(tuned.base_model)
    wanted = original.base_model.state_dict().keys()
    missing = [key for key in wanted if key not in weights
               and getattr(tuned.base_model, key.split(".")[0], None) is not None]
    if missing:
        raise ValueError(f"The tuned encoder lacks {missing[:3]}; it is not the base model's kind.")
    original.base_model.load_state_dict({key: weights[key] for key in wanted if key in weights},
                                        strict=False)


def _trained_encoder(tuned, original) -> dict[str, torch.Tensor]:
    """The encoder parameters `tuned` trains, named as in `original`: a functional call of the
    original model with them reads its own head through the tuned encoder, gradients included."""
    prefix = original.base_model_prefix
    wanted = dict(original.named_parameters())
    trained = {
        f"{prefix}.{name}": parameter
        for name, parameter in tuned.base_model.named_parameters()
        if parameter.requires_grad
    }
    return {name: parameter for name, parameter in trained.items() if name in wanted}


def head_log_probs(tuned, original, batch: dict, replay: Replay) -> torch.Tensor:
    """The original head's log-probabilities on `batch`, fed by the tuned encoder."""
    original.to(next(tuned.parameters()).device)
    with replay(original):
        logits = functional_call(original, _trained_encoder(tuned, original), (), dict(batch))
    return torch.log_softmax(logits.logits.float(), -1)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    return (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def pool(hidden: torch.Tensor, batch) -> torch.Tensor:
    """One vector per example: the mean over its real tokens (text), or over positions (images:
    patches, or a feature map's height and width)."""
    if "attention_mask" in batch:
        return mean_pool(hidden, batch["attention_mask"])
    return hidden.float().flatten(2).mean(-1) if hidden.dim() == 4 else hidden.float().mean(1)


def pooled(
    encoder, batches: list, device: str, every_layer: bool, memo: PrefixMemo | None = None,
    frozen: int = 0,
) -> list[torch.Tensor]:
    """Mean-pooled hidden states, a row per text or image: last layer only (the frozen prefix
    replayed by `memo` where there is one), or all (embeddings first)."""
    per_batch = []
    with evaluating(encoder):
        for batch in batches:
            batch = batch.to(device)
            if every_layer:
                layers = encoder(**batch, output_hidden_states=True).hidden_states
            else:
                output = memo.run(encoder, batch, frozen) if memo else encoder(**batch)
                layers = (output.last_hidden_state,)
            per_batch.append([pool(layer, batch) for layer in layers])
    return [torch.cat(layer) for layer in zip(*per_batch, strict=True)]


def _probe(module, batch) -> dict:
    """The first text of a tokenized batch, on the module's device: enough for autograd to tell
    what depends on what."""
    device = next(module.parameters()).device
    return {key: value[:1].to(device) for key, value in batch.items()}


def hidden_states_read_trained(encoder, batch, every_layer: bool) -> bool:
    """Whether the hidden states a task reads from `encoder` depend on a trainable parameter."""
    with torch.enable_grad(), evaluating(encoder):
        output = encoder(**_probe(encoder, batch), output_hidden_states=every_layer)
    layers = output.hidden_states if every_layer else (output.last_hidden_state,)
    return any(layer.requires_grad for layer in layers)


def head_reads_trained(tuned, original, batch) -> bool:
    """Whether the original model's head output depends on the encoder parameters `tuned` trains
    (for a task that copies the tuned encoder into the original model and reads its head)."""
    trained = set(plain_state_dict(tuned.base_model, trained_only=True))
    flags = [(p, p.requires_grad) for p in original.parameters()]
    for parameter in original.parameters():
        parameter.requires_grad_(False)
    for name, parameter in original.base_model.named_parameters():
        parameter.requires_grad_(name in trained)
    try:
        with torch.enable_grad(), evaluating(original):
            return original(**_probe(original, batch)).logits.requires_grad
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
