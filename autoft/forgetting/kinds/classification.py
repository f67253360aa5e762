"""The `classification` check: accuracy of the tuned encoder under the base model's own head.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

from autoft.config import BaseTaskConfig
from autoft.errors import UsageError
from autoft.forgetting.base import (
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
    copy_encoder,
    head_log_probs,
    head_reads_trained,
    load_with_head,
)
from autoft.forgetting.readers import is_table, read_table, table_column
from autoft.replay import PrefixMemo
from autoft.tasks.images import read_images


class ClassificationTask(BaseTask):
    """Accuracy of the tuned encoder under the base model's own classification head; with
    base.text_pair_column, on text pairs (an NLI or paraphrase head), segment ids included."""

    name = "classification_accuracy"
    inputs = ("text", "image")
    models = ("encoder",)  # the base model's own saved classifier head
    measures = "How often the base model's own classifier head, fed by the tuned encoder, is right."
    higher_is_better = True

    def _read(self, config: BaseTaskConfig, model_source: str, tokenizer, max_length: int,
              trust_remote_code: bool, split_into: SplitInto) -> None:
        images = takes_images(tokenizer)
        if not images and not is_table(config.data):
            raise UsageError(
                f"Base-task kind 'classification' needs a table with text and label "
                f"columns, not {config.data}; give a CSV, JSONL or Parquet file."
            )
        auto_class = (AutoModelForImageClassification if images
                      else AutoModelForSequenceClassification)
        self.original_ = load_with_head(auto_class, model_source, "classification",
                                        trust_remote_code)
        pairs = None
        if images:  # a folder of class folders, or a table with image and label columns
            texts, values = read_images(config.data, "base.data", config.label_column)
            names = [str(value) for value in values]
        else:
            frame = read_table(config.data)
            texts = [str(text) for text in
                     table_column(frame, config.data, config.text_column, "text_column")]
            pairs = config.text_pair_column and [
                str(text)
                for text in table_column(frame, config.data, config.text_pair_column,
                                         "text_pair_column")
            ]
            names = table_column(frame, config.data, config.label_column, "label_column")
        labels = _label_ids(names, self.original_.config, config.data, config.label_column)
        parts = split_into(len(texts), "examples")
        self.labels_ = {part: labels[rows] for part, rows in parts.items()}
        self.batches_ = {
            part: base_batches(tokenizer, pick(texts, rows), max_length,
                               pairs=pairs and pick(pairs, rows), config=self.original_.config)
            for part, rows in parts.items()
        }
        self.memo_ = PrefixMemo()

    def _correct(self, model, device: str, part: str, frozen: int = 0) -> torch.Tensor:
        original = self.original_.to(device)
        copy_encoder(model, original)
        predicted = torch.cat(
            [
                self.memo_.run(original, batch.to(device), frozen).logits.argmax(-1).cpu()
                for batch in self.batches_[part]
            ]
        )
        return predicted == self.labels_[part]

    @torch.no_grad()
    def score(self, model, device: str, quick: bool = False, frozen: int = 0) -> BaseScore:
        accuracy = float(self._correct(model, device, scored_part(quick), frozen).double().mean())
        return BaseScore(accuracy, {"accuracy": accuracy})

    def reads_trained(self, model) -> bool:
        return head_reads_trained(model, self.original_, self.batches_["quick"][0])

    @torch.no_grad()
    def observe(self, model, device: str, part: str = "audit", frozen: int = 0) -> np.ndarray:
        return self._correct(model, device, part, frozen).numpy()

    def statistic(self, observed: np.ndarray, rows: np.ndarray, part: str = "audit") -> float:
        return float(observed[rows].mean())

    def reads(self, model, batch: dict, replay: Replay = no_replay) -> torch.Tensor:
        """The original head's class log-probabilities, fed by the tuned encoder."""
        return head_log_probs(model, self.original_, batch, replay)

    def distance(self, tuned: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """KL(untouched ‖ tuned) of the class distributions, averaged over texts."""
        return torch.nn.functional.kl_div(tuned, target, log_target=True, reduction="batchmean")


def _label_ids(labels: list, model_config, path: str, column: str) -> torch.Tensor:
    """Gold labels as the original head's class ids: names through its label2id, or ids as given."""
    label2id = {str(name): int(index) for name, index in model_config.label2id.items()}
    ids = []
    for label in labels:
        index = label2id.get(str(label), _int_or_none(label))
        if index is None or not 0 <= index < model_config.num_labels:
            raise UsageError(
                f"{path} column '{column}': label '{label}' is not one of the base "
                f"model's labels ({', '.join(label2id)}); use those names or ids "
                f"0..{model_config.num_labels - 1}."
            )
        ids.append(index)
    return torch.tensor(ids)


def _int_or_none(label) -> int | None:
    try:
        return int(str(label))
    except ValueError:
        return None
