"""token-classification (named entities): a tag per word, read from a table with a list-of-words
column and a list-of-tags column, or from CoNLL text (a word and its tag a line, a blank line
between sentences); tags in BIO (IOB2). Words are tokenized as split (`is_split_into_words`) and
each word's tag trains its first sub-token only (the others, and special tokens, are ignored by
the loss); scored by entity-level F1 with seqeval, micro by default.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from seqeval.metrics import classification_report, f1_score
from seqeval.metrics.sequence_labeling import get_entities
from sklearn.model_selection import train_test_split

from autoft.data import TargetData, column, file_text, is_missing, read_table, row_name
from autoft.errors import UsageError
from autoft.model import load_tokenizer, loading
from autoft.tasks.base import MAXIMIZE, DataSettings, Metric, Rows
from autoft.tasks.details import DIGITS
from autoft.tasks.text import (
    Split,
    TextTask,
    check_known_tokens,
    model_length_limit,
    pad_inputs,
    to_device,
)

log = logging.getLogger("autoft")

CONLL_SUFFIXES = (".conll", ".txt", ".bio", ".iob")
# The columns read when --text-column / --label-column are left at their defaults.
WORD_COLUMNS = ("tokens", "words")
TAG_COLUMNS = ("tags", "ner_tags", "labels")
OUTSIDE = "O"
IGNORED = -100  # the label the loss skips (transformers' cross-entropy ignore_index)


def is_list(value) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def entity_type(tag: str) -> str | None:
    """'PER' of 'B-PER' or 'I-PER'; None for 'O' or a tag that is not BIO."""
    prefix, _, kind = tag.partition("-")
    return kind if prefix in ("B", "I") and kind else None


def tag_names(types: list[str]) -> list[str]:
    """The head's outputs: O, then B- and I- of each entity type, so output 2k+1 begins and
    2k+2 continues type k (the layout `tag_of` reads back)."""
    return [OUTSIDE] + [f"{prefix}-{kind}" for kind in types for prefix in ("B", "I")]


def tag_of(index: int) -> str:
    """The tag of head output `index`, with its type as the number k (tag_names' layout): what
    seqeval compares, without the names, which score is not given."""
    if index <= 0:
        return OUTSIDE
    return f"{'B' if index % 2 else 'I'}-{(index - 1) // 2}"


def tag_sequences(labels: list, predictions: list) -> tuple[list[list[str]], list[list[str]]]:
    """(gold, predicted) tags of each sentence's words: the positions whose label is not
    IGNORED (each word's first sub-token), in tag_of's form."""
    gold, guessed = [], []
    for truth, predicted in zip(labels, predictions, strict=True):
        kept = [(t, p) for t, p in zip(truth, predicted, strict=False) if t != IGNORED]
        gold.append([tag_of(t) for t, _ in kept])
        guessed.append([tag_of(p) for _, p in kept])
    return gold, guessed


def entity_counts(gold: list[list[str]], guessed: list[list[str]], types: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sentence and entity type: entities found exactly (type, first and last word), gold
    entities and predicted ones, as seqeval reads each sentence's entities (get_entities)."""
    shape = (len(gold), types)
    hits, labelled, predicted = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    for row, (truth, guess) in enumerate(zip(gold, guessed, strict=True)):
        true_set, guess_set = set(get_entities(truth)), set(get_entities(guess))
        for kind, *_ in true_set:
            labelled[row, int(kind)] += 1
        for kind, *_ in guess_set:
            predicted[row, int(kind)] += 1
        for kind, *_ in true_set & guess_set:
            hits[row, int(kind)] += 1
    return hits, labelled, predicted


class TokenClassification(TextTask):
    """A tag per word: named entities (or any BIO spans) in sentences given as words."""

    name = "token-classification"
    metrics = (
        Metric("entity_f1", MAXIMIZE),
        Metric("entity_macro_f1", MAXIMIZE),
    )
    stratified = False
    auto_class = "AutoModelForTokenClassification"

    # reading and checking the data

    @classmethod
    def detect(cls, settings: DataSettings, model: str) -> str | None:
        """CoNLL text, or a table whose words and tags columns hold lists."""
        if Path(settings.train).suffix.lower() in CONLL_SUFFIXES:
            return f"{Path(settings.train).name} is CoNLL text, a word and its tag a line"
        try:
            table = read_table(settings.train, settings.where("train"))
            words, tags = cls.columns(table, settings, "", settings.train)
        except UsageError:
            return None
        first_words, first_tags = table[0][words], table[0][tags]
        if is_list(first_words) and is_list(first_tags):
            return f"the columns '{words}' and '{tags}' hold a list of words and of tags a row"
        return None

    @staticmethod
    def columns(table, settings: DataSettings, where: str, source: str) -> tuple[str, str]:
        """The words and tags columns: --text-column and --label-column where given or present,
        else the usual names (tokens or words; tags, ner_tags or labels)."""
        names = []
        for field, usual in (("text_column", WORD_COLUMNS), ("label_column", TAG_COLUMNS)):
            chosen = getattr(settings, field)
            if chosen not in table.column_names and field not in settings.origins:
                chosen = next((name for name in usual if name in table.column_names), chosen)
            column(table, chosen, f"{where} / --{field.replace('_', '-')}", source)
            names.append(chosen)
        return names[0], names[1]

    def _read_split(self, source: str, settings: DataSettings, field_name: str, split: str):
        where = settings.where(field_name)
        if Path(source).suffix.lower() in CONLL_SUFFIXES:
            return read_conll(source, where)
        table = read_table(source, where, split)
        words_column, tags_column = self.columns(table, settings, where, source)
        tags = table[tags_column]
        feature = getattr(table.features[tags_column], "feature", None)
        if hasattr(feature, "names"):  # a datasets ClassLabel sequence: tags stored as indices
            tags = [[feature.names[t] for t in row] for row in tags]
        sentences = []
        for i, (words, row_tags) in enumerate(zip(table[words_column], tags, strict=True)):
            place = f"{where}: {row_name(source, i)} of {source}"
            if not is_list(words) or not is_list(row_tags):
                raise UsageError(
                    f"{place} holds no list in column '{words_column}' or '{tags_column}'; "
                    f"give each row a list of words and a list of their tags."
                )
            if len(words) != len(row_tags):
                raise UsageError(
                    f"{place} has {len(words)} words but {len(row_tags)} tags; give one tag "
                    f"per word."
                )
            sentences.append((place, [str(w) for w in words], [str(t) for t in row_tags]))
        return checked_sentences(sentences)

    def parse_labels(self, values: list, settings: DataSettings, where: str, source: str):
        return values  # read and checked with the words (checked_sentences)

    def check_train_labels(self, labels: list, settings: DataSettings) -> None:
        if not any(entity_type(tag) for row in labels for tag in row):
            raise UsageError(
                f"{settings.where('train')}: {settings.train} tags no entity (every tag is O); "
                f"tag entities as B-TYPE and I-TYPE."
            )
        warn_inconsistent(labels, settings.train)

    def check_validation_labels(self, labels: list, train_labels: list,
                                settings: DataSettings) -> None:
        known = types_of(train_labels)
        unseen = sorted(types_of(labels) - known)
        if unseen:
            raise UsageError(
                f"{settings.where('validation')}: entity type '{unseen[0]}' never occurs in the "
                f"training data; retag it or add training sentences with it."
            )
        warn_inconsistent(labels, settings.validation)

    def split_off_validation(self, inputs: list, labels: list, settings: DataSettings):
        if len(labels) < 2:
            raise UsageError(
                f"{settings.where('train')}: {settings.train} holds a single sentence, too few "
                f"to split off validation; add sentences or give --validation."
            )
        parts = train_test_split(inputs, labels, test_size=settings.val_fraction,
                                 random_state=settings.seed)
        return (*parts, "")

    def label_names(self, rows: Rows, settings: DataSettings) -> list[str]:
        """Every type tagged in training or validation (a split-off validation may hold a rare
        type training lacks: the head has outputs for it, and scoring counts its misses)."""
        return tag_names(sorted(types_of(rows.train_labels + rows.val_labels)))

    def encode_labels(self, labels: list, label_names: list[str]) -> list[list[int]]:
        """Each word's tag index (`align` puts it on the word's first sub-token)."""
        index = {name: i for i, name in enumerate(label_names)}
        return [[index[tag] for tag in tags] for tags in labels]

    # the model

    def load_model(self, source: str, label_names: list[str], trust_remote_code: bool):
        model, _ = super().load_model(source, label_names, trust_remote_code)
        return model, self.load_processor(source, trust_remote_code)

    def load_processor(self, source: str, trust_remote_code: bool):
        """A fast tokenizer (it says which word each token came from); a byte-level BPE one
        (RoBERTa, GPT-2) with a space before each word, as it reads words within a text."""
        with loading(source):
            tokenizer = load_tokenizer(source, trust_remote_code)
            if getattr(tokenizer, "add_prefix_space", None) is False:
                tokenizer = load_tokenizer(source, trust_remote_code, add_prefix_space=True)
        if not tokenizer.is_fast:
            raise UsageError(
                f"The tokenizer of model {source} is a slow (Python) one, which cannot say which "
                f"word each token came from; give --model a folder with a tokenizer.json."
            )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    # encoding and batches

    def encode(self, rows: Rows, processor, model_config, settings: DataSettings) -> TargetData:
        """Tokenized as split words, each word's tag on its first sub-token; cut only at the
        model's limit (or --max-length), since a word cut off is neither trained nor scored."""
        label_names = self.label_names(rows, settings)
        metric, metric_note = self.choose_metric(settings, rows.train_labels)
        limit = model_length_limit(processor, model_config)
        max_length = min(settings.max_length or limit, limit)
        train = align(processor, rows.train_inputs,
                      self.encode_labels(rows.train_labels, label_names), max_length)
        check_known_tokens(processor, train.input_ids)
        notes = list(rows.notes)
        if metric_note:
            notes.append(metric_note)
        notes.append(f"max_length: {max_length} tokens ("
                     f"{'--max-length' if settings.max_length else 'the model limit'}); each "
                     f"word's tag trains its first sub-token, the others are ignored")
        return TargetData(
            train=train,
            validation=align(processor, rows.val_inputs,
                             self.encode_labels(rows.val_labels, label_names), max_length),
            label_names=label_names,
            metric=metric,
            max_length=max_length,
            notes=notes,
            task=self.name,
        )

    def collate(self, split: Split, indices: list[int], pad_id: int, device: torch.device) -> dict:
        """The inputs padded, and each token's tag index padded with IGNORED."""
        batch = pad_inputs(split, indices, pad_id)
        labels = torch.full(batch["input_ids"].shape, IGNORED, dtype=torch.long)
        for row, i in enumerate(indices):
            labels[row, : len(split.labels[i])] = torch.tensor(split.labels[i], dtype=torch.long)
        batch["labels"] = labels
        return to_device(batch, device)

    # scoring

    def predictions(self, logits: torch.Tensor) -> list[list[int]]:
        """Each token's most likely tag index (padding too: scoring keeps the labelled ones)."""
        return logits.argmax(-1).tolist()

    def score(self, metric: str, labels: list, predictions: list) -> float:
        gold, guessed = tag_sequences(labels, predictions)
        average = "macro" if metric == "entity_macro_f1" else "micro"
        return float(f1_score(gold, guessed, average=average, zero_division=0))

    def scores_over(self, metric: str, labels: list, predictions: list,
                    draws: np.ndarray) -> np.ndarray:
        """Every draw at once from each sentence's entity counts, the values `score` gives
        (tested): seqeval per draw re-reads every sentence's entities 200 times an evaluation.
        F1 = 2 found / (gold + predicted), per type for macro over the types present in the
        draw's gold or predictions, as seqeval with zero_division=0."""
        gold, guessed = tag_sequences(labels, predictions)
        types = 1 + max((int(tag[2:]) for row in gold + guessed for tag in row if tag != OUTSIDE),
                        default=0)
        hits, labelled, predicted = entity_counts(gold, guessed, types)
        weights = np.stack([np.bincount(draw, minlength=len(gold)) for draw in draws])
        hits, seen = weights @ hits, weights @ (labelled + predicted)
        if metric != "entity_macro_f1":
            return 2 * hits.sum(1) / np.maximum(seen.sum(1), 1)
        present = seen > 0
        f1 = np.where(present, 2 * hits / np.maximum(seen, 1), 0.0)
        return np.where(present.any(1), f1.sum(1) / np.maximum(present.sum(1), 1), 0.0)

    def score_details(self, labels: list, predictions: list, label_names: list[str]) -> dict:
        """Entity-level precision and recall (micro), and each entity type's, from seqeval."""
        gold, guessed = tag_sequences(labels, predictions)
        report = classification_report(gold, guessed, output_dict=True, zero_division=0)
        types = [name[2:] for name in label_names[1::2]]
        overall = report["micro avg"]
        return {
            "average": "micro",
            "precision": round(float(overall["precision"]), DIGITS),
            "recall": round(float(overall["recall"]), DIGITS),
            "per_label": {
                types[int(kind)]: {"precision": round(float(row["precision"]), DIGITS),
                                   "recall": round(float(row["recall"]), DIGITS),
                                   "f1": round(float(row["f1-score"]), DIGITS),
                                   "support": int(row["support"])}
                for kind, row in report.items() if kind.isdigit()
            },
        }

    def card_lines(self, label_names: list[str]) -> list[str]:
        types = [name[2:] for name in label_names[1::2]]
        return [f"- Tags (one per word, BIO): {', '.join(label_names)}; entity types: "
                f"{', '.join(types)}"]


def types_of(labels: list) -> set[str]:
    return {kind for row in labels for tag in row if (kind := entity_type(tag))}


def read_conll(source: str, where: str) -> tuple[list, list]:
    """Sentences of CoNLL text: a line per word, the word first and its tag last (columns split
    by whitespace; CoNLL-2003's middle columns are skipped), a blank line after each sentence;
    -DOCSTART- lines are skipped."""
    sentences, words, tags, start = [], [], [], 1
    lines = file_text(Path(source)).splitlines()
    for number, line in enumerate([*lines, ""], 1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if words:
                sentences.append((f"{where}: the sentence at line {start} of {source}", words,
                                  tags))
            words, tags, start = [], [], number + 1
            continue
        if len(fields) < 2:
            raise UsageError(
                f"{where}: line {number} of {source} holds '{line.strip()}' without a tag; "
                f"write the word and its tag on each line, separated by a tab or spaces."
            )
        words.append(fields[0])
        tags.append(fields[-1])
    if not sentences:
        raise UsageError(f"{where}: {source} holds no tagged words; give a CoNLL file.")
    return checked_sentences(sentences)


def checked_sentences(sentences: list[tuple[str, list[str], list[str]]]) -> tuple[list, list]:
    """(words, tags) of each sentence, each named by `place` when refused: an empty sentence,
    an empty word, a tag that is not O, B-TYPE or I-TYPE."""
    inputs, labels = [], []
    for place, words, tags in sentences:
        if not words:
            raise UsageError(f"{place} is an empty sentence; give it words and tags or drop it.")
        blank = next((i for i, word in enumerate(words) if is_missing(word) or not word.strip()),
                     None)
        if blank is not None:
            raise UsageError(
                f"{place} has an empty word at position {blank + 1}; drop it with its tag."
            )
        bad = next((tag for tag in tags if tag != OUTSIDE and not entity_type(tag)), None)
        if bad is not None:
            raise UsageError(
                f"{place} has the tag '{bad}'; tags must be O, B-TYPE or I-TYPE (BIO, as in "
                f"B-PER I-PER): convert the file's tags."
            )
        inputs.append(words)
        labels.append(tags)
    return inputs, labels


def warn_inconsistent(labels: list, source: str | None) -> None:
    """An I- tag that follows O or another type (IOB1 style, or a slip) is counted, not refused:
    seqeval and the model read it as the start of an entity."""
    broken = Counter()
    for row in labels:
        before = OUTSIDE
        for tag in row:
            kind = entity_type(tag)
            if tag.startswith("I-") and entity_type(before) != kind:
                broken[kind] += 1
            before = tag
    if broken:
        log.warning("%s: %d I- tags follow O or another type (%s), which BIO forbids; each is "
                    "read as the start of an entity.", source, sum(broken.values()),
                    ", ".join(f"{n} I-{kind}" for kind, n in broken.most_common()))


def align(tokenizer, sentences: list[list[str]], tags: list[list[int]], max_length: int) -> Split:
    """Tokenized sentences with each token's label: the tag index of its word (`tags`, as
    encode_labels gives them) on a word's first sub-token, IGNORED on the others and on special
    tokens. Words the tokenizer drops (no token)
    or cuts off (past max_length) are counted in a warning: neither trained nor scored."""
    encoded = tokenizer(sentences, is_split_into_words=True, truncation=True,
                        max_length=max_length)
    labels, lost = [], 0
    for i, sentence_tags in enumerate(tags):
        row, previous = [], None
        for word in encoded.word_ids(i):
            row.append(IGNORED if word is None or word == previous else sentence_tags[word])
            previous = word
        labels.append(row)
        lost += len(sentence_tags) - len({w for w in encoded.word_ids(i) if w is not None})
    if lost:
        words = sum(len(row) for row in tags)
        log.warning("%d of %d words have no token within max_length %d (the tokenizer drops them "
                    "or the sentence is cut); they are neither trained nor scored.", lost, words,
                    max_length)
    return Split(encoded["input_ids"], labels, encoded.get("token_type_ids"))

