"""Shared test fixtures: a tiny real BERT with its tokenizer saved to disk, a small CSV task that
such a model can learn in seconds (the label is which sentiment word a text contains), and the
builders behind them, handed to tests as fixtures (no test file imports another's helpers).
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
import pytest
import torch
import transformers
from PIL import Image
from sklearn.datasets import load_digits
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    PreTrainedTokenizerFast,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
)

from autoft.config import BaseTaskConfig, build_config
from autoft.data import TargetData
from autoft.forgetting import preservation_texts
from autoft.model import evaluating, freeze, load_model
from autoft.objective import Objective
from autoft.prepare import prepare_study
from autoft.preserve import Preservation
from autoft.schedule import queue_next_config
from autoft.storage import load_study, open_study
from autoft.study_facts import record_study_facts
from autoft.tasks.text import Split
from autoft.train import TrialParams, train_trial

# Tiny models train faster on one thread than on two (a preservation test: 16.7 s against 25.1 s
# here), and the autoft processes the tests start inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE = ["good", "great", "fine", "lovely"]
NEGATIVE = ["bad", "awful", "poor", "nasty"]
FILLER = ["the", "a", "film", "day", "was", "is", "very", "quite", "food", "show", "it", "so"]
WORDS = POSITIVE + NEGATIVE + FILLER


def build_tokenizer(words: list[str] = WORDS) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `words` (the fixture vocabulary unless given), wrapped like any
    HF tokenizer."""
    vocab = {token: i for i, token in enumerate(SPECIAL + list(words))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=32)


HEADS = {"classification": BertForSequenceClassification, "masked_lm": BertForMaskedLM,
         None: BertModel}


def save_tiny_bert(folder: Path, layers: int = 2, seed: int = 0,
                   head: str | None = "classification", words: list[str] = WORDS) -> Path:
    """A random 2-layer BERT (hidden 32) saved with its tokenizer over `words`, as a user's model
    folder, with a sequence-classification head, a masked-LM head (`head="masked_lm"`, for the
    masked_lm check) or none (`head=None`: the encoder alone, as all-MiniLM-L6-v2 is, so every
    trial's head is new)."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(words)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=48, max_position_embeddings=32,
                        pad_token_id=tokenizer.pad_token_id)
    HEADS[head](config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def sentiment_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Texts of filler words with one sentiment word; the label says which kind it was."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label == "pos" else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def tagged_rows(n: int, seed: int = 0) -> list[dict]:
    """The sentiment texts with any number of tags each: the sentiment, 'food' where the text
    says food, 'screen' where it says film or show (so some rows have one tag, some three)."""
    rows = []
    for row in sentiment_rows(n, seed):
        words = row["text"].split()
        tags = [row["label"]] + ["food"] * ("food" in words)
        tags += ["screen"] * bool({"film", "show"} & set(words))
        rows.append({"text": row["text"], "tags": tags})
    return rows


def ner_rows(n: int, seed: int = 0) -> list[dict]:
    """The sentiment texts as words with BIO tags: the sentiment word is a POS or NEG entity of
    one word, and every other sentence ends in 'the film', a WORK entity of two."""
    rows = []
    for i, row in enumerate(sentiment_rows(n, seed)):
        tokens = [word for word in row["text"].split() if word not in ("the", "film")]
        tags = [("B-" + row["label"].upper()) if word in POSITIVE + NEGATIVE else "O"
                for word in tokens]
        if i % 4 < 2:
            tokens, tags = tokens + ["the", "film"], tags + ["B-WORK", "I-WORK"]
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@dataclass(frozen=True)
class Words:
    """The tiny tokenizer's vocabulary: special tokens, the sentiment words and the filler."""

    special: tuple[str, ...] = tuple(SPECIAL)
    positive: tuple[str, ...] = tuple(POSITIVE)
    negative: tuple[str, ...] = tuple(NEGATIVE)
    all: tuple[str, ...] = tuple(WORDS)


@pytest.fixture(scope="session")
def words() -> Words:
    return Words()


