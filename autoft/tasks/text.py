"""What the text kinds share: texts (or text pairs) read from a table, tokenized once with a max
length chosen from the data, length-bucketed batches padded per batch, and the prefix cache's
per-token layout. text_classification and text_regression differ only in their labels.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import transformers

from autoft.data import TargetData, column, read_table, text_column
from autoft.errors import UsageError
from autoft.model import load_model, load_tokenizer
from autoft.tasks.base import DataSettings, Preserving, Rows
from autoft.tasks.labelled import LabelledTask

log = logging.getLogger("autoft")

BUCKET_BATCHES = 50
MAX_LENGTH_PERCENTILE = 98
# Shares of the training texts' word pieces the tokenizer reads as unknown: a tokenizer that
# fits the texts gives about 0% (WordPiece or SentencePiece on English: none; BERT on tweets: a
# few emoji per thousand pieces); above UNKNOWN_WARN some words are lost; above UNKNOWN_REFUSE
# most of every text is, so every trial would score about chance.
UNKNOWN_WARN = 0.01
UNKNOWN_REFUSE = 0.5


@dataclass(frozen=True)
class Split:
    """One tokenized split: token ids per example (unpadded), labels (class indices or numbers),
    and the segment ids of each token where the tokenizer gives them (BERT-style pairs: 0 for the
    first text, 1 for the second); None where it gives none, or in data prepared before autoft
    kept them."""

    input_ids: list[list[int]]
    labels: list
    token_type_ids: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.labels)


def bucketed_batches(
    lengths: list[int], batch_size: int, generator: torch.Generator
) -> list[list[int]]:
    """Shuffled batches of similar-length examples, so dynamic padding pads little."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    chunk = batch_size * BUCKET_BATCHES
    batches = []
    for start in range(0, len(order), chunk):
        bucket = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches += [bucket[i : i + batch_size] for i in range(0, len(bucket), batch_size)]
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


def collate(split: Split, indices: list[int], pad_id: int, device: torch.device) -> dict:
    """One batch with its labels, on `device`: the inputs padded (pad_inputs); labels keep their
    type: class indices become a long tensor, numbers a float one."""
    batch = pad_inputs(split, indices, pad_id)
    batch["labels"] = torch.tensor([split.labels[i] for i in indices])
    return to_device(batch, device)


def to_device(batch: dict, device: torch.device) -> dict:
    return {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}


