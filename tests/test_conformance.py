"""Conformance, in the manner of scikit-learn's check_estimator: every registered task kind
(autoft.tasks.TASKS), adapter (autoft.adapters.ADAPTERS) and base-check kind
(autoft.forgetting.KINDS) meets one contract on tiny real models, parametrized from the
registries, so a kind added to one is checked here once it names its tiny data (TASK_ASSETS).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import autoft
from autoft.adapters import ADAPTERS, get_adapter, plain_state_dict
from autoft.config import BASE_KINDS, BaseTaskConfig
from autoft.errors import UsageError
from autoft.forgetting import KINDS, build_base_task, kinds_for, paired_interval, retention
from autoft.forgetting.base import takes_images
from autoft.model import evaluating, freeze, model_depth
from autoft.objective import save_trial_weights
from autoft.params import TrialParams
from autoft.tasks import MAXIMIZE, TASKS, DataSettings, Preserving, detect_task, get_task
from autoft.train import evaluate, set_train_mode

CPU = torch.device("cpu")
# Each task kind's tiny model and training data, as fixture names: all a new kind needs here.
TASK_ASSETS = {
    "text-classification": ("tiny_model_dir", "tiny_csv"),
    "text-regression": ("tiny_model_dir", "rated_csv"),
    "multi-label": ("tiny_model_dir", "tagged_jsonl"),
    "image-classification": ("tiny_resnet_dir", "digit_folder"),
    "token-classification": ("tiny_model_dir", "ner_jsonl"),
    "causal-lm": ("tiny_llama_dir", "qa_jsonl"),
}
# Where each metric's values lie (a new metric names its range here).
METRIC_RANGES = {"accuracy": (0, 1), "macro_f1": (0, 1), "micro_f1": (0, 1), "spearman": (-1, 1),
                 "pearson": (-1, 1), "rmse": (0, math.inf), "entity_f1": (0, 1),
                 "entity_macro_f1": (0, 1), "loss": (0, math.inf)}
# Every base-check kind under every task kind that supports it: the check reads that task's model.
BASE_PAIRS = [(task, kind) for task, task_class in TASKS.items() for kind in kinds_for(task_class)]


@pytest.fixture(scope="module")
def rated_csv(tmp_path_factory, sentiment_rows, write_csv):
    """The sentiment texts rated with numbers (positive about 1, negative about -1)."""
    rows = [{"text": row["text"], "label": f"{(1 if row['label'] == 'pos' else -1) + i / 400:.3f}"}
            for i, row in enumerate(sentiment_rows(120))]
    return write_csv(tmp_path_factory.mktemp("rated") / "train.csv", rows)


@pytest.fixture
def task_assets(request):
    """task_assets(name): (model folder, training data) of a task kind."""

    def assets(name: str):
        if name not in TASK_ASSETS:
            pytest.fail(f"task kind {name} has no tiny model and data in TASK_ASSETS")
        return [request.getfixturevalue(fixture) for fixture in TASK_ASSETS[name]]

    return assets


def module_state(model) -> tuple[list[bool], list[bool]]:
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


def test_the_registries_agree():
    """config validates base kinds without torch, from its own list: it must name the registry's."""
    assert BASE_KINDS == tuple(KINDS)
    supported = {kind for task in TASKS.values() for kind in kinds_for(task)}
    assert supported == set(KINDS), "every base kind is supported by a task, and no other"


NEW_KIND = """
from autoft.forgetting.kinds.drift import DriftTask


class EchoTask(DriftTask):
    name = "echo_cka"
    inputs = ("image",)
"""
PROBE = """
import json, sys
from autoft.cli import build_parser
from autoft.config import BASE_KINDS, build_config
from autoft.forgetting import KINDS, kinds_for
from autoft.tasks import get_task
config = build_config({"model": sys.argv[1], "train": sys.argv[2],
                       "base": {"kind": "echo", "data": sys.argv[2]}}, None, {})
print(json.dumps({"kinds": BASE_KINDS, "class": KINDS["echo"].__name__, "config": config.base.kind,
                  "image": kinds_for(get_task("image-classification")),
                  "text": kinds_for(get_task("text-classification")),
                  "help": build_parser()._subparsers._group_actions[0].choices["search"]
                  .format_help()}))
"""


