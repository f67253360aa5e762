"""A real image run, pre-trained on one real set and tuned on another (split MNIST): the tiny
ResNet that pretrain_image.py trains on the digits 0-4 is fine-tuned on the digits 5-9 by an
autoft study whose base check is `classification` under the model's original head on held-out
digits 0-4 it never trained on, and by plain full fine-tuning (every layer, one fixed config) for
comparison. One table: the pre-trained model's accuracy on its own set; each tuned model's score
on the new set (validation, as the search saw it, and a test split no study sees) and what it
kept of the old set (accuracy of the original head fed by the tuned body, on held-out old digits
no check read: autoft's audit).

    python benchmarks/image_study.py [--out DIR] [--per-class 500] [--n-trials 8]
        [--min-retention 0.9] [--epochs 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForImageClassification

sys.path.insert(0, str(Path(__file__).parent))
from pretrain_image import accuracy, load_folder, pretrain, processor, write_digits  # noqa: E402

from autoft.cli import main as autoft_main  # noqa: E402

# What a small CNN wants: larger learning rates than a transformer's.
SEARCH_SPACE = {
    "learning_rate": {"low": 1.0e-4, "high": 1.0e-2, "log": True, "default": 1.0e-3},
    "head_lr_multiplier": {"low": 1, "high": 10, "log": True, "default": 3},
    "batch_size": {"choices": [32, 64], "default": 32},
    "trainable_layers": {"low": 0, "high": "max", "default": "half"},
    "weight_decay": {"value": 0.01},
    "warmup_ratio": {"value": 0.06},
    "interpolation_mixes": [0.25, 0.5, 0.75],
    "starts": [
        {"trainable_layers": 1, "learning_rate": 3.0e-3},
        {"trainable_layers": "max", "learning_rate": 1.0e-3},
        {"trainable_layers": 0, "learning_rate": 1.0e-2, "head_lr_multiplier": 1},
    ],
}
# Plain full fine-tuning: every layer trains, one config, no forgetting bar.
FULL_SPACE = {
    "learning_rate": {"value": 1.0e-3},
    "head_lr_multiplier": {"value": 1},
    "batch_size": {"value": 32},
    "trainable_layers": {"value": "max"},
    "weight_decay": {"value": 0.01},
    "warmup_ratio": {"value": 0.06},
}


def run_study(name: str, space: dict, folders: dict, out: Path, args, n_trials: int,
              min_retention: float) -> dict:
    """One autoft search from the command line; returns its summary.json."""
    space = {**space, "epochs": {"value": args.epochs}}
    space_file = out / f"{name}.yaml"
    space_file.write_text(yaml.safe_dump(space, sort_keys=False))
    code = autoft_main([
        "search", "--model", str(out / "model"), "--train", str(folders["new_train"]),
        "--task", "image-classification", "--space", str(space_file),
        "--n-trials", str(n_trials), "--seed", str(args.seed), "--devices", "cpu",
        "--study", name, "--studies-dir", str(out / "studies"),
        "--base-kind", "classification", "--base-data", str(folders["old_heldout"]),
        "--min-retention", str(min_retention),
    ])
    if code != 0:
        raise SystemExit(f"autoft search for {name} ended with exit code {code}")
    return json.loads((out / "studies" / name / "summary.json").read_text())


def test_split_accuracy(model_dir: Path, folder: Path) -> float:
    """The exported model's accuracy on a folder of class folders (its labels are the digits)."""
    model = AutoModelForImageClassification.from_pretrained(model_dir)
    pixels, digits = load_folder(folder, processor())
    ids = [model.config.label2id[str(int(d))] for d in digits]
    return accuracy(model, pixels, torch.tensor(ids))


def row(label: str, summary: dict, test: float, seconds: float) -> str:
    best = summary["best"]
    audit = best.get("audit") or {}
    return (f"| {label} | {best['value']:.3f} | {test:.3f} | {audit.get('score', float('nan')):.3f}"
            f" | {audit.get('retention', float('nan')):.1%} | {summary['counts']['complete']} |"
            f" {seconds:.0f} s |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_image"))
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--n-trials", type=int, default=8)
    parser.add_argument("--min-retention", type=float, default=0.9)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="a 2-block model, for the test")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    folders = write_digits(args.out, args.per_class, args.seed)
    own = pretrain(folders, args.out, args.pretrain_epochs, args.seed, args.tiny)
    print(f"pre-trained in {time.perf_counter() - started:.0f} s")
    results = []
    for name, space, trials, bar in (("search", SEARCH_SPACE, args.n_trials, args.min_retention),
                                     ("full", FULL_SPACE, 1, 0.0)):
        began = time.perf_counter()
        summary = run_study(name, space, folders, args.out, args, trials, bar)
        test = test_split_accuracy(args.out / "studies" / name / "best_model", folders["new_test"])
        results.append((name, summary, test, time.perf_counter() - began))
    base = results[0][1]["base"]
    held = len(list(folders["old_heldout"].glob("*/*.png")))
    print(f"\nPre-trained on digits 0-4: accuracy {own:.3f} on its {held} held-out digits (the "
          f"check's base score {base['score']:.3f}, its audit part {base['audit_score']:.3f}).\n")
    print("| fine-tuned on digits 5-9 | new: validation | new: test | old: accuracy (audit) "
          "| old: retention | trials | time |")
    print("|---|---|---|---|---|---|---|")
    labels = {"search": f"autoft best (bar {args.min_retention:.0%})",
              "full": "plain full fine-tuning"}
    for name, summary, test, seconds in results:
        print(row(labels[name], summary, test, seconds))
    best = results[0][1]["best"]
    print(f"\nautoft's best config: {best['params']}")


if __name__ == "__main__":
    main()