def pad_inputs(split: Split, indices: list[int], pad_id: int) -> dict:
    """Pad one batch's inputs to its longest example; the mask marks the real tokens. Segment
    ids, where the split has them, pad with 0 (padding is masked out)."""
    width = max(len(split.input_ids[i]) for i in indices)
    ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    segments = None if split.token_type_ids is None else torch.zeros_like(ids)
    for row, i in enumerate(indices):
        tokens = split.input_ids[i]
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = 1
        if segments is not None:
            segments[row, : len(tokens)] = torch.tensor(split.token_type_ids[i], dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": mask}
    if segments is not None:
        batch["token_type_ids"] = segments
    return batch


def tokenize(tokenizer, texts: list, max_length: int | None) -> dict[str, list[list[int]]]:
    """The tokenizer's outputs per text (input_ids, and token_type_ids where it makes them),
    truncated; padding and the attention mask happen per batch in training."""
    if texts and isinstance(texts[0], tuple):
        first, second = zip(*texts, strict=True)
        return tokenizer(
            list(first), list(second), truncation=max_length is not None, max_length=max_length
        )
    return tokenizer(list(texts), truncation=max_length is not None, max_length=max_length)


def tokenize_split(tokenizer, texts: list, labels: list, max_length: int) -> Split:
    """A split as training reads it: every per-token input the tokenizer makes for the model."""
    encoded = tokenize(tokenizer, texts, max_length)
    return Split(encoded["input_ids"], labels, encoded.get("token_type_ids"))


def check_known_tokens(tokenizer, input_ids: list[list[int]]) -> None:
    """Refuse a tokenizer that reads most of the training texts as unknown tokens (one without
    its vocabulary, or made for other texts); warn, with the count, when some pieces are."""
    unknown_id = tokenizer.unk_token_id
    if unknown_id is None:
        return
    special = set(tokenizer.all_special_ids) - {unknown_id}
    pieces = [token for ids in input_ids for token in ids if token not in special]
    unknown = sum(token == unknown_id for token in pieces)
    share = unknown / max(len(pieces), 1)
    source = tokenizer.name_or_path
    if share > UNKNOWN_REFUSE:
        raise UsageError(
            f"The tokenizer of model {source} reads {share:.0%} of the training texts' word "
            f"pieces as unknown ({tokenizer.unk_token}), so trials would learn from almost "
            "nothing: give --model a folder with its own tokenizer files, or a hub name."
        )
    if share > UNKNOWN_WARN:
        log.warning("The tokenizer of model %s reads %d of %d word pieces of the training texts "
                    "(%.1f%%) as unknown (%s); those words are lost to training.", source,
                    unknown, len(pieces), 100 * share, tokenizer.unk_token)


def model_length_limit(tokenizer, model_config) -> int:
    """The longest input the model accepts (tokenizers often report a huge placeholder)."""
    limits = [
        getattr(model_config, "max_position_embeddings", None),
        getattr(model_config, "n_positions", None),
        getattr(tokenizer, "model_max_length", None),  # an image processor has none
    ]
    usable = [limit for limit in limits if isinstance(limit, int) and 0 < limit < 100_000]
    return min(usable) if usable else 512


def choose_max_length(settings: DataSettings, lengths: list[int], model_limit: int):
    """Cover nearly every example without padding everything to the model's limit."""
    if settings.max_length is not None:
        return min(settings.max_length, model_limit), None
    covering = int(np.percentile(lengths, MAX_LENGTH_PERCENTILE))
    chosen = min(model_limit, max(16, 8 * math.ceil(covering / 8)))
    return chosen, (
        f"max_length: {chosen} tokens, which covers {MAX_LENGTH_PERCENTILE}% of the "
        f"training texts whole (model limit {model_limit})"
    )


def texts_of(table, settings: DataSettings, where: str, source: str) -> list:
    """The text of each row, or (text, pair) tuples; see data.text_column for what is refused."""
    first = text_column(table, settings.text_column, where + " / --text-column", source)
    if not settings.text_pair_column:
        return first
    second = text_column(table, settings.text_pair_column, where + " / --text-pair-column",
                         source)
    return list(zip(first, second, strict=True))


class TextTask(LabelledTask, Preserving):
    """A task on texts or text pairs with AutoModelForSequenceClassification and a tokenizer;
    subclasses say what a label is and how it is split and scored."""

    inputs = "text"
    cache_layout = "per_token"
    split_class = Split
    auto_class = "AutoModelForSequenceClassification"

    def _read_split(self, source: str, settings: DataSettings, field_name: str, split: str):
        """Texts (or pairs) and labels of a table."""
        where = settings.where(field_name)
        table = read_table(source, where, split)
        values = column(table, settings.label_column, where + " / --label-column", source)
        labels = self.parse_labels(values, settings, where, source)
        return texts_of(table, settings, where, source), labels

    def load_model(self, source: str, label_names: list[str], trust_remote_code: bool):
        return load_model(source, label_names, trust_remote_code,
                          auto_class=getattr(transformers, self.auto_class),
                          **self.head_settings())

    def head_settings(self) -> dict:
        """How the new head is configured beyond its labels (problem_type)."""
        return {}

    def load_processor(self, source: str, trust_remote_code: bool):
        return load_tokenizer(source, trust_remote_code)

    def encode(self, rows: Rows, processor, model_config, settings: DataSettings) -> TargetData:
        label_names = self.label_names(rows, settings)
        metric, metric_note = self.choose_metric(settings, rows.train_labels)
        limit = model_length_limit(processor, model_config)
        untruncated = tokenize(processor, rows.train_inputs[:5000], None)["input_ids"]
        check_known_tokens(processor, untruncated)
        max_length, length_note = choose_max_length(settings, [len(i) for i in untruncated],
                                                    limit)
        notes = rows.notes + [note for note in (metric_note, length_note) if note]
        return TargetData(
            train=tokenize_split(processor, rows.train_inputs,
                                 self.encode_labels(rows.train_labels, label_names), max_length),
            validation=tokenize_split(processor, rows.val_inputs,
                                      self.encode_labels(rows.val_labels, label_names),
                                      max_length),
            label_names=label_names,
            metric=metric,
            max_length=max_length,
            notes=notes,
            task=self.name,
        )

    def collate(self, split: Split, indices: list[int], pad_id: int, device: torch.device) -> dict:
        return collate(split, indices, pad_id, device)

    def sizes(self, split: Split) -> list[int]:
        return [len(ids) for ids in split.input_ids]

    def digest_inputs(self, split: Split, digest) -> None:
        """Lengths, token ids and segment ids."""
        digest.update(np.array(self.sizes(split), dtype=np.int64).tobytes())
        for per_token in (split.input_ids, split.token_type_ids):
            digest.update(b"-" if per_token is None else
                          np.fromiter((t for ids in per_token for t in ids), np.int64).tobytes())

    def train_batches(self, split: Split, batch_size: int, generator: torch.Generator
                      ) -> list[list[int]]:
        return bucketed_batches(self.sizes(split), batch_size, generator)

    def input_texts(self, split: Split, processor, indices: list[int]) -> list[str]:
        """Decoded from the prepared token ids (the raw table is not kept); of a pair, the first
        text only: the tokens of segment 0 where the tokenizer gives segment ids, else those
        before its first separator."""
        texts = []
        for i in indices:
            ids = split.input_ids[i]
            if split.token_type_ids is not None:
                ids = [t for t, segment in zip(ids, split.token_type_ids[i], strict=True)
                       if segment == 0]
            elif processor.sep_token_id in ids[1:]:
                ids = ids[: ids.index(processor.sep_token_id, 1)]
            texts.append(processor.decode(ids, skip_special_tokens=True).strip())
        return texts