def test_a_new_base_kind_is_one_module(tmp_path, tiny_model_dir, tiny_csv):
    """A module dropped into forgetting/kinds/ is a kind everywhere: the config's check, the
    CLI's help, the registry, and the tasks whose inputs it reads (in a copy of the package)."""
    copy = tmp_path / "autoft"
    shutil.copytree(Path(autoft.__file__).parent, copy,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "forgetting" / "kinds" / "echo.py").write_text(NEW_KIND)
    done = subprocess.run([sys.executable, "-c", PROBE, str(tiny_model_dir), str(tiny_csv)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert "echo" in seen["kinds"] and seen["class"] == "EchoTask" and seen["config"] == "echo"
    assert "echo" in seen["image"] and "echo" not in seen["text"]
    assert "echo" in " ".join(seen["help"].split())


@pytest.mark.parametrize("name", list(TASKS))
def test_a_task_reads_encodes_trains_and_scores_its_data(name, task_assets):
    task = get_task(name)
    model_dir, train = task_assets(name)
    settings = DataSettings(train=str(train))
    assert detect_task("auto", settings)[0].name == name, "its own data reads as its kind"
    rows = task.read(settings)
    assert len(rows.train_inputs) == len(rows.train_labels) > 0
    assert len(rows.val_inputs) == len(rows.val_labels) > 0
    label_names = task.label_names(rows, settings)
    model, processor = task.load_model(str(model_dir), label_names, False)
    data = task.encode(rows, processor, model.config, settings)
    pad_id = getattr(processor, "pad_token_id", None) or 0
    assert data.task == name and data.metric in {metric.name for metric in task.metrics}
    assert isinstance(data.train, task.split_class) and len(data.train) == len(rows.train_labels)
    assert len(task.sizes(data.train)) == len(data.train) and min(task.sizes(data.train)) >= 1
    assert task.cache_layout in ("per_token", "fixed")

    # prepared/ keeps a split as JSON: read back, it gives the same batches and cache key
    kept = task.split_class(**json.loads(json.dumps(dataclasses.asdict(data.validation))))
    every = list(range(len(data.validation)))
    for tensor, again in zip(task.collate(data.validation, every, pad_id, CPU).values(),
                             task.collate(kept, every, pad_id, CPU).values(), strict=True):
        assert torch.equal(tensor, again)
    digests = [hashlib.sha256() for _ in range(3)]
    for split, digest in zip((data.validation, kept, data.train), digests, strict=True):
        task.digest_inputs(split, digest)
    assert digests[0].digest() == digests[1].digest() != digests[2].digest()

    batches = task.train_batches(data.train, 8, torch.Generator().manual_seed(0))
    assert sorted(i for batch in batches for i in batch) == list(range(len(data.train)))
    task.start_head(model, data)
    freeze(model, model_depth(model))
    set_train_mode(model, 0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = model(**task.collate(data.train, batches[0], pad_id, CPU)).loss
    loss.backward()
    optimizer.step()
    assert math.isfinite(loss.item())
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters()), "all trained"

    predictions = [None] * len(data.validation)
    with evaluating(model), torch.no_grad():
        for indices, batch in task.eval_batches(data.validation, pad_id, CPU):
            assert "labels" not in batch
            logits = model(**batch).logits
            for i, prediction in zip(indices, task.batch_predictions(logits, data.validation,
                                                                     indices), strict=True):
                predictions[i] = prediction
    assert None not in predictions, "every validation example predicted once"
    labels = data.validation.labels
    for metric in task.metrics:
        low, high = METRIC_RANGES[metric.name]
        assert low <= task.score(metric.name, labels, predictions) <= high, metric
        best = high if metric.direction == MAXIMIZE else low
        assert task.score(metric.name, labels, labels) == pytest.approx(best), "labels score best"
    low, high = METRIC_RANGES[data.metric]
    assert low <= evaluate(model, data, pad_id, CPU) <= high


ADAPTER_PARAMS = TrialParams(1e-2, 1.0, 8, 1, 1, 0.0, 0.0,
                             adapter_params={"lora_rank": 4, "lora_alpha": 8.0})


def train_steps(arch, model, frozen: int, count: int = 2) -> None:
    """AdamW steps on a random batch as a trial takes them (the frozen prefix in eval mode); two,
    since LoRA's B starts at zero and its A moves from the second on."""
    set_train_mode(model, frozen)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(count):
        model(**arch.random_batch(model)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@torch.no_grad()
def logits(arch, model) -> torch.Tensor:
    with evaluating(model):
        return model(**arch.random_batch(model)).logits


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_an_adapter_trains_the_top_blocks_and_keeps_what_training_changed(name, arch, tmp_path):
    """At each depth: the head and the top blocks train, nothing below them (the embeddings at
    most at full depth); what its kept weights hold is the plain model's names and values of
    everything training changed, and they load back into an untouched model, through a trial's
    file, as the trained model. An architecture it cannot train is refused as bad input."""
    adapter = get_adapter(name)
    try:
        adapter.check(arch.build(), "space.yaml")
    except UsageError as refusal:
        assert "space.yaml" in str(refusal)
        return
    untouched = arch.build().state_dict()
    for depth in sorted({0, 1, arch.depth}):
        model = arch.build()
        count = adapter.apply(model, depth, dataclasses.replace(
            ADAPTER_PARAMS, trainable_layers=depth, adapter=name))
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert count == sum(p.numel() for p in model.parameters() if p.requires_grad)
        head = {n for n, _ in model.named_parameters() if n.startswith(arch.head)}
        assert head <= trainable, depth
        blocks = {arch.block_index(n) for n in trainable - head}
        assert blocks - {-1} == set(range(arch.depth - depth, arch.depth)), depth
        assert -1 not in blocks or depth == arch.depth, "embeddings train only at full depth"

        train_steps(arch, model, arch.depth - depth)
        kept = adapter.kept_weights(model)
        plain = plain_state_dict(model)
        assert set(plain) == set(untouched), "the trained model reads as the plain model"
        changed = {n for n, tensor in plain.items() if not torch.equal(tensor, untouched[n])}
        assert changed and changed <= set(kept) <= set(untouched), depth
        for key, tensor in kept.items():
            assert tensor.device == CPU and torch.equal(tensor, plain[key]), key

        save_trial_weights(tmp_path / "trainable.safetensors", kept)
        loaded = arch.build()
        loaded.load_state_dict(load_file(tmp_path / "trainable.safetensors"), strict=False)
        expected = logits(arch, model)
        torch.testing.assert_close(logits(arch, loaded), expected)
        adapter.restore(model, kept)
        assert set(model.state_dict()) == set(untouched), "restored to the plain model"
        torch.testing.assert_close(logits(arch, model), expected)


# The base kinds that read a decoder's next-token distribution: checked on the tiny Llama.
DECODER_KINDS = ("causal_lm", "qa")


def base_check(kind: str, images: bool, folder, request, base_config, task_name: str):
    """(model folder, config) of a base check of `kind` on tiny data of the model's inputs: the
    tiny ResNet's digits; texts for the tiny BERT (with its masked-LM head for masked_lm), or for
    the tiny Llama (its own LM head) for the generative kinds and under causal-lm (a decoder is
    its own base model)."""
    if kind in DECODER_KINDS or task_name == "causal-lm":
        return request.getfixturevalue("tiny_llama_dir"), base_config(kind, folder)
    if images:
        return (request.getfixturevalue("tiny_resnet_dir"),
                BaseTaskConfig(kind, str(request.getfixturevalue("digit_folder")),
                               max_examples=60, check_examples=12))
    model = "tiny_mlm_dir" if kind == "masked_lm" else "tiny_model_dir"
    return request.getfixturevalue(model), base_config(kind, folder)


@pytest.mark.parametrize(("task_name", "kind"), BASE_PAIRS)
def test_a_base_check_keeps_the_untouched_model_whole_and_sees_a_changed_one(
    task_name, kind, task_assets, request, tmp_path, base_config, texts
):
    """Untouched (any new head): retention 1.0, its observations over every unit give the score,
    its paired interval holds 1.0, its preservation distance is 0, the model's modes are left as
    they were. Its encoder perturbed: read, scored lower or higher, and farther away."""
    task = get_task(task_name)
    model_dir, train = task_assets(task_name)
    settings = DataSettings(train=str(train))
    label_names = task.label_names(task.read(settings), settings)
    images = takes_images(task.load_processor(str(model_dir), False))
    model_dir, config = base_check(kind, images, tmp_path, request, base_config, task_name)

    def tuned(seed: int):
        torch.manual_seed(seed)  # another new head each time
        return task.load_model(str(model_dir), label_names, False)

    other, processor = tuned(3)
    model, _ = tuned(4)
    check = build_base_task(config, str(model_dir), processor, 32)
    base = check.score(other, "cpu").value
    assert math.isfinite(base)
    freeze(model, 1)
    set_train_mode(model, model_depth(model) - 1)  # mid-trial: some blocks train, some are frozen
    modes = module_state(model)
    assert retention(base, check.score(model, "cpu").value, check.higher_is_better) == 1.0
    for part, quick in (("quick", True), ("search", False)):
        observed = check.observe(model, "cpu", part)
        every = np.arange(check.units_[part])
        assert check.statistic(observed, every, part) == pytest.approx(
            check.score(model, "cpu", quick).value, rel=1e-6), part
        low, high = paired_interval(check, check.observe(other, "cpu", part), observed, part,
                                    seed=0, resamples=50)
        assert low <= 1.0 <= high, part
    assert module_state(model) == modes, "modes and requires_grad as the caller set them"

    batch = None
    if isinstance(task, Preserving):
        batch = check.preservation_batches(processor, texts(8, seed=7), 32, 4)[0]
        target = check.target(other, batch)
        with evaluating(model):
            near = check.distance(check.reads(model, batch), target).item()
        assert near == pytest.approx(0, abs=1e-6)
    freeze(model, model_depth(model))
    assert check.reads_trained(model), "a model training every layer is checked"
    with torch.no_grad():
        for parameter in model.base_model.parameters():
            parameter.add_(torch.randn_like(parameter) * parameter.std().nan_to_num(0.1))
    assert retention(base, check.score(model, "cpu").value, check.higher_is_better) != 1.0
    if batch is not None:
        with evaluating(model):
            assert check.distance(check.reads(model, batch), target).item() > near
