"""Reading a decoder for the generative base checks (`causal_lm`, `qa`): the next-token
distribution of a tuned model through its own LM head when it is a causal LM, else through the
base model's own LM head on the tuned decoder (a classifier trained on GPT-2 or Llama), each
text's summed loss on the tokens that count, and the top-k KL the preservation loss compares.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from autoft.errors import UsageError
from autoft.forgetting.base import (
    BATCH_SIZE,
    BaseTask,
    Replay,
    no_replay,
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
from autoft.model import evaluating, loading, pad_with_eos
from autoft.replay import PrefixMemo
from autoft.tasks.causal_lm import encode_pair

IGNORED = -100  # a label the loss skips: padding, and what a check does not score
LOGIT_BUDGET = 2**27  # floats of logits one batch may hold (texts × tokens × vocabulary): 512 MiB


def load_causal_lm(model_source: str, kind: str, trust_remote_code: bool):
    """The original model with its saved LM head; an encoder (BERT: every token sees every
    other, so it has no next-token distribution, though transformers can load it as a decoder)
    is refused in one sentence."""
    with loading(model_source):
        config = AutoConfig.from_pretrained(model_source, trust_remote_code=trust_remote_code)
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not config.is_decoder:
        raise UsageError(
            f"{model_source} is an encoder ({config.model_type}), which reads every token at "
            f"once and has no next-token distribution; use base-task kind 'drift' or "
            f"'similarity' instead of '{kind}'."
        )
    return load_with_head(AutoModelForCausalLM, model_source, kind, trust_remote_code)


def own_head(model) -> bool:
    """Whether the tuned model is itself a causal LM (its LM head is read, trained or not)."""
    return model.can_generate() and model.get_output_embeddings() is not None


def batch_texts(max_length: int, vocabulary: int) -> int:
    """Texts per batch whose logits fit LOGIT_BUDGET (a 150k vocabulary takes a few)."""
    return max(1, min(BATCH_SIZE, LOGIT_BUDGET // (max_length * vocabulary)))


class NextTokenTask(BaseTask):
    """A check that reads a decoder's next-token distribution: per unit (a text, a question),
    the summed cross-entropy of the tokens that count and how many there are. The preservation
    loss compares the distribution at every real token, KL on the untouched model's likeliest.
    Its batches are (inputs, labels), right-padded (positions count from 0 in every row)."""

    inputs = ("text",)
    models = ("decoder",)
    batches_: dict[str, list[tuple]]

    def _load(self, model_source: str, kind: str, tokenizer, max_length: int,
              trust_remote_code: bool) -> None:
        self.original_ = load_causal_lm(model_source, kind, trust_remote_code)
        pad_with_eos(tokenizer, model_source)
        self.size_ = batch_texts(max_length, self.original_.config.get_text_config().vocab_size)
        self.memo_ = PrefixMemo()

    def _reader(self, model, device: str):
        """The model whose logits the check reads: the tuned causal LM, or the original one with
        the tuned decoder copied in."""
        if own_head(model):
            return model
        original = self.original_.to(device)
        copy_encoder(model, original)
        return original

    def _losses(self, model, device: str, part: str, frozen: int = 0) -> torch.Tensor:
        """Per unit of `part`: the summed next-token cross-entropy where labels count, and how
        many tokens count; the frozen bottom blocks replayed (PrefixMemo)."""
        reader = self._reader(model, device)
        rows = []
        with evaluating(reader):
            for batch, labels in self.batches_[part]:
                logits = self.memo_.run(reader, batch.to(device), frozen).logits.float()
                labels = labels[:, 1:].to(device)
                losses = torch.nn.functional.cross_entropy(
                    logits[:, :-1].transpose(1, 2), labels, reduction="none", ignore_index=IGNORED
                ).sum(1)
                rows.append(torch.stack([losses, (labels != IGNORED).sum(1).float()], 1).cpu())
        return torch.cat(rows).double()

    def reads_trained(self, model) -> bool:
        batch, _labels = self.batches_["quick"][0]
        if not own_head(model):
            return head_reads_trained(model, self.original_, batch)
        probe = {key: value[:1].to(model.device) for key, value in batch.items()}
        with torch.enable_grad(), evaluating(model):
            return model(**probe).logits.requires_grad

    def preservation_batches(self, tokenizer, texts: list[str], max_length: int, size: int) -> list:
        """Right-padded (a processor loaded alone, GPT-2's, pads with its end-of-sequence token)."""
        pad_with_eos(tokenizer, tokenizer.name_or_path)
        return tokenize_texts(tokenizer, texts, max_length, size, padding_side="right",
                              return_token_type_ids=False)

    def reads(self, model, batch: dict, replay: Replay = no_replay) -> torch.Tensor:
        """The next-token log-probabilities at every real token, with gradients."""
        if own_head(model):
            with replay(model):
                log_probs = torch.log_softmax(model(**batch).logits.float(), -1)
        else:
            log_probs = head_log_probs(model, self.original_, batch, replay)
        return log_probs[batch["attention_mask"].bool()]

    @torch.no_grad()
    def target(self, model, batch: dict) -> torch.Tensor:
        """The untouched model's likeliest next tokens at each real token (`top_log_probs`)."""
        return top_log_probs(self.reads(model, batch))

    def distance(self, tuned: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """KL(untouched ‖ tuned) on the untouched model's likeliest next tokens, mean over
        tokens."""
        return top_kl(tuned, target)


def answer_batches(tokenizer, questions: list[str], answers: list[str], max_length: int,
                   size: int) -> list[tuple]:
    """Batches of question and answer, right-padded, whose labels count the answer's tokens only;
    past `max_length` the question loses its start, the answer (kept whole where it fits) never
    its beginning."""
    rows = []
    for question, answer in zip(questions, answers, strict=True):
        asked, said = encode_pair(tokenizer, question, answer)  # as the causal-lm task asks
        said = said[: max_length - 1]
        asked = asked[-(max_length - len(said)):]
        rows.append((asked + said, [IGNORED] * len(asked) + said))
    batches = []
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        batch = tokenizer.pad({"input_ids": [ids for ids, _ in chunk]}, padding_side="right",
                              return_tensors="pt")
        labels = torch.full(batch["input_ids"].shape, IGNORED)
        for row, (_ids, counted) in enumerate(chunk):
            labels[row, : len(counted)] = torch.tensor(counted)
        batches.append((batch, labels))
    return batches


def every_token(batches: list) -> list[tuple]:
    """Batches of plain texts with their labels: every real token counts."""
    return [(batch, batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORED))
            for batch in batches]
