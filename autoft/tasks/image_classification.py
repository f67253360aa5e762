"""image-classification: one class per image, with AutoModelForImageClassification and the model's
image processor. Data: a folder of class folders, a table with an image-path column, or a saved
`datasets` folder with an Image feature (autoft.tasks.images). Labels, splits and metrics are
every classification kind's (autoft.tasks.classification), the read flow every labelled kind's.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForImageClassification

from autoft.data import TargetData
from autoft.errors import UsageError
from autoft.model import loading, with_new_head
from autoft.tasks.base import DataSettings, Rows
from autoft.tasks.classification import Classification
from autoft.tasks.images import (
    ImageSplit,
    augment,
    colour_mode,
    is_image_folder,
    load_image_processor,
    pixel_values,
    pixels_digest,
    read_image_table,
    read_images,
)


class ImageClassification(Classification):
    """Single-label classification of images."""

    name = "image-classification"
    inputs = "image"
    cache_layout = "fixed"
    split_class = ImageSplit
    auto_class = "AutoModelForImageClassification"

    @classmethod
    def detect(cls, settings: DataSettings, model: str) -> str | None:
        """A folder of class folders with images, or a table with one column of images."""
        if is_image_folder(settings.train):
            return "the train path is a folder of class folders holding images"
        try:
            _, _, column = read_image_table(settings.train, "", "train", settings.label_column)
        except UsageError:
            return None
        return f"the column '{column}' of the train table holds images"

    def _read_split(self, source: str, settings: DataSettings, field_name: str, split: str):
        """Images and labels of a folder of class folders or a table with an image column."""
        where = settings.where(field_name)
        images, values = read_images(source, where, settings.label_column, split)
        return images, self.parse_labels(values, settings, where, source)

    def load_model(self, source: str, label_names: list[str], trust_remote_code: bool):
        processor = self.load_processor(source, trust_remote_code)
        with loading(source):
            model = with_new_head(AutoModelForImageClassification, source, label_names,
                                  trust_remote_code)
        return model, processor

    def load_processor(self, source: str, trust_remote_code: bool):
        """The image processor; a model without one (a text model) is refused."""
        try:
            with loading(source):
                return load_image_processor(source, trust_remote_code)
        except UsageError:
            raise UsageError(
                f"Model {source} has no image processor (preprocessor_config.json), so it is not "
                "an image model; give --task image-classification an image classifier (ViT, "
                "ResNet, ConvNeXt, Swin) saved with its processor, or choose another --task."
            ) from None

    def encode(self, rows: Rows, processor, model_config, settings: DataSettings) -> TargetData:
        label_names = self.label_names(rows, settings)
        metric, metric_note = self.choose_metric(settings, rows.train_labels)
        mode = colour_mode(model_config)

        def split(images: list, labels: list, augmented: bool) -> ImageSplit:
            return ImageSplit(images, self.encode_labels(labels, label_names),
                              model_config.name_or_path, mode, augmented)

        notes = rows.notes + [note for note in (metric_note,) if note]
        if settings.augment:
            notes.append("augmentation: each training image flipped and shifted at random; the "
                         "prefix cache is off, since the images change every epoch")
        return TargetData(
            train=split(rows.train_inputs, rows.train_labels, settings.augment),
            validation=split(rows.val_inputs, rows.val_labels, False),
            label_names=label_names,
            metric=metric,
            max_length=None,
            notes=notes,
            task=self.name,
        )

    def collate(self, split: ImageSplit, indices: list[int], pad_id: int,
                device: torch.device) -> dict:
        pixels = pixel_values(split, indices)
        if split.augment:
            pixels = augment(pixels)
        batch = {"pixel_values": pixels,
                 "labels": torch.tensor([split.labels[i] for i in indices])}
        return {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}

    def sizes(self, split: ImageSplit) -> list[int]:
        return [1] * len(split)

    def digest_inputs(self, split: ImageSplit, digest) -> None:
        """Every image as the model sees it (its pixel values), hashed once per process."""
        digest.update(pixels_digest(split).encode())

    def cache_refusal(self, split: ImageSplit) -> str | None:
        if split.augment:
            return "augmentation changes the training images every epoch"
        return None
