"""The `qa` check: how likely the tuned model finds the gold answers to general questions.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from autoft.config import BaseTaskConfig
from autoft.forgetting.base import BaseScore, SplitInto, pick, scored_part
from autoft.forgetting.decoders import NextTokenTask, answer_batches
from autoft.forgetting.readers import read_questions


class QATask(NextTokenTask):
    """The gold answer's probability per token given its question (asked in the tokenizer's chat
    template where it has one): the geometric mean over every answer token, read as
    `causal_lm` reads the model. Smooth where exact match of greedy answers would be 0 or 1, and
    it needs no generation."""

    name = "qa_answer_probability"
    measures = "How likely the model still finds the gold answers to general questions."
    higher_is_better = True

    def _read(self, config: BaseTaskConfig, model_source: str, tokenizer, max_length: int,
              trust_remote_code: bool, split_into: SplitInto) -> None:
        self._load(model_source, "qa", tokenizer, max_length, trust_remote_code)
        questions, answers = read_questions(config)
        parts = split_into(len(questions), "questions")
        self.batches_ = {
            part: answer_batches(tokenizer, pick(questions, rows), pick(answers, rows),
                                 max_length, self.size_)
            for part, rows in parts.items()
        }

    @torch.no_grad()
    def score(self, model, device: str, quick: bool = False, frozen: int = 0) -> BaseScore:
        observed = self.observe(model, device, scored_part(quick), frozen)
        total, tokens = observed.sum(0).tolist()
        log_likelihood = -total / max(tokens, 1.0)
        return BaseScore(math.exp(log_likelihood), {
            "answer_token_probability": math.exp(log_likelihood),
            "log_likelihood_per_token": log_likelihood, "answer_tokens": tokens,
            "questions": float(len(observed))})

    @torch.no_grad()
    def observe(self, model, device: str, part: str = "audit", frozen: int = 0) -> np.ndarray:
        """Each question's summed answer-token loss and its number of answer tokens."""
        return self._losses(model, device, part, frozen).numpy()

    def statistic(self, observed: np.ndarray, rows: np.ndarray, part: str = "audit") -> float:
        total, tokens = observed[rows].sum(0)
        return math.exp(-total / max(tokens, 1.0))
