"""The `causal_lm` check: the tuned decoder's next-token loss (perplexity) on general text.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from autoft.config import BaseTaskConfig
from autoft.forgetting.base import BaseScore, SplitInto, pick, scored_part
from autoft.forgetting.decoders import NextTokenTask, every_token
from autoft.forgetting.readers import read_texts


class CausalLMTask(NextTokenTask):
    """Next-token loss per token on general text: through the tuned model's own LM head (a
    causal LM), or the base model's LM head fed by the tuned decoder (a classifier on one)."""

    name = "causal_lm_loss"
    measures = "How well the model, as a language model, still predicts the next token of text."
    higher_is_better = False
    default_sizes = (40, 12)  # texts: a 135M decoder reads 40 general passages in about 2 s

    def _read(self, config: BaseTaskConfig, model_source: str, tokenizer, max_length: int,
              trust_remote_code: bool, split_into: SplitInto) -> None:
        self._load(model_source, "causal_lm", tokenizer, max_length, trust_remote_code)
        texts = read_texts(config)
        parts = split_into(len(texts), "texts")
        self.batches_ = {
            part: every_token(self.preservation_batches(tokenizer, pick(texts, rows), max_length,
                                                        self.size_))
            for part, rows in parts.items()
        }

    @torch.no_grad()
    def score(self, model, device: str, quick: bool = False, frozen: int = 0) -> BaseScore:
        total, tokens = self._losses(model, device, scored_part(quick), frozen).sum(0).tolist()
        loss = total / max(tokens, 1.0)
        perplexity = math.exp(loss) if loss < 700 else math.inf
        return BaseScore(loss, {"loss": loss, "perplexity": perplexity, "tokens": tokens})

    @torch.no_grad()
    def observe(self, model, device: str, part: str = "audit", frozen: int = 0) -> np.ndarray:
        """Each text's summed next-token loss and its number of predicted tokens."""
        return self._losses(model, device, part, frozen).numpy()

    def statistic(self, observed: np.ndarray, rows: np.ndarray, part: str = "audit") -> float:
        total, tokens = observed[rows].sum(0)
        return float(total / max(tokens, 1.0))
