"""The `drift` check: linear CKA between the base and the tuned encoder's representations.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from autoft.config import BaseTaskConfig
from autoft.forgetting.base import (
    EPS,
    BaseScore,
    BaseTask,
    Replay,
    SplitInto,
    base_batches,
    no_replay,
    pick,
    scored_part,
    takes_images,
)
from autoft.forgetting.encoders import (
    hidden_states_read_trained,
    linear_cka,
    load_encoder,
    pool,
    pooled,
)
from autoft.forgetting.readers import read_texts
from autoft.tasks.images import read_images


class DriftTask(BaseTask):
    """Linear CKA between the base model's and the tuned encoder's representations, per layer."""

    name = "drift_cka"
    inputs = ("text", "image")
    measures = "How close the tuned encoder's representations of base-task texts stay to the base."
    higher_is_better = True
    replays_prefix = False

    def _read(self, config: BaseTaskConfig, model_source: str, tokenizer, max_length: int,
              trust_remote_code: bool, split_into: SplitInto) -> None:
        self._load_base = partial(load_encoder, model_source, trust_remote_code)
        self._base = self._load_base()
        if takes_images(tokenizer):  # any images: a folder, or a table with an image column
            texts = read_images(config.data, "base.data", None)[0]
        else:
            texts = read_texts(config)
        parts = split_into(len(texts), "examples")
        self.batches_ = {
            part: base_batches(tokenizer, pick(texts, rows), max_length, config=self._base.config)
            for part, rows in parts.items()
        }
        self.reference_: dict[str, list[torch.Tensor]] = {}

    @torch.no_grad()
    def score(self, model, device: str, quick: bool = False, frozen: int = 0) -> BaseScore:
        """Every layer is compared, the frozen ones too, so the model runs whole."""
        reference = self._reference(scored_part(quick), device)
        batches = self.batches_[scored_part(quick)]
        tuned = pooled(model.base_model, batches, device, every_layer=True)
        details = {
            f"cka_layer_{i}": linear_cka(base, mine)
            for i, (base, mine) in enumerate(zip(reference, tuned, strict=True))
        }
        return BaseScore(details[f"cka_layer_{len(tuned) - 1}"], details)

    def reads_trained(self, model) -> bool:
        return hidden_states_read_trained(model.base_model, self.batches_["quick"][0], True)

    def reads(self, model, batch: dict, replay: Replay = no_replay) -> torch.Tensor:
        """Every layer's mean-pooled states (texts × layers × hidden), the model run whole: the
        check compares every layer."""
        layers = model.base_model(**batch, output_hidden_states=True).hidden_states
        return torch.stack([pool(layer, batch) for layer in layers], 1)

    def distance(self, tuned: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Squared distance relative to the untouched state's size, summed over layers (frozen
        ones add nothing) and averaged over texts."""
        gap = (tuned.float() - target).pow(2).sum(-1) / target.pow(2).sum(-1).clamp(min=EPS)
        return gap.sum(-1).mean()

    @torch.no_grad()
    def observe(self, model, device: str, part: str = "audit", frozen: int = 0) -> torch.Tensor:
        """The last layer's representation of each text of the part (the model runs whole, as
        in `score`)."""
        self._reference(part, device)
        return pooled(model.base_model, self.batches_[part], device, every_layer=True)[-1].cpu()

    def statistic(self, observed: torch.Tensor, rows: np.ndarray, part: str = "audit") -> float:
        rows = torch.as_tensor(rows)
        return linear_cka(self.reference_[part][-1][rows], observed[rows])

    def _reference(self, part: str, device: str) -> list[torch.Tensor]:
        """The base model's representations of a part, once: the searched parts together, the
        audit part only when audited (no check reads it); the base model is then freed, and
        loaded again in the rare case the other kind is asked for later."""
        if part not in self.reference_:
            base = (self._base or self._load_base()).eval().to(device)
            parts = ("audit",) if part == "audit" else ("search", "quick")
            self.reference_ |= {
                name: [layer.cpu() for layer in pooled(base, self.batches_[name], device, True)]
                for name in parts
            }
            self._base = None
        return self.reference_[part]