@pytest.fixture(name="build_tokenizer", scope="session")
def build_tokenizer_fixture():
    """build_tokenizer(): a fresh tiny tokenizer (tests may change it)."""
    return build_tokenizer


@pytest.fixture(name="save_tiny_bert", scope="session")
def save_tiny_bert_fixture():
    """save_tiny_bert(folder, layers=2, seed=0, head="classification", words=WORDS): a tiny BERT
    saved as a model folder."""
    return save_tiny_bert


@pytest.fixture(name="sentiment_rows", scope="session")
def sentiment_rows_fixture():
    """sentiment_rows(n, seed=0): rows of the sentiment task."""
    return sentiment_rows


@pytest.fixture(name="write_csv", scope="session")
def write_csv_fixture():
    """write_csv(path, rows): the rows as a CSV file."""
    return write_csv


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(name="write_lines", scope="session")
def write_lines_fixture():
    """write_lines(path, lines): the lines as a text file, one a line."""
    return write_lines


def texts(n: int, seed: int) -> list[str]:
    """The sentiment task's texts without their labels."""
    return [row["text"] for row in sentiment_rows(n, seed=seed)]


@pytest.fixture(name="texts", scope="session")
def texts_fixture():
    """texts(n, seed): the sentiment task's texts without their labels."""
    return texts


def base_config(kind: str, folder: Path) -> BaseTaskConfig:
    """A base task of `kind` on texts of the tiny vocabulary (rated pairs, labels 0 and 1 as the
    tiny BERT's own head's ids, questions with answers, or lines), with a preservation file,
    written into `folder`."""
    base = texts(40, seed=3)
    preserve = write_lines(folder / "preserve.txt", texts(64, seed=5))
    if kind == "similarity":
        rows = [{"text": a, "pair": b, "score": str(i % 5)}
                for i, (a, b) in enumerate(zip(base, base[1:], strict=False))]
        data = write_csv(folder / "pairs.csv", rows)
        return BaseTaskConfig(kind, str(data), text_pair_column="pair",
                              preserve_data=str(preserve))
    if kind == "classification":
        data = write_csv(folder / "labelled.csv",
                         [{"text": t, "label": str(i % 2)} for i, t in enumerate(base)])
        return BaseTaskConfig(kind, str(data), preserve_data=str(preserve))
    if kind == "qa":  # questions of the chat tokenizer's words, columns found as prompt/response
        data = write_jsonl(folder / "questions.jsonl", opposite_rows(40, seed=3))
        return BaseTaskConfig(kind, str(data), preserve_data=str(preserve))
    return BaseTaskConfig(kind, str(write_lines(folder / "base.txt", base)),
                          preserve_data=str(preserve))


@pytest.fixture(name="base_config", scope="session")
def base_config_fixture():
    """base_config(kind, folder): a base task of each kind on texts of the tiny vocabulary."""
    return base_config


def preservation_distances(check, config: BaseTaskConfig, folder: str, target, tokenizer,
                           tmp_path: Path) -> tuple[float, float]:
    """How far what base check `check` reads moves on held-out texts when the model of `folder`
    trains hard on the prepared `target` (data, pad id): lr 1e-2, two blocks, two epochs;
    without the preservation loss, and with weight 3. Distances are `check.distance`'s, averaged
    over batches."""
    data, pad_id = target
    hard = TrialParams(learning_rate=1e-2, head_lr_multiplier=1.0, batch_size=16,
                       trainable_layers=2, epochs=2, weight_decay=0.0, warmup_ratio=0.0)
    untouched, _ = load_model(folder, data.label_names)
    held_out = check.preservation_batches(tokenizer, texts(16, seed=9), 32, 8)
    with evaluating(untouched):
        expected = [check.target(untouched, batch) for batch in held_out]

    def distance_after_training(weight: float) -> float:
        model, _ = load_model(folder, data.label_names)
        freeze(model, hard.trainable_layers)
        terms = []
        if weight:
            preservation = Preservation(check, preservation_texts(config, check.split_),
                                        tokenizer, tmp_path / "preserve", folder)
            terms = [preservation.loss(model, weight, 0, torch.device("cpu"))[0]]
        train_trial(model, data, replace(hard, preserve_weight=weight), torch.device("cpu"), pad_id,
                    seed=0, on_evaluation=lambda evaluation: None, loss_terms=terms)
        with torch.no_grad(), evaluating(model):
            gaps = [float(check.distance(check.reads(model, batch), goal))
                    for batch, goal in zip(held_out, expected, strict=True)]
        return sum(gaps) / len(gaps)

    return distance_after_training(0.0), distance_after_training(3.0)


