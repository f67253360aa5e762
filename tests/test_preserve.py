"""The preservation loss (preserve_weight): it keeps what each base-task kind reads closer to the
untouched model under a learning rate that wrecks it otherwise, its targets are computed once per
study and reused (also by a later process), and a weight of 0 trains exactly as before.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import optuna
import pytest
import torch
from safetensors.torch import load_file
from transformers import BertTokenizerFast

from autoft.cli import main
from autoft.config import BaseTaskConfig, build_config
from autoft.forgetting import BaseSplit, build_base_task, preservation_texts
from autoft.forgetting.split import split_base
from autoft.model import freeze, load_model
from autoft.prepare import prepare_study
from autoft.preserve import Preservation, texts_to_preserve
from autoft.tasks import get_task
from autoft.tasks.text import Split, tokenize
from autoft.train import TrialParams, train_trial

CPU = torch.device("cpu")
HARD = TrialParams(learning_rate=1e-2, head_lr_multiplier=1.0, batch_size=16, trainable_layers=2,
                   epochs=2, weight_decay=0.0, warmup_ratio=0.0)


@pytest.fixture(scope="module")
def target(tmp_path_factory, tiny_model_dir, tiny_csv):
    flags = {"model": str(tiny_model_dir), "train": str(tiny_csv), "name": "p",
             "studies_dir": str(tmp_path_factory.mktemp("studies"))}
    prepared = prepare_study(build_config({}, None, flags), echo=lambda line: None)
    return prepared.data, prepared.pad_id


@pytest.mark.parametrize("kind", ["similarity", "drift", "classification", "masked_lm"])
def test_preservation_keeps_what_the_base_task_reads_closer(
    kind, tiny_model_dir, tiny_mlm_dir, target, tmp_path, build_tokenizer, base_config,
    preservation_distances
):
    model_dir = tiny_mlm_dir if kind == "masked_lm" else tiny_model_dir
    config = base_config(kind, tmp_path)
    tokenizer = build_tokenizer()
    task = build_base_task(config, str(model_dir), tokenizer, 32)
    free, preserved = preservation_distances(task, config, str(model_dir), target, tokenizer,
                                             tmp_path)
    assert free > 1e-3, f"lr 1e-2 on every layer must move what {kind} reads"
    assert preserved < 0.5 * free, (kind, free, preserved)


PRESERVING_SPACE = """\
learning_rate: {value: 1.0e-2}
head_lr_multiplier: {value: 1}
batch_size: {value: 16}
trainable_layers: {value: 1}
epochs: {value: 1}
weight_decay: {value: 0.0}
warmup_ratio: {value: 0.0}
"""


def search(tmp_path: Path, model: Path, train: Path, space: str, study: str, n: int,
           *extra: str) -> optuna.Study:
    path = tmp_path / f"{study}.yaml"
    path.write_text(space)
    code = main(["search", "--model", str(model), "--train", str(train), "--space", str(path),
                 "--n-trials", str(n), "--study", study, "--studies-dir", str(tmp_path / "s"),
                 "--base-kind", "drift", "--base-data", str(train), "--min-retention", "0",
                 *extra])
    assert code == 0
    return optuna.load_study(study_name=study,
                             storage=f"sqlite:///{tmp_path / 's' / study / 'study.db'}")


@pytest.mark.slow
def test_targets_are_computed_once_per_study_and_reused(tiny_model_dir, tiny_csv, tmp_path, texts,
                                                       write_lines):
    preserve = write_lines(tmp_path / "preserve.txt", texts(40, seed=5))
    # four configs for its four trials: a space of one config runs it once (test_search)
    rates = "{choices: [1.0e-2, 5.0e-3, 2.0e-3, 1.0e-3]}"
    space = PRESERVING_SPACE.replace("{value: 1.0e-2}", rates) + "preserve_weight: {value: 1}\n"
    flags = ("--base-preserve-data", str(preserve))
    study = search(tmp_path, tiny_model_dir, tiny_csv, space, "keep", 2, *flags)
    notes = [trial.user_attrs["preserve_targets"] for trial in study.trials]
    assert notes == ["computed", "reused"]
    (stored,) = (tmp_path / "s" / "keep" / "preserve").glob("*.safetensors")
    written = stored.stat().st_mtime_ns
    study = search(tmp_path, tiny_model_dir, tiny_csv, space, "keep", 3, *flags)
    assert study.trials[2].user_attrs["preserve_targets"] == "reused", "a new process reuses"
    assert stored.stat().st_mtime_ns == written
    stored.write_bytes(stored.read_bytes()[:-8] + b"damaged!")
    study = search(tmp_path, tiny_model_dir, tiny_csv, space, "keep", 4, *flags)
    assert study.trials[3].user_attrs["preserve_targets"] == "computed", "damage is recomputed"


@pytest.mark.slow
def test_weight_zero_trains_exactly_as_without_preservation(
    tiny_model_dir, tiny_csv, tmp_path, texts, write_lines
):
    preserve = write_lines(tmp_path / "preserve.txt", texts(40, seed=5))
    before = search(tmp_path, tiny_model_dir, tiny_csv, PRESERVING_SPACE, "plain", 1)
    off = search(tmp_path, tiny_model_dir, tiny_csv,
                 PRESERVING_SPACE + "preserve_weight: {value: 0}\n", "off", 1,
                 "--base-preserve-data", str(preserve))
    plain, zero = before.trials[0].user_attrs, off.trials[0].user_attrs
    assert [e["train_loss"] for e in zero["evaluations"]] == [
        e["train_loss"] for e in plain["evaluations"]]
    assert zero["retention"] == plain["retention"]
    assert "preserve_targets" not in zero
    assert not (tmp_path / "s" / "off" / "preserve").exists()


@pytest.mark.slow
def test_without_base_side_texts_it_preserves_on_the_tasks_own_training_texts(
    tiny_model_dir, tmp_path, sentiment_rows, write_csv, capfd, write_lines
):
    """The base items are all scored (a tiny base file) and there is no preservation file: the
    trials preserve on the task's own training texts (Learning without Forgetting), never its
    validation texts, say so and record it, and the loss term changes what they train."""
    train_rows = sentiment_rows(80, seed=1)
    seen = {row["text"] for row in train_rows}
    val_rows = [row for row in sentiment_rows(60, seed=2) if row["text"] not in seen][:30]
    train = write_csv(tmp_path / "train.csv", train_rows)
    validation = write_csv(tmp_path / "val.csv", val_rows)
    base = write_lines(tmp_path / "base.txt", [r["text"] for r in sentiment_rows(20, seed=3)])
    flags = ("--validation", str(validation), "--base-data", str(base))
    space = PRESERVING_SPACE + "interpolation_mixes: []\n"
    off = search(tmp_path, tiny_model_dir, train, space + "preserve_weight: {value: 0}\n",
                 "off", 1, *flags)
    capfd.readouterr()
    own = search(tmp_path, tiny_model_dir, train,
                 space + "preserve_weight: {choices: [0, 1], default: 1}\n", "own", 1, *flags)
    out = capfd.readouterr().out
    assert "preserve_weight > 0 preserves on" in out and "of the task's own 80 training" in out
    assert "held at 0" not in out
    assert "preserve_targets" not in off.trials[0].user_attrs
    attrs = own.trials[0].user_attrs
    assert attrs["params"]["preserve_weight"] == 1.0
    assert attrs["preserve_targets"] == "computed"
    assert attrs["preserve_on"] == "training texts"
    assert own.user_attrs["base"]["preserve_on"]["source"] == "training texts"
    summary = json.loads((tmp_path / "s" / "own" / "summary.json").read_text())
    assert summary["base"]["preserve_on"]["texts"] == 80
    report = (tmp_path / "s" / "own" / "report.md").read_text()
    assert ("Its preservation loss (×1) held the model's output near the untouched model's on "
            "80 of the task's own 80 training texts") in report
    config = build_config({}, None, {"model": str(tiny_model_dir), "train": str(train),
                                     "validation": str(validation), "base_kind": "drift",
                                     "base_data": str(base), "name": "own",
                                     "studies_dir": str(tmp_path / "s")})
    prepared = prepare_study(config, echo=lambda line: None)
    tokenizer = prepared.task.load_processor(str(tiny_model_dir), False)
    chosen = texts_to_preserve(config.base, BaseSplit.from_dict(prepared.base["split"]),
                               prepared.data, prepared.task, tokenizer, config.seed)
    assert set(chosen.texts) == seen, "every training text, decoded as it was written"
    assert set(chosen.texts).isdisjoint(row["text"] for row in val_rows)
    task = build_base_task(config.base, str(tiny_model_dir), tokenizer, 32,
                           split=BaseSplit.from_dict(prepared.base["split"]))
    (stored,) = (tmp_path / "s" / "own" / "preserve").glob("*.safetensors")
    expected = Preservation(task, chosen.texts, tokenizer, tmp_path / "x", str(tiny_model_dir))
    assert stored.name == expected.path.name, "the targets were computed on those texts"
    trained = [load_file(tmp_path / "s" / name / "trials" / "0000" / "trainable.safetensors")
               for name in ("off", "own")]
    assert trained[0].keys() == trained[1].keys()
    assert any(not torch.equal(trained[0][key], trained[1][key]) for key in trained[0])


def test_a_pair_task_preserves_on_the_first_text_of_each_pair(words):
    """Of a sentence-pair task's training inputs, the first text is preserved on, with segment
    ids or, without them, up to the first separator."""
    vocab = {token: i for i, token in enumerate(words.special + words.all)}
    tokenizer = BertTokenizerFast(vocab=vocab, model_max_length=32)  # [CLS] a [SEP] b [SEP]
    pairs = [("good film", "bad day"), ("the show was awful", "it is fine")]
    encoded = tokenize(tokenizer, pairs, 32)
    split = Split(encoded["input_ids"], [0, 1], encoded["token_type_ids"])
    task = get_task("text-classification")
    assert task.input_texts(split, tokenizer, [1, 0]) == ["the show was awful", "good film"]
    without_segments = Split(encoded["input_ids"], [0, 1])
    assert task.input_texts(without_segments, tokenizer, [0]) == ["good film"]


def test_without_a_base_task_or_for_images_preserve_weight_is_held_at_zero(
    tiny_model_dir, tiny_csv, tmp_path, capsys
):
    """No base task (base: none): nothing to preserve, and prepare says why; images have no
    preservation loss, base task or not."""
    space = tmp_path / "space.yaml"
    space.write_text(PRESERVING_SPACE + "preserve_weight: {choices: [0, 1], default: 1}\n")
    config = build_config({}, None, {"model": str(tiny_model_dir), "train": str(tiny_csv),
                                     "space": str(space), "name": "nobase",
                                     "studies_dir": str(tmp_path / "s"), "base_kind": "none"})
    prepared = prepare_study(config)
    assert "preserve_weight held at 0: there is no base task." in capsys.readouterr().out
    assert next(p for p in prepared.space.parameters if p.name == "preserve_weight").value == 0
    images = texts_to_preserve(BaseTaskConfig("drift", str(tiny_csv)), None, prepared.data,
                               get_task("image-classification"), None, 0)
    assert images.texts == []
    assert images.words == "image-classification has no preservation loss"


def test_without_a_file_only_base_texts_the_check_never_scores_are_used(tmp_path, texts,
                                                                        write_lines):
    lines = texts(30, seed=3)
    data = write_lines(tmp_path / "base.txt", lines)
    config = BaseTaskConfig("drift", str(data), max_examples=20)
    free = preservation_texts(config, split_base(len(lines), "examples", seed=0))
    assert free and set(free).isdisjoint(lines[:20])
    assert set(free) <= set(lines[20:])


def test_preservation_never_reads_what_the_audit_holds_back(tmp_path, texts, write_lines):
    lines = texts(300, seed=4)
    config = BaseTaskConfig("drift", str(write_lines(tmp_path / "base.txt", lines)),
                            max_examples=100)
    split = split_base(len(lines), "examples", seed=0)
    parts = split.parts(config.max_examples, config.check_examples)
    free = set(preservation_texts(config, split))
    assert split.held_out and len(free) == 150 - 100
    assert free.isdisjoint(lines[i] for i in split.audit)
    assert free.isdisjoint(lines[i] for i in parts["search"])


def test_a_preserving_config_says_so_in_words():
    from autoft.describe import describe_params

    params = {"trainable_layers": 2, "learning_rate": 1e-4, "preserve_weight": 0.3}
    assert describe_params(params, 6).endswith("preservation loss ×0.3")
    assert "preservation" not in describe_params({**params, "preserve_weight": 0.0}, 6)


def test_a_later_trial_replays_the_frozen_prefix_its_worker_computed_with_the_same_loss(
    tiny_model_dir, target, tmp_path, build_tokenizer, base_config, monkeypatch
):
    """The untouched bottom blocks' output on the fixed batches is computed once per worker and
    depth: a second trial captures nothing, and its loss is, step by step, the loss it has with
    the prefix computed afresh."""
    import autoft.preserve as preserve

    data, pad_id = target
    config = base_config("similarity", tmp_path)
    tokenizer = build_tokenizer()
    task = build_base_task(config, str(tiny_model_dir), tokenizer, 32)
    texts = preservation_texts(config, task.split_)
    captures = []
    real_capture = preserve.capture
    monkeypatch.setattr(preserve, "capture",
                        lambda *args: captures.append(1) or real_capture(*args))

    def trial(preservation: Preservation) -> list[float]:
        model, _ = load_model(str(tiny_model_dir), data.label_names)
        freeze(model, HARD.trainable_layers)
        term = preservation.loss(model, 1.0, 2, CPU)[0]
        losses = []

        def recorded(model, step):
            loss = term(model, step)
            losses.append(float(loss))
            return loss

        train_trial(model, data, dataclasses.replace(HARD, preserve_weight=1.0), CPU, pad_id,
                    seed=0, on_evaluation=lambda evaluation: None, loss_terms=[recorded])
        assert term.replays
        return losses

    shared = Preservation(task, texts, tokenizer, tmp_path / "preserve", str(tiny_model_dir))
    first = trial(shared)
    assert len(captures) == len(shared.batches)
    again = trial(shared)
    assert len(captures) == len(shared.batches), "the second trial captured nothing"
    fresh = trial(Preservation(task, texts, tokenizer, tmp_path / "preserve", str(tiny_model_dir)))
    assert len(captures) == 2 * len(shared.batches)
    assert again == fresh == first


def test_batches_of_another_size_keep_their_own_targets(tiny_model_dir, tmp_path, build_tokenizer,
                                                        base_config):
    """Texts cut to one length give the same token ids in batches of 4 or 8: the stored
    targets' name must still tell them apart, or each size takes the other's for damaged."""
    from autoft.preserve import Cost

    config = base_config("drift", tmp_path)
    tokenizer = build_tokenizer()
    task = build_base_task(config, str(tiny_model_dir), tokenizer, 32)
    texts = preservation_texts(config, task.split_)
    paths = {Preservation(task, texts, tokenizer, tmp_path / "preserve", str(tiny_model_dir),
                          Cost(max_length=4, batch_texts=size)).path for size in (4, 8)}
    assert len(paths) == 2
