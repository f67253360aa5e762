"""image-classification on real digit scans and a tiny ResNet: a search runs end to end from an
image folder; tables and saved datasets read as the folder does; training from the prefix cache
follows training without it; augmentation changes the training images and turns the cache off.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import datasets
import optuna
import pandas as pd
import pytest
import torch
from transformers import AutoModelForImageClassification

from autoft.adapters import get_adapter
from autoft.cache import PrefixCache, cache_key
from autoft.cli import main as cli_main
from autoft.config import build_config
from autoft.model import freeze
from autoft.prepare import prepare_study
from autoft.prepared import load_prepared_data
from autoft.tasks import DataSettings, get_task
from autoft.tasks.image_classification import ImageClassification
from autoft.train import TrialParams, evaluate, train_trial
from autoft.trials import winning_soup

CPU = torch.device("cpu")
TASK = get_task("image-classification")
PARAMS = TrialParams(learning_rate=1e-3, head_lr_multiplier=5.0, batch_size=8,
                     trainable_layers=1, epochs=2, weight_decay=0.01, warmup_ratio=0.1)


def prepared(model_dir: Path, train: Path, **settings):
    """The task's data for `train`, read and encoded as prepare_study does."""
    settings = DataSettings(train=str(train), **settings)
    rows = TASK.read(settings)
    model, processor = TASK.load_model(str(model_dir), TASK.label_names(rows, settings), False)
    return model, TASK.encode(rows, processor, model.config, settings)


