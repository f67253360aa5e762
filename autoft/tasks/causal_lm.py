"""causal-lm: a decoder language model tuned to continue text: prompt/response pairs (the loss
counts the response's tokens only; the prompt is wrapped in the tokenizer's chat template where
it has one, else joined to the response by a newline) or one text column (continued
pretraining: every token counts). The metric is the validation loss per counted token, lower is
better; perplexity is its exponential.

What trains at depth k: the top k decoder blocks and what runs after them (the final norm, and
an lm_head of its own where the model does not tie it to the input embeddings); a tied lm_head
is the embedding matrix, so it stays frozen with the embeddings until every layer trains. The
head is pretrained, not new, so the search holds head_lr_multiplier at 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.nn import functional
from transformers import AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from autoft.data import TargetData, column, file_text, is_missing, read_table, row_name
from autoft.errors import UsageError
from autoft.model import load_tokenizer, loading
from autoft.tasks.base import MINIMIZE, DataSettings, Metric, Preserving, Rows, Task
from autoft.tasks.text import bucketed_batches, model_length_limit

IGNORED = -100  # the label transformers' causal-LM loss skips
# The classes AutoModelForCausalLM builds; a remote-code one ends in ForCausalLM, as most do.
CAUSAL_LM_CLASSES = frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
# Tokens per evaluation batch: the logits of a 49k-word vocabulary take 2048 × 49152 floats.
EVAL_TOKENS = 2048


@dataclass(frozen=True)
class Split:
    """One tokenized split: token ids per example (prompt then response), how many leading tokens
    are prompt (they carry no loss; 0 in continued pretraining), and `labels`, each example's
    perfect prediction: [0, tokens that carry loss] (a model sure of every token loses 0 on
    them; predictions are [summed loss, tokens])."""

    input_ids: list[list[int]]
    prompt_lengths: list[int]
    labels: list[list[int]]

    def __len__(self) -> int:
        return len(self.labels)


def column_texts(values: list, name: str, source: str, where: str, empty_fix: str) -> list[str]:
    """A column's values as strings; an empty or missing one is refused, naming its row."""
    bad = next((i for i, value in enumerate(values)
                if is_missing(value) or not str(value).strip()), None)
    if bad is not None:
        raise UsageError(f"{where}: {row_name(source, bad)} of {source} has an empty '{name}'; "
                         f"{empty_fix}")
    return [str(value) for value in values]