@pytest.fixture(name="preservation_distances", scope="session")
def preservation_distances_fixture():
    """preservation_distances(check, config, folder, target, tokenizer, tmp_path): what `check`
    reads moved after hard training, (without preservation, with weight 3)."""
    return preservation_distances


@pytest.fixture(name="build_chat_tokenizer", scope="session")
def build_chat_tokenizer_fixture():
    """build_chat_tokenizer(chat=True): the tiny decoders' tokenizer, built in memory (a Qwen2
    folder's own tokenizer class reads the word-level vocabulary as byte-level BPE)."""
    return build_chat_tokenizer


@pytest.fixture(scope="session")
def tiny_decoders(tmp_path_factory) -> dict[str, Path]:
    """The tiny GPT-2 (tied head), Llama (tied) and Qwen2 (an lm_head of its own), by family."""
    return {family: save_tiny_causal_lm(tmp_path_factory.mktemp(f"tiny-{family}"), family)
            for family in ("gpt2", "llama", "qwen2")}


# A random-token task for the training loop and the cache: ids of the tiny vocabulary's range,
# padded with PAD; tests get its builders as the fixtures below.
PAD = 0


def make_data(n_train: int = 48, n_val: int = 20, seed: int = 0) -> TargetData:
    """Random token ids of lengths 3 to 14 (so batches pad), labels from the second token."""
    rng = random.Random(seed)

    def split(n: int) -> Split:
        ids = [[2] + [rng.randrange(5, 25) for _ in range(rng.randrange(2, 14))] for _ in range(n)]
        return Split(ids, [int(x[1] >= 15) for x in ids])

    return TargetData(split(n_train), split(n_val), ["neg", "pos"], "accuracy", 16, [])


def fresh_model(model_dir: Path, trainable_layers: int):
    torch.manual_seed(1)  # the same new head every time
    model, _ = load_model(str(model_dir), ["neg", "pos"])
    freeze(model, trainable_layers)
    return model


PARAMS = TrialParams(
    learning_rate=1e-3,
    head_lr_multiplier=5.0,
    batch_size=8,
    trainable_layers=1,
    epochs=2,
    weight_decay=0.01,
    warmup_ratio=0.1,
)


@pytest.fixture(scope="session")
def pad_id() -> int:
    """The random-token task's padding id."""
    return PAD


@pytest.fixture(name="make_data", scope="session")
def make_data_fixture():
    """make_data(n_train=48, n_val=20, seed=0): the random-token task."""
    return make_data


@pytest.fixture(name="fresh_model", scope="session")
def fresh_model_fixture():
    """fresh_model(model_dir, trainable_layers): the folder's model with the same new head each
    time, frozen below the top trainable_layers."""
    return fresh_model


@pytest.fixture(scope="session")
def trial_params() -> TrialParams:
    """A short trial's params (top 1 layer, 2 epochs, batch 8) to vary with dataclasses.replace."""
    return PARAMS


# Tiny random models of many architectures (test_model, test_adapters), with the name patterns
# that say where each parameter belongs, written independently of autoft's structural search.
VOCAB = 50
TEXT = {"vocab_size": VOCAB, "num_labels": 3, "max_position_embeddings": 32}
IMAGE = {"image_size": 8, "num_labels": 3}
BERTLIKE = {
    **TEXT,
    "hidden_size": 32,
    "num_attention_heads": 2,
    "intermediate_size": 37,
}


