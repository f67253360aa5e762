"""What image kinds share: images read from a folder of class folders, a table (CSV, JSON Lines,
Parquet) with an image-path column, or a saved `datasets` folder with an Image feature, each
checked to open before any trial; pixel values made by the model's image processor, one shape for
every image (so batches need no padding and the prefix cache stores one block per image).
"""

from __future__ import annotations

import hashlib
import io
import weakref
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from PIL import Image, UnidentifiedImageError
from torch.nn import functional
from transformers import AutoImageProcessor

from autoft.data import column, read_table, row_name
from autoft.errors import UsageError
from autoft.model import quiet_transformers

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_PIXEL_BYTES = 2**30  # processed images one process keeps in memory, per split
SHIFT_FRACTION = 0.1  # augmentation: the largest shift, as a fraction of the image side


@dataclass(frozen=True, eq=False)
class ImageSplit:
    """One split: where each image is (a file path, or [saved datasets folder, split, row] for
    an image stored in a table), its label, and the model folder or hub name whose image
    processor turns it into pixel values, with the colour mode the model takes; whether its
    images are augmented in training."""

    images: list
    labels: list
    processor: str
    mode: str = "RGB"
    augment: bool = False  # training images flipped and shifted at random (autoft --augment)

    def __len__(self) -> int:
        return len(self.labels)


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def is_image_folder(source: str) -> bool:
    """A folder of class folders holding image files (not a saved `datasets` folder)."""
    path = Path(source)
    if not path.is_dir() or any((path / n).is_file() for n in ("dataset_info.json", "state.json")):
        return False
    return any(
        is_image_file(file) for folder in path.iterdir() if folder.is_dir()
        for file in folder.iterdir()
    )


def read_image_folder(source: str, where: str) -> tuple[list[str], list[str]]:
    """(image paths, class names) of a folder with one sub-folder per class, sorted; a class
    folder without images is refused (its class could never be learned)."""
    images, labels = [], []
    for folder in sorted(p for p in Path(source).iterdir() if p.is_dir()
                         and not p.name.startswith(".")):
        files = sorted(f for f in folder.iterdir() if is_image_file(f))
        if not files:
            raise UsageError(
                f"{where}: class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                "add images of that class or remove the folder."
            )
        images += [str(file) for file in files]
        labels += [folder.name] * len(files)
    return images, labels


def read_image_table(source: str, where: str, split: str, label_column: str | None):
    """(image references, raw labels, image column) of a table: its one image column, an Image
    feature or strings ending in an image suffix (relative paths: from the table's folder);
    labels None where no label column is asked for."""
    table = read_table(source, where, split)
    labels = label_column and column(table, label_column, where + " / label column", source)
    name = _image_column(table, label_column, where, source)
    if isinstance(table.features[name], datasets.Image):
        return [[str(Path(source).resolve()), split, i] for i in range(len(table))], labels, name
    folder = Path(source).resolve().parent
    return [str(folder / str(value)) for value in table[name]], labels, name


def _image_column(table, label_column: str | None, where: str, source: str) -> str:
    """The column holding the images: an Image feature, else the one column whose first values
    all name image files."""
    found = [name for name, kind in table.features.items() if isinstance(kind, datasets.Image)]
    if not found:
        head = table.select(range(min(len(table), 20)))
        found = [
            name for name in table.column_names if name != label_column and all(
                isinstance(v, str) and v.lower().endswith(IMAGE_SUFFIXES) for v in head[name])
        ]
    if len(found) != 1:
        which = "no column" if not found else f"several columns ({', '.join(found)})"
        raise UsageError(
            f"{where}: {source} has {which} of image paths; give it one column whose values are "
            "image files (.png, .jpg, ...) or a datasets Image feature."
        )
    return found[0]


def check_images(images: list, where: str, source: str) -> None:
    """Every image opens, before any trial: a missing or unreadable one is refused by its row."""
    for index, ref in enumerate(images):
        try:
            with open_image(ref) as image:
                image.verify()
            continue
        except FileNotFoundError:
            problem = "does not exist"
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            problem = "is not an image Pillow can read"
        shown = ref if isinstance(ref, str) else f"row {ref[2] + 1} of {ref[0]}"
        raise UsageError(
            f"{where}: the image of {row_name(source, index)} of {source} ({shown}) {problem}; "
            "fix the path (relative paths are read from the table's folder) or drop that row."
        )


_TABLES: dict[tuple[str, str], tuple[datasets.Dataset, str]] = {}