def encode_pair(tokenizer, prompt: str | None, response: str) -> tuple[list[int], list[int]]:
    """(prompt tokens, response tokens): the user turn and the assistant's answer in the chat
    template where the tokenizer has one, else the prompt and a newline, then the response and
    the end-of-sequence token. A text without prompt is all response."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if prompt is None:
        return [], tokenizer(response)["input_ids"] + eos
    if tokenizer.chat_template:
        user = [{"role": "user", "content": prompt}]
        asked = tokenizer.apply_chat_template(user, add_generation_prompt=True, return_dict=False)
        whole = tokenizer.apply_chat_template(
            user + [{"role": "assistant", "content": response}], return_dict=False)
        if whole[: len(asked)] == asked and len(whole) > len(asked):
            return list(asked), list(whole[len(asked):])
        return list(asked), tokenizer(response, add_special_tokens=False)["input_ids"] + eos
    return (tokenizer(prompt + "\n")["input_ids"],
            tokenizer(response, add_special_tokens=False)["input_ids"] + eos)


def saved_causal_lm(model: str) -> str | None:
    """The causal-LM class a local model folder's config.json names (LlamaForCausalLM, or one
    transformers names otherwise: GPT2LMHeadModel), or None (a classifier, an encoder, a hub
    name: detection reads no network)."""
    try:
        config = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return next((name for name in config.get("architectures") or []
                 if name in CAUSAL_LM_CLASSES or name.endswith("ForCausalLM")), None)


def _named_response(settings: DataSettings, names: set[str]) -> bool:
    """The user named the response column and the data has it: prompt/response pairs, whatever
    the prompt column is called (its absence is then said, not a missing label column)."""
    return "response_column" in settings.origins and settings.response_column in names


def fit(prompt: list[int], response: list[int], max_length: int) -> list[int] | None:
    """The prompt's last tokens that fit beside the whole response in `max_length` (the start
    of a long prompt goes), or None when the response alone does not fit."""
    room = max_length - len(response)
    if room < (1 if prompt else 0):
        return None
    return prompt[len(prompt) - room:] if len(prompt) > room else prompt


class CausalLM(Task, Preserving):
    """Prompt/response pairs or plain texts, for a decoder language model."""

    name = "causal-lm"
    metrics = (Metric("loss", MINIMIZE),)
    inputs = "text"
    cache_layout = "per_token"
    split_class = Split
    auto_class = "AutoModelForCausalLM"
    models = ("decoder",)  # so no masked_lm (no mask token) nor classification (no classifier)
    fixed_params = {"head_lr_multiplier": (1.0, "its head is pretrained, not new")}

    @classmethod
    def detect(cls, settings: DataSettings, model: str) -> str | None:
        """A prompt column and a response column in the training data, or the response column
        the user named; or, for a model saved as a causal LM (its config.json's architectures),
        a text column and no label column, or a plain .txt corpus."""
        architecture = saved_causal_lm(model)
        if architecture and Path(settings.train).suffix.lower() == ".txt":
            return (f"the model is a {architecture} and {Path(settings.train).name} is plain "
                    f"text: continued pretraining, a text a line")
        try:
            table = read_table(settings.train, settings.where("train"))
        except UsageError:
            return None
        names = set(table.column_names)
        if {settings.prompt_column, settings.response_column} <= names:
            return (f"the data has a prompt column '{settings.prompt_column}' and a response "
                    f"column '{settings.response_column}'")
        if _named_response(settings, names):
            return f"the response column '{settings.response_column}' was named"
        if settings.text_column in names and settings.label_column not in names and architecture:
            return (f"the model is a {architecture} and the data has a text column "
                    f"'{settings.text_column}' and no label column: continued pretraining")
        return None

    def _read_file(self, source: str, settings: DataSettings, field_name: str, split: str):
        """(prompts or Nones, responses or texts) of one file: prompt/response columns where the
        table has the prompt column, else the text column (continued pretraining)."""
        where = settings.where(field_name)
        if Path(source).suffix.lower() == ".txt":
            texts = [line.strip() for line in file_text(Path(source)).splitlines()
                     if line.strip()]
            if not texts:
                raise UsageError(f"{where}: {source} holds no text; give a file with data in it.")
            return [None] * len(texts), texts
        table = read_table(source, where, split)
        if (settings.prompt_column in table.column_names
                or _named_response(settings, set(table.column_names))):
            prompts = column_texts(column(table, settings.prompt_column,
                                          f"{where} / --prompt-column", source),
                            settings.prompt_column, source, where, "fill or drop that row.")
            responses = column(table, settings.response_column,
                               f"{where} / --response-column", source)
            responses = column_texts(responses, settings.response_column, source, where,
                              "a prompt needs the answer the model should learn to give: fill "
                              "or drop that row.")
            return prompts, responses
        values = column(table, settings.text_column, f"{where} / --text-column (or give "
                        f"--prompt-column and --response-column)", source)
        return [None] * len(values), column_texts(values, settings.text_column, source, where,
                                           "fill or drop that row.")

    def read(self, settings: DataSettings) -> Rows:
        notes = []
        prompts, responses = self._read_file(settings.train, settings, "train", "train")
        if settings.validation:
            val_prompts, val_responses = self._read_file(settings.validation, settings,
                                                         "validation", "validation")
        else:
            if len(responses) < 2:
                raise UsageError(f"{settings.where('train')}: {settings.train} holds one row, "
                                 f"too few to split off validation; add rows or give "
                                 f"--validation.")
            prompts, val_prompts, responses, val_responses = train_test_split(
                prompts, responses, test_size=settings.val_fraction, random_state=settings.seed)
        prompts, responses = cap(prompts, responses, settings.max_train_samples, settings.seed)
        val_prompts, val_responses = cap(val_prompts, val_responses, settings.max_val_samples,
                                         settings.seed)
        if not settings.validation:
            notes.append(f"validation: {len(val_responses)} rows held out of {settings.train} "
                         f"at random ({settings.val_fraction:.0%}), since no --validation was "
                         f"given")
        kind = ("prompt/response pairs, the loss on response tokens only" if prompts[0] is not
                None else "plain texts (continued pretraining), the loss on every token")
        notes.append(f"data: {kind}")
        return Rows(prompts, responses, val_prompts, val_responses, notes)

    def load_model(self, source: str, label_names: list[str], trust_remote_code: bool):
        """The pretrained causal LM with its own head; a tokenizer without a pad token pads with
        its end-of-sequence token (padding carries no loss)."""
        with loading(source):
            tokenizer = load_tokenizer(source, trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(
                source, trust_remote_code=trust_remote_code, use_safetensors=None)
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise UsageError(f"The tokenizer of {source!r} has neither a pad nor an "
                                 f"end-of-sequence token: choose a model whose tokenizer "
                                 f"defines one.")
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer

    def load_processor(self, source: str, trust_remote_code: bool):
        return load_tokenizer(source, trust_remote_code)

    def label_names(self, rows: Rows, settings: DataSettings) -> list[str]:
        return []

    def encode(self, rows: Rows, processor, model_config, settings: DataSettings):
        limit = model_length_limit(processor, model_config)
        train = [encode_pair(processor, p, r) for p, r in zip(rows.train_inputs,
                                                              rows.train_labels, strict=True)]
        validation = [encode_pair(processor, p, r) for p, r in zip(rows.val_inputs,
                                                                   rows.val_labels, strict=True)]
        longest = max(len(p) + len(r) for p, r in train + validation)
        max_length = min(settings.max_length or longest, limit or longest)
        notes = list(rows.notes)
        notes.append(f"metric: loss (per {'response ' if rows.train_inputs[0] is not None else ''}"
                     f"token, lower is better; perplexity is e^loss)")
        cut = []
        splits = []
        for name, pairs in (("train", train), ("validation", validation)):
            ids, prompt_lengths, counted = [], [], []
            for i, (prompt, response) in enumerate(pairs):
                kept = fit(prompt, response, max_length)
                if kept is None:
                    raise UsageError(self.too_long(settings, name, processor, prompt, response,
                                                   max_length, limit))
                if len(kept) < len(prompt):
                    cut.append(i)
                ids.append(kept + response)
                prompt_lengths.append(len(kept))
                counted.append([0, len(response) - (0 if kept else 1)])  # a text's first
                # token has nothing before it to be predicted from
            splits.append(Split(ids, prompt_lengths, counted))
        why = ("as set" if settings.max_length else
               "the model's limit" if longest > max_length else "the longest row")
        notes.append(f"max_length: {max_length} tokens ({why})")
        if cut:
            notes.append(f"truncation: {len(cut)} rows longer than {max_length} tokens lost the "
                         f"start of their prompt; every response is whole")
        return TargetData(train=splits[0], validation=splits[1], label_names=[], metric="loss",
                          max_length=max_length, notes=notes, task=self.name)

    @staticmethod
    def too_long(settings: DataSettings, split: str, tokenizer, prompt: list[int],
                 response: list[int], max_length: int, limit: int) -> str:
        """Why a row cannot be trained on whole: its response (or text) alone does not fit."""
        source = settings.validation if split == "validation" else settings.train
        what = "response" if prompt else "text"
        start = tokenizer.decode(response[:8], skip_special_tokens=True).strip()
        room = (f"the {max_length} the model reads" if max_length == limit else
                f"the {max_length} that {settings.where('max_length')} allows")
        beside = " beside a prompt" if prompt else ""
        fix = "" if max_length == limit else ", or raise --max-length"
        return (f"{settings.where(split if settings.validation else 'train')}: the {what} "
                f"starting \"{start}\" in {source} is {len(response)} tokens, more than {room}"
                f"{beside}; shorten it or split it into several rows{fix}.")

    def collate(self, split: Split, indices: list[int], pad_id: int, device: torch.device) -> dict:
        """Right-padded ids and mask; labels are the ids where they count (the response, or
        every token of a text) and IGNORED elsewhere: the prompt and the padding."""
        width = max(len(split.input_ids[i]) for i in indices)
        ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(indices), width), dtype=torch.long)
        labels = torch.full((len(indices), width), IGNORED, dtype=torch.long)
        for row, i in enumerate(indices):
            tokens = torch.tensor(split.input_ids[i], dtype=torch.long)
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
            start = split.prompt_lengths[i]
            labels[row, start : len(tokens)] = tokens[start:]
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        return {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}

    def sizes(self, split: Split) -> list[int]:
        return [len(ids) for ids in split.input_ids]

    def digest_inputs(self, split: Split, digest) -> None:
        """Lengths and token ids (the states do not depend on where the prompt ends)."""
        digest.update(np.array(self.sizes(split), dtype=np.int64).tobytes())
        digest.update(np.fromiter((t for ids in split.input_ids for t in ids), np.int64).tobytes())

    def train_batches(self, split: Split, batch_size: int, generator: torch.Generator
                      ) -> list[list[int]]:
        return bucketed_batches(self.sizes(split), batch_size, generator)

    def eval_batches(self, split: Split, pad_id: int, device: torch.device
                     ) -> Iterator[tuple[list[int], dict]]:
        """Shortest first, as many rows as fit in EVAL_TOKENS padded tokens (the logits over the
        vocabulary of every position are the large part)."""
        sizes = self.sizes(split)
        order = sorted(range(len(split)), key=lambda i: sizes[i])
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and (end + 1 - start) * sizes[order[end]] <= EVAL_TOKENS:
                end += 1
            indices = order[start:end]
            batch = self.collate(split, indices, pad_id, device)
            batch.pop("labels")
            yield indices, batch
            start = end

    def batch_predictions(self, logits: torch.Tensor, split: Split, indices: list[int]) -> list:
        """Each row's (summed loss, counted tokens): each position's logits predict the next
        token, which counts where the labels do."""
        labels = self.collate(split, indices, 0, logits.device)["labels"][:, 1:]
        losses = functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels,
                                          ignore_index=IGNORED, reduction="none")
        counts = (labels != IGNORED).sum(1)
        return [[float(total), int(count)] for total, count in zip(losses.sum(1), counts,
                                                                   strict=True)]

    def input_texts(self, split: Split, processor, indices: list[int]) -> list[str]:
        """Each example as the model reads it, its chat-template markers included (they read back
        as the same special tokens), for the preservation loss on the task's own texts."""
        return [processor.decode(split.input_ids[i]) for i in indices]

    def score(self, metric: str, labels: list, predictions: list) -> float:
        """The loss per counted token over all rows (a NaN loss gives NaN)."""
        totals = np.asarray(predictions, dtype=float).reshape(-1, 2)
        return float(totals[:, 0].sum() / max(totals[:, 1].sum(), 1))

    def scores_over(self, metric: str, labels: list, predictions: list,
                    draws: np.ndarray) -> np.ndarray:
        totals = np.asarray(predictions, dtype=float).reshape(-1, 2)
        return totals[draws, 0].sum(1) / np.maximum(totals[draws, 1].sum(1), 1)

    def card_lines(self, label_names: list[str]) -> list[str]:
        return ["- Output: text (a causal language model; load it with "
                "`pipeline(\"text-generation\", model=this_folder)`)"]


def cap(prompts: list, responses: list, limit: int | None, seed: int):
    """At most `limit` rows, chosen at random."""
    if limit is None or len(responses) <= limit:
        return prompts, responses
    kept = np.random.default_rng(seed).choice(len(responses), limit, replace=False)
    kept.sort()
    return [prompts[i] for i in kept], [responses[i] for i in kept]
