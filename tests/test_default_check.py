"""autoft's default forgetting check: on when a study names no base task, off with `none`, the
`ranking` kind reading the model's own behaviour on shipped general English, sized at prepare."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from autoft.config import AUTO, GENERAL_TEXT, BaseTaskConfig, build_config
from autoft.errors import UsageError
from autoft.forgetting import build_base_task, default_check
from autoft.forgetting.kinds.ranking import calibrated
from autoft.guard import widths_at_bar
from autoft.prepare import prepare_study
from autoft.tasks import get_task


def test_no_base_task_means_the_default_check_and_none_means_none(tmp_path, tiny_csv,
                                                                  tiny_model_dir) -> None:
    given = {"model": str(tiny_model_dir), "train": str(tiny_csv)}
    default = build_config({}, None, given).base
    assert (default.kind, default.data) == (AUTO, GENERAL_TEXT)
    assert build_config({}, None, given | {"base_min_retention": 0.9}).base.min_retention == 0.9
    assert build_config({"base": "none"}, tmp_path / "s.yaml", given).base is None
    assert build_config({"base": False}, tmp_path / "s.yaml", given).base is None
    assert build_config({}, None, given | {"base_kind": "none"}).base is None
    with pytest.raises(UsageError, match="--base-kind: none turns the forgetting check off, yet "
                                         "--min-retention sets it; drop one of the two"):
        build_config({}, None, given | {"base_kind": "none", "base_min_retention": 0.9})
    with pytest.raises(UsageError, match="--base-data: base data needs its kind"):
        build_config({}, None, given | {"base_data": str(tiny_csv)})


def test_the_default_kind_follows_the_task() -> None:
    auto = BaseTaskConfig()
    ranking = default_check(auto, get_task("text-classification"), sized_by_user=False)
    assert (ranking.kind, ranking.max_examples, ranking.check_examples) == ("ranking", 64, 64)
    assert default_check(auto, get_task("token-classification"), False).kind == "ranking"
    causal = default_check(auto, get_task("causal-lm"), sized_by_user=False)
    assert (causal.kind, causal.max_examples) == ("causal_lm", 40)
    assert default_check(auto, get_task("image-classification"), False) is None
    mine = BaseTaskConfig(max_examples=100, check_examples=10)
    assert default_check(mine, get_task("text-classification"), True).max_examples == 100


def test_ranking_reads_the_untouched_model_as_whole_and_a_moved_one_below(tiny_model_dir) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    config = BaseTaskConfig(kind="ranking", max_examples=80, check_examples=40)
    task = build_base_task(config, str(tiny_model_dir), tokenizer, 32)
    assert task.score(model, "cpu").value == pytest.approx(1.0)
    readings = []
    torch.manual_seed(0)
    noise = {name: torch.randn_like(p) for name, p in model.base_model.named_parameters()}
    original = {name: p.detach().clone() for name, p in model.base_model.named_parameters()}
    for scale in (0.02, 0.1, 0.5):
        with torch.no_grad():
            for name, parameter in model.base_model.named_parameters():
                parameter.copy_(original[name] + scale * noise[name] * original[name].std())
        score = task.score(model, "cpu")
        readings.append(score.value)
        assert score.value == pytest.approx(calibrated(score.details["agreement"]))
    assert 1.0 > readings[0] > readings[1] > readings[2], readings


def test_a_stand_in_at_the_bar_narrows_with_more_texts(tiny_model_dir) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    task = build_base_task(BaseTaskConfig(kind="ranking", max_examples=120), str(tiny_model_dir),
                           tokenizer, 32)
    stand_in = task.stand_in(model, "cpu", bar=0.95)
    rows = np.arange(task.units_["search"])
    assert task.statistic(stand_in, rows, "search") == pytest.approx(0.95, abs=1e-3)
    base = task.observe(model, "cpu", "search")
    widths = widths_at_bar(task, base, stand_in, [20, 60, 120])
    assert widths[20] > widths[60] > widths[120] > 0, widths


def test_prepare_says_the_default_check_sizes_it_and_a_resume_keeps_the_sizes(
        tmp_path, tiny_csv, tiny_model_dir) -> None:
    said = []
    config = build_config({}, None, {"model": str(tiny_model_dir), "train": str(tiny_csv),
                                     "space": "quick", "name": "auto",
                                     "studies_dir": str(tmp_path)})
    prepared = prepare_study(config, echo=said.append)
    assert said[0].startswith("Forgetting check (autoft's default, as no base task is named): "
                              "ranking on 64 passages of general English")
    assert "--base-kind none checks nothing" in said[0]
    sized = next(line for line in said if "sized for ±3% at the bar" in line)
    base = prepared.config.base
    assert base.kind == "ranking" and prepared.base["sizes"] == [base.max_examples,
                                                                 base.check_examples]
    assert f"{base.check_examples} texts at each evaluation" in sized
    assert base.max_examples >= base.check_examples
    assert prepared.base["score"] == pytest.approx(1.0)
    assert prepared.base["preserve_on"]["source"] == "spare base items"
    resumed = prepare_study(config, echo=lambda line: None)
    assert resumed.config.base == base


def test_a_task_not_in_english_preserves_on_its_own_texts(tmp_path, tiny_model_dir,
                                                          write_csv) -> None:
    """autoft's general text is English: a task whose texts hold no common English word (the
    tiny tokenizer's words, without its 'the', 'a', 'is', 'was', 'it') preserves on its own."""
    rng = random.Random(0)
    filler = ["film", "day", "very", "quite", "food", "show", "so"]
    rows = [{"text": " ".join(rng.sample(filler, 3) + [rng.choice(mood)]), "label": label}
            for label, mood in (("pos", ["good", "great"]), ("neg", ["bad", "awful"]))
            for _ in range(100)]
    train = write_csv(tmp_path / "train.csv", rows)
    config = build_config({}, None, {"model": str(tiny_model_dir), "train": str(train),
                                     "space": "quick", "name": "fr",
                                     "studies_dir": str(tmp_path / "s")})
    said = []
    prepared = prepare_study(config, echo=said.append)
    assert prepared.base["preserve_on"]["source"] == "training texts"
    assert any("autoft's general text is English, and most of them are not" in line
               for line in said)