def open_image(ref) -> Image.Image:
    """The image behind a reference, opened with Pillow (its pixels load on first use)."""
    if isinstance(ref, str):
        return Image.open(ref)
    folder, split, row = ref
    if (folder, split) not in _TABLES:
        table = datasets.load_from_disk(folder)
        if isinstance(table, datasets.DatasetDict):
            table = table[split]
        name = next(n for n, kind in table.features.items() if isinstance(kind, datasets.Image))
        _TABLES[folder, split] = table.cast_column(name, datasets.Image(decode=False)), name
    table, name = _TABLES[folder, split]
    stored = table[row][name]
    return Image.open(io.BytesIO(stored["bytes"]) if stored.get("bytes") else stored["path"])


def load_image_processor(source: str, trust_remote_code: bool = False):
    """The model's image processor; without torchvision transformers falls back to the Pillow
    one and warns each time, which is expected here, so hidden."""
    with quiet_transformers():
        return AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)


_PROCESSORS: dict[str, object] = {}
_PIXELS: weakref.WeakKeyDictionary[ImageSplit, dict[int, torch.Tensor]] = (
    weakref.WeakKeyDictionary()
)


def colour_mode(model_config) -> str:
    """The Pillow mode of the images a model takes: grayscale for one channel, else RGB."""
    return "L" if getattr(model_config, "num_channels", 3) == 1 else "RGB"


def read_images(source: str, where: str, label_column: str | None, split: str = "train"):
    """(image references, label values or None) of a folder of class folders (labels: the
    folder names) or a table with an image column, every image checked to open."""
    if is_image_folder(source):
        images, labels = read_image_folder(source, where)
    else:
        images, labels, _ = read_image_table(source, where, split, label_column)
    check_images(images, where, source)
    return images, labels


def processed(processor, images: list, mode: str = "RGB"):
    """The model's inputs (a BatchFeature with `pixel_values`) for the images behind `images`,
    converted to the colour mode the model takes."""
    opened = []
    for ref in images:
        with open_image(ref) as image:
            opened.append(image.convert(mode))
    return processor(images=opened, return_tensors="pt")


def pixel_values(split: ImageSplit, indices: list[int]) -> torch.Tensor:
    """The processed images `indices` of `split`, stacked; each image is processed once per
    process and kept while the split's memory stays under MAX_PIXEL_BYTES."""
    kept = _PIXELS.setdefault(split, {})
    missing = [i for i in indices if i not in kept]
    if missing:
        if split.processor not in _PROCESSORS:
            _PROCESSORS[split.processor] = load_image_processor(split.processor)
        made = processed(_PROCESSORS[split.processor], [split.images[i] for i in missing],
                         split.mode)["pixel_values"]
        room = MAX_PIXEL_BYTES - sum(t.nbytes for t in kept.values())
        fresh = dict(zip(missing, made, strict=True))
        if room >= made.nbytes:
            kept.update(fresh)
        return torch.stack([kept[i] if i in kept else fresh[i] for i in indices])
    return torch.stack([kept[i] for i in indices])


_DIGESTS: weakref.WeakKeyDictionary[ImageSplit, str] = weakref.WeakKeyDictionary()
DIGEST_BATCH = 256


def pixels_digest(split: ImageSplit) -> str:
    """SHA-256 of every image of `split` as the model sees it (its pixel values), computed once
    per process: the prefix cache's key asks for it at every trial and depth."""
    if split not in _DIGESTS:
        digest = hashlib.sha256()
        for start in range(0, len(split), DIGEST_BATCH):
            indices = list(range(start, min(start + DIGEST_BATCH, len(split))))
            digest.update(pixel_values(split, indices).numpy().tobytes())
        _DIGESTS[split] = digest.hexdigest()
    return _DIGESTS[split]


def augment(pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Light augmentation of a batch: each image flipped left-right with chance 1/2 and shifted
    by up to SHIFT_FRACTION of its side (edges repeated), drawn from `generator` (default: torch's
    global one, which the trial seeds)."""
    count, _, height, width = pixels.shape
    pad_y, pad_x = max(1, round(height * SHIFT_FRACTION)), max(1, round(width * SHIFT_FRACTION))
    padded = functional.pad(pixels, (pad_x, pad_x, pad_y, pad_y), mode="replicate")
    flips = torch.rand(count, generator=generator) < 0.5
    ys = torch.randint(0, 2 * pad_y + 1, (count,), generator=generator)
    xs = torch.randint(0, 2 * pad_x + 1, (count,), generator=generator)
    out = torch.stack([
        padded[i, :, ys[i] : ys[i] + height, xs[i] : xs[i] + width] for i in range(count)
    ])
    out[flips] = out[flips].flip(-1)
    return out
