"""Sentence pairs keep their segment ids (token_type_ids) everywhere the model reads them: the
prepared data, training, evaluation, the prefix cache's build, key and replay, and a base-task
classification check on pairs. A hook on BERT's token_type_embeddings sees the second segment.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import BertTokenizerFast

from autoft.cache import PrefixCache, cache_key
from autoft.config import BaseTaskConfig, build_config
from autoft.forgetting import build_base_task
from autoft.model import freeze, load_model
from autoft.prepare import prepare_study, prepared_folder
from autoft.prepared import load_prepared_data
from autoft.tasks.text import collate
from autoft.train import TrialParams, train_trial

PARAMS = TrialParams(learning_rate=3e-3, head_lr_multiplier=5.0, batch_size=8,
                     trainable_layers=1, epochs=2, weight_decay=0.0, warmup_ratio=0.0)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pair_bert(tmp_path_factory, save_tiny_bert, words) -> Path:
    """The tiny BERT (3 layers, its saved head included) with a real BERT tokenizer, which gives
    [CLS] a [SEP] b [SEP] and segment ids 0 for a, 1 for b."""
    folder = save_tiny_bert(tmp_path_factory.mktemp("pair-bert"), layers=3)
    vocab = {token: i for i, token in enumerate(words.special + words.all)}
    BertTokenizerFast(vocab=vocab, model_max_length=32).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pair_csv(tmp_path_factory, words, write_csv) -> Path:
    """Two short texts a row; the label says whether they carry the same sentiment."""
    rng = random.Random(0)
    rows = []
    sentiment = words.positive + words.negative
    for i in range(96):
        a, b = rng.choice(sentiment), rng.choice(sentiment)
        same = (a in words.positive) == (b in words.positive)
        rows.append({"text": f"the film was {a}", "text_b": f"{b} day {'so ' * (i % 3)}".strip(),
                     "label": "same" if same else "different"})
    return write_csv(tmp_path_factory.mktemp("pairs") / "pairs.csv", rows)


def segments_seen(model) -> list[int]:
    """The largest segment id of every batch that reaches the model's segment embeddings."""
    seen: list[int] = []
    model.bert.embeddings.token_type_embeddings.register_forward_hook(
        lambda _module, args, _out: seen.append(int(args[0].max()))
    )
    return seen


def fresh_model(pair_bert: Path):
    torch.manual_seed(1)
    model, _ = load_model(str(pair_bert), ["different", "same"])
    freeze(model, PARAMS.trainable_layers)
    return model


def test_pairs_train_evaluate_and_cache_with_their_segment_ids(pair_bert, pair_csv, tmp_path):
    flags = {"model": str(pair_bert), "train": str(pair_csv), "text_pair_column": "text_b",
             "name": "pairs", "studies_dir": str(tmp_path / "studies")}
    config = build_config({}, None, flags)
    prepare_study(config, echo=lambda line: None)
    data = load_prepared_data(prepared_folder(config))[0]  # as a resume reads it back
    for ids, segments in zip(data.train.input_ids, data.train.token_type_ids, strict=True):
        second = ids.index(3) + 1  # after the first [SEP]
        assert segments == [0] * second + [1] * (len(ids) - second)

    plain_model, cached_model = fresh_model(pair_bert), fresh_model(pair_bert)
    plain_seen, cached_seen = segments_seen(plain_model), segments_seen(cached_model)
    plain, cached = [], []
    train_trial(plain_model, data, PARAMS, CPU, 0, 3, plain.append)
    cache = PrefixCache(tmp_path / "cache")
    result = train_trial(cached_model, data, PARAMS, CPU, 0, 3, cached.append, cache=cache)
    assert result.cache_used and result.cache_note == "built", result.cache_note
    steps = 2 * -(-len(data.train) // PARAMS.batch_size)
    assert len(plain_seen) > steps and len(cached_seen) > steps  # training and evaluation
    assert set(plain_seen) == set(cached_seen) == {1}, "every batch, its cache build too, has b"
    losses = torch.tensor([[e.train_loss for e in run] for run in (plain, cached)])
    assert torch.allclose(losses[0], losses[1], rtol=1e-4, atol=1e-5), losses
    assert [e.value for e in plain] == [e.value for e in cached]

    frozen = 3 - PARAMS.trainable_layers
    no_segments = replace(data, train=replace(data.train, token_type_ids=None))
    key = cache_key(cached_model, data, frozen, CPU)
    assert cache_key(cached_model, no_segments, frozen, CPU) != key


def test_data_prepared_before_segment_ids_loads_without_them(pair_bert, pair_csv, tmp_path):
    config = build_config({}, None, {"model": str(pair_bert), "train": str(pair_csv),
                                     "text_pair_column": "text_b", "name": "old",
                                     "studies_dir": str(tmp_path)})
    prepare_study(config, echo=lambda line: None)
    path = prepared_folder(config) / "target.json"
    content = json.loads(path.read_text())
    for split in ("train", "validation"):
        del content[split]["token_type_ids"]
    path.write_text(json.dumps(content))
    lines = []
    data = prepare_study(config, echo=lines.append).data
    assert data.train.token_type_ids is None
    assert "token_type_ids" not in collate(data.train, [0, 1], 0, CPU)
    assert any("segment ids" in line for line in lines), lines


def test_a_classification_check_on_pairs_reads_their_segment_ids(pair_bert, tmp_path, write_csv):
    rows = [{"premise": "the film was good", "hypothesis": "a lovely day", "label": str(i % 2)}
            for i in range(12)]
    table = write_csv(tmp_path / "base.csv", rows)
    base = BaseTaskConfig(kind="classification", data=str(table), text_column="premise",
                          text_pair_column="hypothesis", max_examples=12, check_examples=4)
    tokenizer = BertTokenizerFast.from_pretrained(pair_bert)
    task = build_base_task(base, str(pair_bert), tokenizer, 32)
    seen = segments_seen(task.original_)
    model = fresh_model(pair_bert)
    task.score(model, "cpu")
    task.score(model, "cpu", quick=True, frozen=1)
    assert seen and set(seen) == {1}