@dataclass(frozen=True)
class Arch:
    """A tiny model to build, and how its parameter names say where each one belongs."""

    model_class: str
    config_class: str
    config: dict
    depth: int
    block: str  # regex whose group 1 is the block index (see stage_depths)
    head: tuple[str, ...]  # name prefixes of the head
    stage_depths: tuple[int, ...] = ()  # a staged model: groups stage, layer (none: the
    # stage's own parts, which feed its first block) and next (parts feeding the next stage)

    def build(self) -> transformers.PreTrainedModel:
        """A fresh random model, the same for every call."""
        torch.manual_seed(0)
        config = getattr(transformers, self.config_class)(**self.config)
        return getattr(transformers, self.model_class)(config)

    def block_index(self, name: str) -> int:
        """Which block a parameter name belongs to by the pattern; -1 for none."""
        match = re.match(self.block, name)
        if not match:
            return -1
        if not self.stage_depths:
            return int(match[1])
        found = match.groupdict()
        stage = int(found["stage"]) if found["stage"] is not None else int(found["next"]) + 1
        return sum(self.stage_depths[:stage]) + int(found.get("layer") or 0)

    @staticmethod
    def random_batch(model: transformers.PreTrainedModel) -> dict[str, torch.Tensor]:
        """Two random examples with labels, in the model's kind of input."""
        generator = torch.Generator().manual_seed(1)
        labels = torch.randint(0, 3, (2,), generator=generator)
        if model.main_input_name == "pixel_values":
            return {"pixel_values": torch.randn(2, 3, 8, 8, generator=generator),
                    "labels": labels}
        ids = torch.randint(3, VOCAB - 1, (2, 6), generator=generator)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


