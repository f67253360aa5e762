"""The `masked_lm` check: the tuned encoder's masked-LM loss under the base model's own head.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from transformers import AutoModelForMaskedLM

from autoft.config import BaseTaskConfig
from autoft.errors import UsageError
from autoft.forgetting.base import (
    MASK_FRACTION,
    MASK_SEED,
    BaseScore,
    BaseTask,
    Replay,
    SplitInto,
    no_replay,
    pick,
    scored_part,
    tokenize_texts,
    top_kl,
    top_log_probs,
)
from autoft.forgetting.encoders import (
    copy_encoder,
    head_log_probs,
    head_reads_trained,
    load_with_head,
)
from autoft.forgetting.readers import read_texts
from autoft.replay import PrefixMemo


class MaskedLMTask(BaseTask):
    """Masked-LM loss of the tuned encoder under the base model's own masked-LM head."""

    name = "masked_lm_loss"
    inputs = ("text",)
    models = ("encoder",)  # the base model's own masked-LM head and mask token
    measures = "How well the base model's masked-LM head, fed by the tuned encoder, fills blanks."
    higher_is_better = False

    def _read(self, config: BaseTaskConfig, model_source: str, tokenizer, max_length: int,
              trust_remote_code: bool, split_into: SplitInto) -> None:
        if tokenizer.mask_token_id is None:
            raise UsageError(
                f"The tokenizer of {model_source} has no mask token; use base-task "
                f"kind 'drift' or 'similarity' instead of 'masked_lm'."
            )
        self.original_ = load_with_head(
            AutoModelForMaskedLM, model_source, "masked_lm", trust_remote_code
        )
        self.mask_token_id_ = tokenizer.mask_token_id
        texts = read_texts(config)
        parts = split_into(len(texts), "examples")
        self.batches_ = {
            part: _mask(
                tokenize_texts(
                    tokenizer, pick(texts, rows), max_length, return_special_tokens_mask=True
                ),
                tokenizer.mask_token_id,
            )
            for part, rows in parts.items()
        }
        self.memo_ = PrefixMemo()

    def _losses(self, model, device: str, part: str, frozen: int = 0) -> np.ndarray:
        """Per text: the summed cross-entropy over its masked tokens, and how many there are."""
        original = self.original_.to(device)
        copy_encoder(model, original)
        rows = []
        for batch, labels in self.batches_[part]:
            logits = self.memo_.run(original, batch.to(device), frozen).logits.float()
            labels = labels.to(device)
            losses = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), labels, reduction="none"
            ).sum(1)
            rows.append(torch.stack([losses, (labels != -100).sum(1).float()], 1).cpu())
        return torch.cat(rows).double().numpy()

    @torch.no_grad()
    def score(self, model, device: str, quick: bool = False, frozen: int = 0) -> BaseScore:
        total, masked = self._losses(model, device, scored_part(quick), frozen).sum(0)
        masked = int(masked)
        loss = float(total) / max(masked, 1)
        perplexity = math.exp(loss) if loss < 700 else math.inf
        return BaseScore(
            loss, {"loss": loss, "perplexity": perplexity, "masked_tokens": float(masked)}
        )

    def reads_trained(self, model) -> bool:
        batch, _labels = self.batches_["quick"][0]
        return head_reads_trained(model, self.original_, batch)

    def preservation_batches(self, tokenizer, texts: list[str], max_length: int, size: int) -> list:
        """Masked as the check's batches are: the same 15% of real tokens every time."""
        batches = tokenize_texts(tokenizer, texts, max_length, size,
                                 return_special_tokens_mask=True)
        return [batch for batch, _labels in _mask(batches, self.mask_token_id_)]

    def reads(self, model, batch: dict, replay: Replay = no_replay) -> torch.Tensor:
        """The original masked-LM head's log-probabilities at the masked positions."""
        log_probs = head_log_probs(model, self.original_, batch, replay)
        return log_probs[batch["input_ids"] == self.mask_token_id_]

    @torch.no_grad()
    def target(self, model, batch: dict) -> torch.Tensor:
        """Only the untouched head's likeliest tokens per blank (`top_log_probs`)."""
        return top_log_probs(self.reads(model, batch))

    def distance(self, tuned: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """KL(untouched ‖ tuned) on the untouched head's likeliest tokens, mean over blanks."""
        return top_kl(tuned, target)

    @torch.no_grad()
    def observe(self, model, device: str, part: str = "audit", frozen: int = 0) -> np.ndarray:
        return self._losses(model, device, part, frozen)

    def statistic(self, observed: np.ndarray, rows: np.ndarray, part: str = "audit") -> float:
        total, masked = observed[rows].sum(0)
        return float(total / max(masked, 1.0))


def _mask(batches: list, mask_token_id: int) -> list[tuple]:
    """Replace a fixed 15% of the real tokens by the mask token (same seed, same positions every
    time); labels hold the original ids there and -100 (ignored) elsewhere."""
    generator = torch.Generator().manual_seed(MASK_SEED)
    masked = []
    for batch in batches:
        ids = batch["input_ids"]
        real = (batch.pop("special_tokens_mask") == 0) & (batch["attention_mask"] == 1)
        chosen = (torch.rand(ids.shape, generator=generator) < MASK_FRACTION) & real
        batch["input_ids"] = torch.where(chosen, mask_token_id, ids)
        masked.append((batch, torch.where(chosen, ids, -100)))
    return masked
