"""Shared test fixtures: a tiny real BERT with its tokenizer saved to disk, and a small CSV task
that such a model can learn in seconds (the label is which sentiment word a text contains).
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    PreTrainedTokenizerFast,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
)

# Tiny models train faster on one thread than on two (a preservation test: 16.7 s against 25.1 s
# here), and the autoft processes the tests start inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE = ["good", "great", "fine", "lovely"]
NEGATIVE = ["bad", "awful", "poor", "nasty"]
FILLER = ["the", "a", "film", "day", "was", "is", "very", "quite", "food", "show", "it", "so"]
WORDS = POSITIVE + NEGATIVE + FILLER


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the fixture vocabulary, wrapped like any HF tokenizer."""
    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=32)


def save_tiny_bert(folder: Path, layers: int = 2, seed: int = 0, head: bool = True) -> Path:
    """A random 2-layer BERT (hidden 32) saved with its tokenizer, as a user's model folder;
    head=False saves the encoder alone (as all-MiniLM-L6-v2 is), so every trial's head is new."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=48, max_position_embeddings=32,
                        pad_token_id=tokenizer.pad_token_id)
    (BertForSequenceClassification if head else BertModel)(config).save_pretrained(folder)
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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("data") / "train.csv", sentiment_rows(400))


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory, tiny_model_dir, tiny_csv):
    """A real finished study on the tiny BERT: 3 trials run in this process, then a 4th that a
    pruner stops at its first evaluation; returns (study, study folder)."""
    import optuna

    from autoft.config import build_config
    from autoft.prepare import prepare_study
    from autoft.study import (
        Objective,
        load_study,
        open_study,
        queue_next_config,
        record_study_facts,
    )

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
