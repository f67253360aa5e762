"""The `ranking` check, the default for text encoders: how the tuned encoder ranks pairs of
general texts by cosine against the untouched encoder's own ranking. No labels: the untouched
model's cosines are the record of what it knew.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from scipy.stats import rankdata

from autoft.config import BaseTaskConfig
from autoft.forgetting.base import BaseScore, SplitInto, pick, scored_part, tokenize_texts
from autoft.forgetting.encoders import load_encoder, pooled
from autoft.forgetting.kinds.similarity import SimilarityTask, pairs_among
from autoft.forgetting.readers import read_texts
from autoft.replay import PrefixMemo

# Agreement (Spearman of the tuned cosines with the untouched ones) onto the retention scale of
# a gold similarity skill: calibrated = 1 - SLOPE * (1 - agreement). Fitted through the origin on
# the trials of benchmarks/default_check.py (Lee documents' human ratings as the gold retention)
# and checked leave-one-study-out there; DESIGN.md, "The default forgetting check".
SLOPE = 2.0
RANKED = 4  # cosine matrices whose pair order is kept (RankingTask._ranks)
STAND_IN_STEPS = 16  # halvings of the stand-in's noise scale: within 1e-5 of the bar's


def calibrated(agreement: float) -> float:
    """The agreement on the gold retention's scale: 0.95 means what 95% of the Lee skill means."""
    return 1.0 - SLOPE * (1.0 - agreement)


def pair_order(cosines: np.ndarray) -> np.ndarray:
    """Each pair's place among the distinct cosines of every pair of the matrix (0, 1, ...;
    equal cosines share one), as a symmetric integer matrix indexed like it."""
    upper = np.triu_indices(len(cosines), k=1)
    order = np.zeros(cosines.shape, dtype=np.int64)
    order[upper] = rankdata(cosines[upper], method="dense").astype(np.int64) - 1
    return order + order.T


def ranks_among(order: np.ndarray) -> np.ndarray:
    """The ranks (1-based, ties averaged, as scipy's rankdata) of the values whose `pair_order`
    places these are: counted, not sorted."""
    counts = np.bincount(order)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2)[order]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r; nan where either side is constant (an encoder that reads every text alike)."""
    a, b = a - a.mean(), b - b.mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(a @ b / np.sqrt((a @ a) * (b @ b)))


class RankingTask(SimilarityTask):
    """Spearman of the tuned encoder's cosines of every two general texts with the untouched
    encoder's, calibrated (`calibrated`); the untouched model scores 1.0."""

    name = "ranking_agreement"
    inputs = ("text",)
    measures = ("How closely the encoder still ranks pairs of general texts by similarity as the "
                "untouched encoder did (calibrated to the share of a similarity skill kept).")
    higher_is_better = True
    # texts of the searched part and of its quick slice, as prepare sizes them for MiniLM
    # (prepare.sized_check): the final check then reuses the last quick check
    default_sizes = (64, 64)

    def _read(self, config: BaseTaskConfig, model_source: str, tokenizer, max_length: int,
              trust_remote_code: bool, split_into: SplitInto) -> None:
        texts = read_texts(config)
        parts = split_into(len(texts), "texts")
        self.batches_ = {part: tokenize_texts(tokenizer, pick(texts, rows), max_length)
                         for part, rows in parts.items()}
        self.memo_ = PrefixMemo()
        self._load_base = partial(load_encoder, model_source, trust_remote_code)
        self.reference_: dict[str, np.ndarray] = {}
        self.ranked_: list[tuple[np.ndarray, np.ndarray]] = []

    def _reference(self, part: str, device: str) -> np.ndarray:
        """The untouched encoder's cosine of every two texts of a part, computed on first use in
        the caller's precision (the searched parts together, the audit alone, as drift does)."""
        if part not in self.reference_:
            base = self._load_base().eval().to(device)
            for name in ("audit",) if part == "audit" else ("search", "quick"):
                (embeddings,) = pooled(base, self.batches_[name], device, False)
                unit = torch.nn.functional.normalize(embeddings, dim=-1).double().cpu()
                self.reference_[name] = (unit @ unit.T).numpy()
        return self.reference_[part]

    @torch.no_grad()
    def score(self, model, device: str, quick: bool = False, frozen: int = 0) -> BaseScore:
        part = scored_part(quick)
        observed = self.observe(model, device, part, frozen)
        rows = np.arange(self.units_[part])
        agreement = self.agreement(observed, rows, part)
        return BaseScore(calibrated(agreement),
                         {"agreement": agreement, "texts": float(len(rows))})

    @torch.no_grad()
    def observe(self, model, device: str, part: str = "audit", frozen: int = 0) -> np.ndarray:
        self._reference(part, device)
        return super().observe(model, device, part, frozen)

    def agreement(self, observed: np.ndarray, rows: np.ndarray, part: str) -> float:
        """Spearman of the tuned cosines with the untouched ones over the pairs among `rows`,
        ranked by counting (`ranks_among`) on each model's pair order, sorted once per model:
        scipy's spearmanr sorted every bootstrap draw again, 57 s of one audit."""
        left, right = pairs_among(rows)
        tuned = ranks_among(self._ranks(observed)[left, right])
        untouched = ranks_among(self._ranks(self.reference_[part])[left, right])
        return pearson(tuned, untouched)

    def _ranks(self, cosines: np.ndarray) -> np.ndarray:
        """`pair_order` of a cosine matrix, kept for the last RANKED matrices asked: a paired
        bootstrap asks for the untouched part's, the untouched model's and the tuned model's
        in turn, once per draw."""
        for matrix, ranks in self.ranked_:
            if matrix is cosines:
                return ranks
        self.ranked_ = [*self.ranked_[1 - RANKED:], (cosines, pair_order(cosines))]
        return self.ranked_[-1][1]

    def statistic(self, observed: np.ndarray, rows: np.ndarray, part: str = "audit") -> float:
        return calibrated(self.agreement(observed, rows, part))

    @torch.no_grad()
    def stand_in(self, model, device: str, bar: float, seed: int = 0) -> np.ndarray:
        """The searched part as a stand-in for a tuned model that keeps just the bar would
        observe it: the untouched unit embeddings moved by seeded Gaussian noise, its scale
        bisected until the calibrated retention over the part meets the bar."""
        self._reference("search", device)
        unit = self._unit_embeddings(model, device, "search").double()
        noise = torch.randn(unit.shape, generator=torch.Generator().manual_seed(seed),
                            dtype=torch.float64)
        rows = np.arange(self.units_["search"])
        low, high = 0.0, 1.0
        for _ in range(STAND_IN_STEPS):
            moved = torch.nn.functional.normalize(unit + (low + high) / 2 * noise, dim=-1)
            observed = (moved @ moved.T).numpy()
            low, high = ((low + high) / 2, high) if self.statistic(observed, rows, "search") > bar \
                else (low, (low + high) / 2)
        return observed