@pytest.mark.slow
def test_a_search_on_an_image_folder_runs_end_to_end(digit_folder, tiny_resnet_dir, tmp_path,
                                                     capsys) -> None:
    code = cli_main(["search", "--model", str(tiny_resnet_dir), "--train", str(digit_folder),
                     "--studies-dir", str(tmp_path), "--study", "digits", "--space", "quick",
                     "--n-trials", "2", "--devices", "cpu"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "chose task: image-classification (the train path is a folder of class folders" in out
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{tmp_path}/digits/study.db")
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 2
    assert study.user_attrs["task"] == "image-classification"
    assert any(t.user_attrs["cache_used"] for t in trials), [t.user_attrs for t in trials]
    for trial in trials:  # precision and recall beside the score, per digit
        assert set(trial.user_attrs["score_details"]["per_label"]) == {"0", "1", "2"}
    assert re.search(r"precision [01]\.\d{4}, recall [01]\.\d{4} \(macro average\)", out)
    exported = tmp_path / "digits" / "best_model"
    assert (exported / "preprocessor_config.json").is_file()
    model = AutoModelForImageClassification.from_pretrained(exported)
    assert sorted(model.config.label2id) == ["0", "1", "2"]
    data = load_prepared_data(tmp_path / "digits" / "prepared")[0]
    # the export scores what its trial (or the soup of the best trials, when that won) did:
    # BatchNorm statistics travel with the weights
    soup = winning_soup(study)
    assert evaluate(model, data, 0, CPU) == (soup["value"] if soup else study.best_value)


def test_tables_and_saved_datasets_read_as_the_folder_does(digit_folder, tiny_resnet_dir,
                                                           tmp_path) -> None:
    files = sorted(digit_folder.glob("*/*.png"))
    rows = [{"file": str(f.relative_to(digit_folder)), "label": f.parent.name} for f in files]
    table = digit_folder / "digits.csv"  # relative paths: from the table's folder
    pd.DataFrame(rows).to_csv(table, index=False)
    lines = tmp_path / "digits.jsonl"
    pd.DataFrame([{**r, "file": str(digit_folder / r["file"])} for r in rows]).to_json(
        lines, orient="records", lines=True)
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict(
        {"picture": [str(f) for f in files], "label": [f.parent.name for f in files]},
        features=datasets.Features({"picture": datasets.Image(),
                                    "label": datasets.Value("string")}),
    ).save_to_disk(saved)
    _, expected = prepared(tiny_resnet_dir, digit_folder)
    reference = TASK.collate(expected.train, list(range(6)), 0, CPU)
    for source in (table, lines, saved):
        assert ImageClassification.detect(DataSettings(train=str(source)), ""), source
        _, data = prepared(tiny_resnet_dir, source)
        assert data.train.labels == expected.train.labels, source
        batch = TASK.collate(data.train, list(range(6)), 0, CPU)
        assert torch.equal(batch["pixel_values"], reference["pixel_values"]), source
        assert torch.equal(batch["labels"], reference["labels"])


@pytest.mark.parametrize("kind", ["resnet", "vit"])
def test_training_from_the_cache_follows_the_uncached_trajectory(kind, digit_folder, tmp_path,
                                                                 request) -> None:
    model_dir = request.getfixturevalue(f"tiny_{kind}_dir")
    results, models = [], []
    for cache in (None, PrefixCache(tmp_path)):
        model, data = prepared(model_dir, digit_folder)
        torch.manual_seed(1)
        freeze(model, PARAMS.trainable_layers)
        results.append(train_trial(model, data, PARAMS, CPU, 0, seed=3,
                                   on_evaluation=lambda evaluation: None, cache=cache))
        models.append(model)
    plain, cached = results
    assert not plain.cache_used and cached.cache_used, cached.cache_note
    assert [e.value for e in plain.evaluations] == [e.value for e in cached.evaluations]
    losses = [[e.train_loss for e in r.evaluations] for r in results]
    assert torch.allclose(torch.tensor(losses[0]), torch.tensor(losses[1]), atol=1e-5)
    assert losses[0][0] != losses[0][-1]  # it trained
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name
    headers = [json.loads(f.read_bytes()[:4096]) for f in tmp_path.glob("*.states")]
    assert {h["rows"]["train"] for h in headers} == {len(data.train)}  # one row an image
    # one pass wrote both depths: a ResNet's in each stage's shape, a ViT's as its tokens
    expected = [[8, 2, 2], [16, 1, 1]] if kind == "resnet" else [[5, 16], [5, 16]]
    assert sorted(h["shape"] for h in headers) == expected


def test_augmentation_changes_training_images_and_turns_the_cache_off(
    digit_folder, tiny_resnet_dir, tmp_path, caplog
) -> None:
    flags = {"model": str(tiny_resnet_dir), "train": str(digit_folder), "augment": "true"}
    assert DataSettings.from_config(build_config({}, None, flags)).augment  # --augment arrives
    model, data = prepared(tiny_resnet_dir, digit_folder, augment=True)
    assert any("augmentation" in note and "cache is off" in note for note in data.notes)
    torch.manual_seed(0)
    first = TASK.collate(data.train, list(range(8)), 0, CPU)["pixel_values"]
    second = TASK.collate(data.train, list(range(8)), 0, CPU)["pixel_values"]
    assert not torch.equal(first, second)
    plain = replace(data.train, augment=False)
    assert torch.equal(TASK.collate(data.validation, [0, 1], 0, CPU)["pixel_values"],
                       TASK.collate(data.validation, [0, 1], 0, CPU)["pixel_values"])
    assert not torch.equal(first, TASK.collate(plain, list(range(8)), 0, CPU)["pixel_values"])
    freeze(model, 1)
    result = train_trial(model, data, replace(PARAMS, epochs=1), CPU, 0, seed=3,
                         on_evaluation=lambda evaluation: None, cache=PrefixCache(tmp_path))
    assert not result.cache_used
    assert result.cache_note == "augmentation changes the training images every epoch"
    assert "training without the prefix cache: augmentation" in caplog.text


def test_a_trial_s_kept_weights_carry_its_batchnorm_statistics(digit_folder,
                                                               tiny_resnet_dir) -> None:
    """A trained BatchNorm's weights only work with the running statistics it trained with: the
    weights a trial keeps (and saves, and exports) put both back."""
    model, data = prepared(tiny_resnet_dir, digit_folder)
    freeze(model, 1)
    result = train_trial(model, data, PARAMS, CPU, 0, seed=3, on_evaluation=lambda e: None)
    adapter = get_adapter("freeze")
    adapter.restore(model, result.best_state)
    fresh, _ = prepared(tiny_resnet_dir, digit_folder)
    statistics = [n for n in result.best_state if n.endswith("running_mean")]
    assert statistics and all(  # they moved in training
        not torch.equal(result.best_state[n], fresh.state_dict()[n]) for n in statistics)
    adapter.restore(fresh, result.best_state)
    batch = TASK.collate(data.validation, list(range(8)), 0, CPU)
    with torch.no_grad():
        assert torch.equal(model.eval()(**batch).logits, fresh.eval()(**batch).logits)


def test_the_default_space_holds_lora_at_freeze_for_a_model_of_convolutions(
    digit_folder, tiny_resnet_dir, tmp_path
) -> None:
    config = build_config({}, None, {"model": str(tiny_resnet_dir), "train": str(digit_folder),
                                     "studies_dir": str(tmp_path), "space": "default"})
    lines = []
    prepared_study = prepare_study(config, echo=lines.append)
    assert "  adapter held at freeze: lora does not fit ResNetForImageClassification." in lines
    assert prepared_study.space.values_of("adapter") == ("freeze",)


def test_the_cache_key_follows_the_images(digit_folder, tiny_resnet_dir) -> None:
    model, data = prepared(tiny_resnet_dir, digit_folder)
    key = cache_key(model, data, 1, CPU)
    assert cache_key(model, replace(data, train=replace(data.train)), 1, CPU) == key
    images = list(data.train.images)
    images[0], images[-1] = images[-1], images[0]
    assert cache_key(model, replace(data, train=replace(data.train, images=images)), 1, CPU) != key
