"""Base-task checks on images: `classification` under the base model's own head on labelled base
images (a folder of class folders or a table), `drift` on any images; the tuned model keeps the
base score exactly while its encoder is untouched and loses it when the encoder changes.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from autoft.config import BaseTaskConfig
from autoft.errors import UsageError
from autoft.forgetting import build_base_task
from autoft.tasks import get_task

TASK = get_task("image-classification")


def tuned_model(model_dir):
    """The base model with a fresh head for another task, as a trial gets it."""
    torch.manual_seed(3)
    model, processor = TASK.load_model(str(model_dir), ["cat", "dog"], False)
    return model, processor


def check(kind: str, data, model_dir, processor):
    config = BaseTaskConfig(kind=kind, data=str(data), max_examples=60, check_examples=12)
    return build_base_task(config, str(model_dir), processor, 0)


@pytest.mark.parametrize("kind", ["classification", "drift"])
def test_an_untouched_encoder_keeps_the_base_score_and_a_changed_one_does_not(
    kind, digit_folder, tiny_resnet_dir
) -> None:
    model, processor = tuned_model(tiny_resnet_dir)
    task = check(kind, digit_folder, tiny_resnet_dir, processor)
    base = task.score(model, "cpu")
    assert task.reads_trained(model)
    if kind == "drift":  # the untouched encoder is its own reference, on the quick slice too
        assert base.value == pytest.approx(1.0)
        assert task.score(model, "cpu", quick=True).value == pytest.approx(1.0)
    with torch.no_grad():
        for parameter in model.base_model.encoder.parameters():
            parameter.add_(torch.randn_like(parameter) * parameter.std().nan_to_num(0.1))
    assert task.score(model, "cpu").value != base.value


def test_classification_reads_the_original_head_on_labelled_images(
    digit_folder, tiny_resnet_dir
) -> None:
    """The score is the base model's own accuracy on the base images, whatever the new head."""
    model, processor = tuned_model(tiny_resnet_dir)
    files = sorted(digit_folder.glob("*/*.png"))
    table = digit_folder / "base.csv"
    pd.DataFrame({"image": [str(f.relative_to(digit_folder)) for f in files],
                  "label": [f.parent.name for f in files]}).to_csv(table, index=False)
    from_folder = check("classification", digit_folder, tiny_resnet_dir, processor)
    from_table = check("classification", table, tiny_resnet_dir, processor)
    original = from_folder.original_
    score = from_folder.score(model, "cpu").value
    assert score == from_table.score(model, "cpu").value
    expected = torch.cat([original(**b).logits.argmax(-1) for b in from_folder.batches_["search"]])
    right = (expected == from_folder.labels_["search"]).double().mean()
    assert score == pytest.approx(float(right))


def test_base_images_with_labels_the_head_does_not_know_are_refused(
    tmp_path, digit_folder, tiny_resnet_dir
) -> None:
    model, processor = tuned_model(tiny_resnet_dir)
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "a.png").write_bytes(next(digit_folder.glob("0/*.png")).read_bytes())
    with pytest.raises(UsageError, match="label '7' is not one of the base model's labels"):
        check("classification", tmp_path, tiny_resnet_dir, processor)