ARCHS = {
    "bert": Arch(
        "BertForSequenceClassification",
        "BertConfig",
        {**BERTLIKE, "num_hidden_layers": 3},
        3,
        r"bert\.encoder\.layer\.(\d+)\.",
        ("bert.pooler.", "classifier."),
    ),
    "roberta": Arch(
        "RobertaForSequenceClassification",
        "RobertaConfig",
        {**BERTLIKE, "num_hidden_layers": 2, "pad_token_id": 1},
        2,
        r"roberta\.encoder\.layer\.(\d+)\.",
        ("classifier.",),
    ),
    "distilbert": Arch(
        "DistilBertForSequenceClassification",
        "DistilBertConfig",
        {**TEXT, "dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 37},
        2,
        r"distilbert\.transformer\.layer\.(\d+)\.",
        ("pre_classifier.", "classifier."),
    ),
    "albert": Arch(
        "AlbertForSequenceClassification",
        "AlbertConfig",
        {**BERTLIKE, "embedding_size": 16, "num_hidden_layers": 3},
        1,
        r"albert\.encoder\.albert_layer_groups\.(\d+)\.",
        ("albert.pooler.", "classifier."),
    ),
    "deberta-v2": Arch(  # v3-style: relative attention, and a conv that runs after block 0
        "DebertaV2ForSequenceClassification",
        "DebertaV2Config",
        {
            **BERTLIKE,
            "num_hidden_layers": 2,
            "relative_attention": True,
            "pos_att_type": ["p2c", "c2p"],
            "position_biased_input": False,
            "position_buckets": 8,
            "norm_rel_ebd": "layer_norm",
            "conv_kernel_size": 3,
        },
        2,
        r"deberta\.encoder\.layer\.(\d+)\.",
        ("pooler.", "classifier."),
    ),
    "electra": Arch(
        "ElectraForSequenceClassification",
        "ElectraConfig",
        {**BERTLIKE, "embedding_size": 16, "num_hidden_layers": 2},
        2,
        r"electra\.encoder\.layer\.(\d+)\.",
        ("classifier.",),
    ),
    "gpt2": Arch(
        "GPT2ForSequenceClassification",
        "GPT2Config",
        {
            **TEXT,
            "n_embd": 32,
            "n_layer": 2,
            "n_head": 2,
            "pad_token_id": 0,
            "bos_token_id": VOCAB - 1,
            "eos_token_id": VOCAB - 1,
        },
        2,
        r"transformer\.h\.(\d+)\.",
        ("transformer.ln_f.", "score."),
    ),
    "llama": Arch(
        "LlamaForSequenceClassification",
        "LlamaConfig",
        {
            **BERTLIKE,
            "num_hidden_layers": 2,
            "num_key_value_heads": 1,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        2,
        r"model\.layers\.(\d+)\.",
        ("model.norm.", "score."),
    ),
    "vit": Arch(
        "ViTForImageClassification",
        "ViTConfig",
        {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 37,
            "image_size": 8,
            "patch_size": 4,
            "num_labels": 3,
        },
        2,
        r"vit\.layers\.(\d+)\.",
        ("vit.layernorm.", "classifier."),
    ),
    "resnet": Arch(
        "ResNetForImageClassification",
        "ResNetConfig",
        {**IMAGE, "embedding_size": 8, "hidden_sizes": [8, 16], "depths": [2, 1],
         "layer_type": "basic"},
        3,
        r"resnet\.encoder\.stages\.(?P<stage>\d+)\.layers\.(?P<layer>\d+)\.",
        ("classifier.",),
        (2, 1),
    ),
    "convnext": Arch(
        "ConvNextForImageClassification",
        "ConvNextConfig",
        {**IMAGE, "num_stages": 2, "hidden_sizes": [8, 16], "depths": [2, 1], "patch_size": 2},
        3,
        r"convnext\.encoder\.stages\.(?P<stage>\d+)\.(?:layers\.(?P<layer>\d+)|downsampling)",
        ("convnext.layernorm.", "classifier."),
        (2, 1),
    ),
    "swin": Arch(
        "SwinForImageClassification",
        "SwinConfig",
        {**IMAGE, "patch_size": 2, "embed_dim": 8, "depths": [2, 1], "num_heads": [1, 2],
         "window_size": 2},
        3,
        r"swin\.encoder\.layers\.(?:(?P<stage>\d+)\.blocks\.(?P<layer>\d+)|(?P<next>\d+)\.down)",
        ("swin.layernorm.", "classifier."),
        (2, 1),
    ),
}


@pytest.fixture(params=list(ARCHS))
def arch(request) -> Arch:
    """Each architecture in turn; `@pytest.mark.parametrize("arch", names, indirect=True)`
    picks some."""
    return ARCHS[request.param]


@pytest.fixture(scope="session")
def archs() -> dict[str, Arch]:
    return ARCHS


@pytest.fixture(scope="session")
def vocab_size() -> int:
    """The tiny text architectures' vocabulary size."""
    return VOCAB


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_mlm_dir(tmp_path_factory) -> Path:
    """A tiny BERT saved with a masked-LM head, for the masked_lm check."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-mlm"), seed=1, head="masked_lm")


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("data") / "train.csv", sentiment_rows(400))


@pytest.fixture(scope="session")
def tagged_jsonl(tmp_path_factory) -> Path:
    """A multi-label task as JSON Lines: a text and a list of tags per row (tagged_rows)."""
    rows = [{"text": row["text"], "label": row["tags"]} for row in tagged_rows(160)]
    return write_jsonl(tmp_path_factory.mktemp("tagged") / "train.jsonl", rows)


@pytest.fixture(scope="session")
def ner_jsonl(tmp_path_factory) -> Path:
    """A token-classification task as JSON Lines: a list of words and their tags a row
    (ner_rows)."""
    return write_jsonl(tmp_path_factory.mktemp("ner") / "train.jsonl", ner_rows(160))


@pytest.fixture(name="ner_rows", scope="session")
def ner_rows_fixture():
    """ner_rows(n, seed=0): rows with a list of words and a list of their BIO tags."""
    return ner_rows


@pytest.fixture(name="tagged_rows", scope="session")
def tagged_rows_fixture():
    """tagged_rows(n, seed=0): rows with a text and a list of tags."""
    return tagged_rows


@pytest.fixture(name="write_jsonl", scope="session")
def write_jsonl_fixture():
    """write_jsonl(path, rows): rows as JSON Lines."""
    return write_jsonl


QUICK_TRIALS = "{low: 1.0e-4, high: 1.0e-3, log: true, default: 3.0e-4}"


def write_space(path: Path, learning_rate: str = QUICK_TRIALS, epochs: int = 2, batch: int = 16,
                starts: str = "") -> Path:
    """A space where only the learning rate and the depth are searched, so trials are short."""
    path.write_text(
        f"learning_rate: {learning_rate}\n"
        "head_lr_multiplier: {value: 10}\n"
        f"batch_size: {{value: {batch}}}\n"
        "trainable_layers: {low: 0, high: max, default: max}\n"
        f"epochs: {{value: {epochs}}}\n"
        "weight_decay: {value: 0.01}\n"
        "warmup_ratio: {value: 0.0}\n" + starts
    )
    return path


def cli_env() -> dict[str, str]:
    """One thread per worker (the machine is shared) and heartbeats fast enough for a test."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "AUTOFT_HEARTBEAT_SECONDS": "1"}


def search_args(model: Path, train: Path, space: Path, studies: Path, name: str, n_trials: int,
                devices: str, checked: bool = False) -> list[str]:
    """An `autoft search` command line; without `checked`, with `--base-kind none`: these tests
    run processes, signals and storages, and the default check (tests/test_default_check.py)
    would only add its cost to each; `checked` leaves the base flags to the caller."""
    return [sys.executable, "-m", "autoft", "search", "--model", str(model), "--train", str(train),
            "--space", str(space), "--studies-dir", str(studies), "--study", name,
            "--n-trials", str(n_trials), "--devices", devices,
            *(() if checked else ("--base-kind", "none"))]


def open_sqlite_study(studies: Path, name: str) -> optuna.Study:
    url = f"sqlite:///{(studies / name / 'study.db').resolve()}"
    return optuna.load_study(study_name=name, storage=url)


def wait_for_trial_in_progress(studies: Path, name: str, process: subprocess.Popen,
                               limit: float = 240) -> int:
    """The number of a trial that has evaluated once and goes on: the middle of a trial.

    Read from the per-trial logs, not the storage: opening a storage that is still being
    created would race the command creating it.
    """
    end = time.time() + limit
    while time.time() < end:
        assert process.poll() is None, process.communicate()
        for path in sorted((studies / name / "logs").glob("trial-*.log")):
            match = re.search(r"trial (\d+) evaluation 1 after", path.read_text())
            if match:
                return int(match.group(1))
        time.sleep(0.1)
    raise AssertionError("no trial reached its first evaluation in time")


@pytest.fixture(scope="session")
def slow_csv(tmp_path_factory) -> Path:
    """Enough rows that a trial lasts a few seconds: time to signal it in the middle."""
    return write_csv(tmp_path_factory.mktemp("slow") / "train.csv", sentiment_rows(400))


@pytest.fixture(name="write_space", scope="session")
def write_space_fixture():
    """write_space(path, learning_rate=..., epochs=2, batch=16, starts=""): a short space."""
    return write_space


@pytest.fixture(name="cli_env", scope="session")
def cli_env_fixture():
    """cli_env(): the environment of an `autoft` process a test starts."""
    return cli_env


@pytest.fixture(name="search_args", scope="session")
def search_args_fixture():
    """search_args(model, train, space, studies, name, n_trials, devices, checked=False): an
    `autoft search` command line, with --base-kind none unless `checked`."""
    return search_args


@pytest.fixture(name="open_sqlite_study", scope="session")
def open_sqlite_study_fixture():
    """open_sqlite_study(studies, name): a study from its SQLite file."""
    return open_sqlite_study


@pytest.fixture(name="wait_for_trial_in_progress", scope="session")
def wait_for_trial_in_progress_fixture():
    """wait_for_trial_in_progress(studies, name, process): a trial's number, mid-trial."""
    return wait_for_trial_in_progress


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory, tiny_model_dir, tiny_csv):
    """A real finished study on the tiny BERT: 3 trials run in this process, then a 4th that a
    pruner stops at its first evaluation; returns (study, study folder)."""
    studies = tmp_path_factory.mktemp("studies")
    flags = {"model": str(tiny_model_dir), "train": str(tiny_csv), "name": "tiny",
             "studies_dir": str(studies), "space": "quick", "n_trials": 4,
             "pruner_startup_trials": 10}
    config = build_config({}, None, flags)
    prepared = prepare_study(config, echo=lambda line: None)
    study = open_study(config)
    record_study_facts(study, prepared)
    objective = Objective(prepared, torch.device("cpu"))
    for _ in range(3):  # the default config first, then the space's starts, as workers run them
        queue_next_config(study)
        study.optimize(objective, n_trials=1)
    always = optuna.load_study(study_name="tiny", storage=study._storage,
                               pruner=optuna.pruners.ThresholdPruner(upper=-1.0))
    always.optimize(objective, n_trials=1, catch=(Exception,))
    return load_study("tiny", str(studies), None), studies / "tiny"


def write_digit_folder(folder: Path, digits: tuple[int, ...], per_class: int,
                       skip: int = 0) -> Path:
    """Real handwritten digits (scikit-learn's 8×8 scans) as PNG files, one folder per digit;
    `skip` leaves out each digit's first images (another set of the same digits)."""
    scans = load_digits()
    for digit in digits:
        rows = [i for i, target in enumerate(scans.target) if target == digit]
        (folder / str(digit)).mkdir(parents=True, exist_ok=True)
        for i in rows[skip : skip + per_class]:
            pixels = (scans.images[i] * (255 / 16)).astype("uint8")
            Image.fromarray(pixels).save(folder / str(digit) / f"{i}.png")
    return folder


def save_tiny_image_model(folder: Path, labels: list[str], vit: bool = False) -> Path:
    """A tiny random ResNet (2 blocks in 2 stages), or ViT (2 layers of 4 patches), for 8×8
    images, saved with its processor."""
    torch.manual_seed(0)
    head = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)}}
    if vit:
        model = ViTForImageClassification(ViTConfig(
            hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
            image_size=8, patch_size=4, **head))
    else:
        model = ResNetForImageClassification(ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", **head))
    model.save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 8, "width": 8}, image_mean=[0.5] * 3,
                         image_std=[0.5] * 3).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def digit_folder(tmp_path_factory) -> Path:
    """Digits 0, 1 and 2, 30 real scans each, as class folders of PNG files."""
    return write_digit_folder(tmp_path_factory.mktemp("digits"), (0, 1, 2), 30)


