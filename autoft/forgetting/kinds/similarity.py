"""The `similarity` check: cosine of mean-pooled embeddings against human similarity ratings.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from autoft.config import BaseTaskConfig
from autoft.forgetting.base import (
    BaseScore,
    BaseTask,
    Replay,
    SplitInto,
    no_replay,
    scored_part,
    tokenize_texts,
)
from autoft.forgetting.encoders import hidden_states_read_trained, mean_pool, pooled
from autoft.forgetting.readers import read_pairs
from autoft.replay import PrefixMemo


class SimilarityTask(BaseTask):
    """Cosine of mean-pooled embeddings against human similarity ratings."""

    name = "similarity_spearman"
    inputs = ("text",)
    measures = "How well the cosine of the encoder's embeddings ranks text pairs as people do."
    higher_is_better = True

    def _read(self, config: BaseTaskConfig, model_source: str, tokenizer, max_length: int,
              trust_remote_code: bool, split_into: SplitInto) -> None:
        unit, total, take = read_pairs(config)
        parts = split_into(total, unit)
        self.pairs_ = {part: take(rows) for part, rows in parts.items()}
        self.batches_ = {
            part: tokenize_texts(tokenizer, pairs.texts, max_length)
            for part, pairs in self.pairs_.items()
        }
        self.memo_ = PrefixMemo()

    def _unit_embeddings(self, model, device: str, part: str, frozen: int = 0) -> torch.Tensor:
        (embeddings,) = pooled(
            model.base_model, self.batches_[part], device, False, self.memo_, frozen
        )
        return torch.nn.functional.normalize(embeddings, dim=-1).cpu()

    @torch.no_grad()
    def score(self, model, device: str, quick: bool = False, frozen: int = 0) -> BaseScore:
        pairs = self.pairs_[scored_part(quick)]
        unit = self._unit_embeddings(model, device, scored_part(quick), frozen)
        cosine = (unit[pairs.left] * unit[pairs.right]).sum(-1).double().numpy()
        spearman = float(spearmanr(cosine, pairs.gold).statistic)
        pearson = float(pearsonr(cosine, pairs.gold).statistic)
        return BaseScore(
            spearman, {"spearman": spearman, "pearson": pearson, "pairs": float(len(pairs.gold))}
        )

    def reads_trained(self, model) -> bool:
        return hidden_states_read_trained(model.base_model, self.batches_["quick"][0], False)

    @torch.no_grad()
    def observe(self, model, device: str, part: str = "audit", frozen: int = 0) -> np.ndarray:
        """The cosine of every two texts of the part."""
        unit = self._unit_embeddings(model, device, part, frozen).double()
        return (unit @ unit.T).numpy()

    def statistic(self, observed: np.ndarray, rows: np.ndarray, part: str = "audit") -> float:
        """Spearman over the drawn pairs, or over the pairs among the drawn documents."""
        pairs = self.pairs_[part]
        if pairs.ratings is None:
            left, right, gold = pairs.left[rows], pairs.right[rows], pairs.gold[rows]
        else:
            left, right = pairs_among(rows)
            gold = pairs.ratings[left, right]
        return float(spearmanr(observed[left, right], gold).statistic)

    def reads(self, model, batch: dict, replay: Replay = no_replay) -> torch.Tensor:
        """The mean-pooled embeddings whose cosines the check ranks."""
        encoder = model.base_model
        with replay(encoder):
            hidden = encoder(**batch).last_hidden_state
        return mean_pool(hidden, batch["attention_mask"])

    def distance(self, tuned: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """1 − cosine, the angle the check's cosines would see change, averaged over texts."""
        return (1 - torch.nn.functional.cosine_similarity(tuned.float(), target, dim=-1)).mean()


def pairs_among(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every two of the drawn documents (repeats allowed), as indices, a document never with
    itself."""
    left, right = (rows[side] for side in np.triu_indices(len(rows), k=1))
    return left[left != right], right[left != right]