@pytest.fixture(scope="session")
def tiny_resnet_dir(tmp_path_factory) -> Path:
    return save_tiny_image_model(tmp_path_factory.mktemp("resnet"), ["0", "1", "2"])


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory) -> Path:
    return save_tiny_image_model(tmp_path_factory.mktemp("vit"), ["0", "1", "2"], vit=True)


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(size): a new folder on its own tmpfs of `size` ("4m"), so a test fills a real
    disk; unmounted after the test. Skipped where mounting needs a root this test lacks."""
    mounts = []

    def make(size: str) -> Path:
        folder = tmp_path / f"disk{len(mounts)}"
        folder.mkdir()
        try:
            _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder))
        except (OSError, subprocess.CalledProcessError) as error:
            pytest.skip(f"cannot mount a tmpfs here to fill a real disk ({error})")
        mounts.append(folder)
        return folder

    yield make
    for folder in reversed(mounts):
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def read_only():
    """read_only(folder): the folder remounted read-only onto itself (a bind mount, which holds
    for root too), until the test ends. Skipped where mounting needs a root this test lacks."""
    mounts = []

    def make(folder: Path) -> Path:
        try:
            _mount("--bind", str(folder), str(folder))
            mounts.append(folder)
            _mount("-o", "remount,ro,bind", str(folder))
        except (OSError, subprocess.CalledProcessError) as error:
            pytest.skip(f"cannot make {folder} read-only here with a bind mount ({error})")
        return folder

    yield make
    for folder in reversed(mounts):
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill_disk(folder: Path, leave: int = 0) -> None:
    """Fill the disk holding `folder` until at most `leave` bytes are free."""
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(folder / "filler", "wb", buffering=0) as handle:
        try:
            handle.write(b"\0" * max(free - leave, 0))
            while leave == 0:
                handle.write(b"\0" * 4096)
                handle.flush()
        except OSError:
            pass


@pytest.fixture(name="fill_disk", scope="session")
def fill_disk_fixture():
    """fill_disk(folder, leave=0): the disk holding the folder filled, but `leave` bytes."""
    return fill_disk


# Tiny causal language models (causal-lm): a word-level tokenizer with a chat template, and the
# decoder families the task must handle, built from configs.
CHAT_SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}"
                 "<|im_end|>{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant "
                 "{% endif %}")
OPPOSITES = {"good": "bad", "great": "awful", "fine": "poor", "lovely": "nasty"}
QUESTION_WORDS = ["what", "is", "the", "opposite", "of", "user", "assistant", "?"]


def build_chat_tokenizer(chat: bool = True) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the question/answer words, `</s>` ending a sequence, with a
    chat template (ChatML-like) unless `chat` is False."""
    words = list(dict.fromkeys(QUESTION_WORDS + WORDS))
    vocab = {token: i for i, token in enumerate(CHAT_SPECIAL + words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
        eos_token="</s>", model_max_length=48)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tiny_causal_lm(folder: Path, family: str = "llama", chat: bool = True,
                        layers: int = 2, seed: int = 0) -> Path:
    """A random decoder (hidden 32) of `family` (llama, gpt2 or qwen2: tied embeddings for the
    first two, an lm_head of its own for qwen2) saved with the chat tokenizer."""
    torch.manual_seed(seed)
    tokenizer = build_chat_tokenizer(chat)
    size = len(tokenizer)
    special = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
               "eos_token_id": tokenizer.eos_token_id}
    if family == "gpt2":
        config = transformers.GPT2Config(vocab_size=size, n_embd=32, n_layer=layers, n_head=2,
                                         n_positions=48, **special)
    else:
        config_class = {"llama": transformers.LlamaConfig,
                        "qwen2": transformers.Qwen2Config}[family]
        config = config_class(vocab_size=size, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=layers, num_attention_heads=2,
                              num_key_value_heads=1, max_position_embeddings=48,
                              tie_word_embeddings=family == "llama", **special)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def opposite_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Questions 'what is the opposite of good ?' with the answer 'bad', and the reverse."""
    rng = random.Random(seed)
    pairs = list(OPPOSITES.items()) + [(b, a) for a, b in OPPOSITES.items()]
    rows = []
    for _ in range(n):
        word, answer = rng.choice(pairs)
        rows.append({"prompt": f"what is the opposite of {word} ?", "response": answer})
    return rows


@pytest.fixture(name="save_tiny_causal_lm", scope="session")
def save_tiny_causal_lm_fixture():
    """save_tiny_causal_lm(folder, family="llama", chat=True, layers=2, seed=0)."""
    return save_tiny_causal_lm


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """The tiny Llama; seed 8 is one whose random model rates the base_config pairs above zero
    (the conformance similarity check needs a positive score to see retention move)."""
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny_llama"), seed=8)


@pytest.fixture(scope="session")
def qa_jsonl(tmp_path_factory) -> Path:
    """80 question/answer rows (prompt, response) as JSON Lines."""
    return write_jsonl(tmp_path_factory.mktemp("qa") / "train.jsonl", opposite_rows(80))
