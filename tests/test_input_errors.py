"""Bad input ends with one sentence naming the thing and the fix, exit code 2, no traceback, and
no trial started: one test per kind of mistake a user makes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoft.cli import build_parser, main
from autoft.config import data_setting_names, setting_names
from autoft.prepare import DATA_FIELDS
from autoft.space import find_space_file


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def search_args(model: Path, train: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["search", "--model", str(model), "--train", str(train), "--studies-dir",
            str(tmp_path / "studies"), "--study", "bad", "--n-trials", "1", *extra]


def assert_refused(code: int, err: str, *words: str, tmp_path: Path) -> None:
    assert code == 2
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, err
    assert not (tmp_path / "studies" / "bad" / "study.db").exists(), "a trial must not start"


def test_missing_train_file(tiny_model_dir, tmp_path, capsys):
    missing = tmp_path / "nope.csv"
    code, err = run_cli(search_args(tiny_model_dir, missing, tmp_path), capsys)
    assert_refused(code, err, "--train", "nope.csv", "does not exist", tmp_path=tmp_path)


def test_unknown_text_column(tiny_model_dir, tiny_csv, tmp_path, capsys):
    args = search_args(tiny_model_dir, tiny_csv, tmp_path, "--text-column", "review")
    code, err = run_cli(args, capsys)
    assert_refused(code, err, "--text-column", "'review'", "text, label", tmp_path=tmp_path)


def test_label_column_with_one_class(tiny_model_dir, tmp_path, capsys, write_csv):
    rows = [{"text": "good film", "label": "pos"} for _ in range(10)]
    train = write_csv(tmp_path / "one.csv", rows)
    code, err = run_cli(search_args(tiny_model_dir, train, tmp_path), capsys)
    assert_refused(code, err, "only one class", "'pos'", tmp_path=tmp_path)


def test_empty_data(tiny_model_dir, tmp_path, capsys):
    train = tmp_path / "empty.csv"
    train.write_text("text,label\n")
    code, err = run_cli(search_args(tiny_model_dir, train, tmp_path), capsys)
    assert_refused(code, err, "empty.csv", "no rows", tmp_path=tmp_path)


def test_folder_without_model(tiny_csv, tmp_path, capsys):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    code, err = run_cli(search_args(empty, tiny_csv, tmp_path), capsys)
    assert_refused(code, err, "not-a-model", "config.json", tmp_path=tmp_path)


def write_space(tmp_path: Path, **overrides: str) -> Path:
    lines = {
        "learning_rate": "{low: 1.0e-5, high: 1.0e-3, log: true}",
        "head_lr_multiplier": "10",
        "batch_size": "{choices: [16]}",
        "trainable_layers": "{low: 0, high: max}",
        "epochs": "1",
        "weight_decay": "0.0",
        "warmup_ratio": "0.0",
    } | overrides
    path = tmp_path / "space.yaml"
    path.write_text("".join(f"{key}: {value}\n" for key, value in lines.items()))
    return path


def test_reversed_learning_rate_bounds(tiny_model_dir, tiny_csv, tmp_path, capsys):
    space = write_space(tmp_path, learning_rate="{low: 1.0e-3, high: 1.0e-5, log: true}")
    args = search_args(tiny_model_dir, tiny_csv, tmp_path, "--space", str(space))
    code, err = run_cli(args, capsys)
    assert_refused(code, err, "space.yaml", "learning_rate", "swap", tmp_path=tmp_path)


def test_trainable_layers_deeper_than_model(tiny_model_dir, tiny_csv, tmp_path, capsys):
    space = write_space(tmp_path, trainable_layers="{low: 0, high: 12}")
    args = search_args(tiny_model_dir, tiny_csv, tmp_path, "--space", str(space))
    code, err = run_cli(args, capsys)
    assert_refused(code, err, "trainable_layers", "12", "only 2 layers", tmp_path=tmp_path)


def test_unknown_metric(tiny_model_dir, tiny_csv, tmp_path, capsys):
    args = search_args(tiny_model_dir, tiny_csv, tmp_path, "--metric", "auc")
    code, err = run_cli(args, capsys)
    assert_refused(code, err, "--metric", "'auc'", "macro_f1", tmp_path=tmp_path)


def test_unknown_setting_in_study_file(tiny_model_dir, tiny_csv, tmp_path, capsys):
    study_file = tmp_path / "study.yaml"
    study_file.write_text(f"model: {tiny_model_dir}\ntrain: {tiny_csv}\nlearning_rat: 0.1\n")
    code, err = run_cli(["search", str(study_file), "--studies-dir", str(tmp_path / "studies"),
                         "--study", "bad"], capsys)
    assert_refused(code, err, "study.yaml", "learning_rat", "unknown", tmp_path=tmp_path)


@pytest.mark.parametrize("value", ["soon", "-3h"])
def test_bad_timeout(tiny_model_dir, tiny_csv, tmp_path, capsys, value):
    args = search_args(tiny_model_dir, tiny_csv, tmp_path, f"--timeout={value}")
    code, err = run_cli(args, capsys)
    assert_refused(code, err, "--timeout", tmp_path=tmp_path)


@pytest.mark.slow
def test_cli_process_exits_2_without_traceback(tiny_model_dir, tmp_path):
    """The installed entry point, as a user runs it: exit status 2 and one line on stderr."""
    args = search_args(tiny_model_dir, tmp_path / "x.csv", tmp_path)
    done = subprocess.run([sys.executable, "-m", "autoft", *args], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("autoft: --train: data file")
    assert "Traceback" not in done.stderr


def test_a_text_longer_than_the_model_gets_no_transformers_warning_before_the_sentence(
    tiny_model_dir, tmp_path, sentiment_rows, write_csv
):
    """transformers warned "Token indices sequence length is longer ..." while autoft encoded the
    data (it truncates them itself), before autoft's own refusal of a later setting."""
    rows = sentiment_rows(80)
    rows[3]["text"] = " ".join(["good"] * 3000)
    train = write_csv(tmp_path / "long.csv", rows)
    args = search_args(tiny_model_dir, train, tmp_path, "--base-kind", "none",
                       "--eval-every-samples", "1000000")
    done = subprocess.run([sys.executable, "-m", "autoft", *args], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("autoft: --eval-every-samples:"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_validation_label_unseen_in_train(
    tiny_model_dir, tiny_csv, tmp_path, capsys, sentiment_rows, write_csv
):
    rows = sentiment_rows(20)
    rows[0]["label"] = "meh"
    validation = write_csv(tmp_path / "val.csv", rows)
    args = search_args(tiny_model_dir, tiny_csv, tmp_path, "--validation", str(validation))
    code, err = run_cli(args, capsys)
    assert_refused(code, err, "--validation", "'meh'", tmp_path=tmp_path)


def base_args(data: Path) -> list[str]:
    return ["--base-kind", "drift", "--base-data", str(data)]


def test_missing_preservation_file(tiny_model_dir, tiny_csv, tmp_path, capsys):
    args = search_args(tiny_model_dir, tiny_csv, tmp_path, *base_args(tiny_csv),
                       "--base-preserve-data", str(tmp_path / "nope.txt"))
    code, err = run_cli(args, capsys)
    assert_refused(code, err, "--base-preserve-data", "nope.txt", "does not exist",
                   tmp_path=tmp_path)


def test_preservation_file_that_is_a_folder(tiny_model_dir, tiny_csv, tmp_path, capsys):
    """A folder where a file belongs is named as a folder, not as missing."""
    (tmp_path / "texts").mkdir()
    args = search_args(tiny_model_dir, tiny_csv, tmp_path, *base_args(tiny_csv),
                       "--base-preserve-data", str(tmp_path / "texts"))
    code, err = run_cli(args, capsys)
    assert_refused(code, err, "--base-preserve-data", "texts is a folder", "give a file",
                   tmp_path=tmp_path)


def test_empty_preservation_file(tiny_model_dir, tiny_csv, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    study = tmp_path / "study.yaml"
    study.write_text(f"base:\n  kind: drift\n  data: {tiny_csv}\n  preserve_data: {empty}\n")
    args = search_args(tiny_model_dir, tiny_csv, tmp_path, str(study))
    code, err = run_cli(args, capsys)
    assert_refused(code, err, "empty.txt", "is empty", "base.preserve_data", tmp_path=tmp_path)


def test_negative_preserve_weight(tiny_model_dir, tiny_csv, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    quick = find_space_file("quick").read_text()
    space.write_text(quick.replace("choices: [0, 0.3, 1, 3]", "choices: [-1, 0, 1]"))
    code, err = run_cli(search_args(tiny_model_dir, tiny_csv, tmp_path, "--space", str(space)),
                        capsys)
    assert_refused(code, err, "space.yaml", "preserve_weight -1", "0 (off) or more",
                   tmp_path=tmp_path)


ADAPTER_LINES = {
    "adapter": "{choices: [freeze, lora]}",
    "lora_rank": "{low: 4, high: 16, when: {adapter: lora}}",
}


def test_lora_rank_not_positive(tiny_model_dir, tiny_csv, tmp_path, capsys):
    space = write_space(tmp_path, **(ADAPTER_LINES | {"lora_rank": "{low: 0, high: 16}"}))
    args = search_args(tiny_model_dir, tiny_csv, tmp_path, "--space", str(space))
    code, err = run_cli(args, capsys)
    assert_refused(code, err, "space.yaml", "lora_rank", "positive", tmp_path=tmp_path)


def test_unknown_adapter(tiny_model_dir, tiny_csv, tmp_path, capsys):
    space = write_space(tmp_path, adapter="{choices: [freeze, dora]}")
    args = search_args(tiny_model_dir, tiny_csv, tmp_path, "--space", str(space))
    code, err = run_cli(args, capsys)
    assert_refused(code, err, "space.yaml", "adapter", "'dora'", "freeze, lora", tmp_path=tmp_path)


def save_model_without_linear_layers(folder: Path, tokenizer) -> Path:
    """A tiny text classifier whose blocks only scale their input (no linear layer), registered
    with the Auto classes so that autoft loads it as it loads any model folder."""
    import torch
    from torch import nn
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        PretrainedConfig,
        PreTrainedModel,
    )
    from transformers.modeling_outputs import SequenceClassifierOutput

    class ScaleConfig(PretrainedConfig):
        model_type = "autoft-scale-test"

        def __init__(self, vocab_size=32, hidden_size=8, num_hidden_layers=2, **kwargs):
            self.vocab_size, self.hidden_size = vocab_size, hidden_size
            self.num_hidden_layers, self.max_position_embeddings = num_hidden_layers, 32
            self.pad_token_id = 0
            super().__init__(**kwargs)

    class Scale(nn.Module):
        def __init__(self, size: int):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(size))

        def forward(self, hidden):
            return hidden * self.weight

    class ScaleForSequenceClassification(PreTrainedModel):
        config_class = ScaleConfig
        base_model_prefix = ""

        def __init__(self, config):
            super().__init__(config)
            self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
            self.layers = nn.ModuleList(Scale(config.hidden_size) for _ in range(2))
            self.classifier = nn.Linear(config.hidden_size, config.num_labels)
            self.post_init()

        def forward(self, input_ids, attention_mask=None, labels=None, **_):
            hidden = self.embed(input_ids)
            for layer in self.layers:
                hidden = layer(hidden)
            return SequenceClassifierOutput(logits=self.classifier(hidden[:, 0]))

    AutoConfig.register(ScaleConfig.model_type, ScaleConfig, exist_ok=True)
    AutoModelForSequenceClassification.register(
        ScaleConfig, ScaleForSequenceClassification, exist_ok=True
    )
    ScaleForSequenceClassification(ScaleConfig(vocab_size=len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_lora_on_a_model_whose_blocks_have_no_linear_layers(
    tiny_csv, tmp_path, capsys, build_tokenizer
):
    model = save_model_without_linear_layers(tmp_path / "scale-model", build_tokenizer())
    capsys.readouterr()  # the saving's progress bar
    space = write_space(tmp_path, **ADAPTER_LINES)
    args = search_args(model, tiny_csv, tmp_path, "--space", str(space))
    code, err = run_cli(args, capsys)
    assert_refused(code, err, "space.yaml", "adapter lora", "Scale", "no linear layer",
                   "remove lora", tmp_path=tmp_path)


def test_eval_interval_longer_than_the_run(tiny_model_dir, tiny_csv, tmp_path, capsys):
    """320 training rows × the quick space's 2 epochs: an interval of 1,000 never evaluates (every
    trial used to fail with 'The value nan is not acceptable', uncounted, for ever)."""
    args = search_args(tiny_model_dir, tiny_csv, tmp_path, "--space", "quick",
                       "--eval-every-samples", "1000", "--timeout", "30s")
    code, err = run_cli(args, capsys)
    assert_refused(code, err, "--eval-every-samples", "320 training rows × 2 epochs = 640",
                   "at most 640", tmp_path=tmp_path)


def test_more_classes_than_validation_rows(tiny_model_dir, tmp_path, capsys, write_csv):
    rows = [{"text": f"good film {i}", "label": f"c{i % 500}"} for i in range(1000)]
    train = write_csv(tmp_path / "many.csv", rows)
    code, err = run_cli(search_args(tiny_model_dir, train, tmp_path), capsys)
    assert_refused(code, err, "--val-fraction 0.2 holds out 200 of 1000", "500 classes",
                   "from 0.5 to 0.5", "--validation", tmp_path=tmp_path)


def test_val_fraction_too_small_to_stratify(tiny_model_dir, tiny_csv, tmp_path, capsys):
    args = search_args(tiny_model_dir, tiny_csv, tmp_path, "--val-fraction", "0.001")
    code, err = run_cli(args, capsys)
    assert_refused(code, err, "--val-fraction", "holds out 1", "from 0.005 to 0.995",
                   tmp_path=tmp_path)


def test_json_lines_row_without_text(tiny_model_dir, tmp_path, capsys, sentiment_rows):
    """The row would have become the text 'nan'; the message names its line (blank lines
    counted)."""
    lines = [json.dumps(row) for row in sentiment_rows(40)]
    lines[5] = json.dumps({"label": "pos"})
    train = tmp_path / "rows.jsonl"
    train.write_text("\n".join(lines[:3] + [""] + lines[3:]) + "\n")
    code, err = run_cli(search_args(tiny_model_dir, train, tmp_path), capsys)
    assert_refused(code, err, "--text-column", "line 7", "rows.jsonl", "no 'text'",
                   tmp_path=tmp_path)


def test_every_text_empty(tiny_model_dir, tmp_path, capsys, sentiment_rows, write_csv):
    rows = [{"text": " ", "label": row["label"]} for row in sentiment_rows(40)]
    train = write_csv(tmp_path / "blank.csv", rows)
    code, err = run_cli(search_args(tiny_model_dir, train, tmp_path), capsys)
    assert_refused(code, err, "--text-column", "every 'text'", "blank.csv", "is empty",
                   tmp_path=tmp_path)


def test_image_path_that_does_not_exist(digit_folder, tiny_resnet_dir, tmp_path, capsys,
                                        write_csv):
    table = tmp_path / "images.csv"
    files = sorted(str(f) for f in digit_folder.glob("*/*.png"))[:6]
    rows = [{"image": f, "label": Path(f).parent.name} for f in files]
    rows[3]["image"] = str(tmp_path / "gone.png")
    write_csv(table, rows)
    code, err = run_cli(search_args(tiny_resnet_dir, table, tmp_path), capsys)
    assert_refused(code, err, "line 5", "gone.png", "does not exist", tmp_path=tmp_path)


def test_image_path_that_is_not_an_image(digit_folder, tiny_resnet_dir, tmp_path, capsys,
                                         write_csv):
    table = tmp_path / "images.csv"
    files = sorted(str(f) for f in digit_folder.glob("*/*.png"))[:6]
    rows = [{"image": f, "label": Path(f).parent.name} for f in files]
    (tmp_path / "notes.png").write_text("not a picture")
    rows[1]["image"] = "notes.png"  # relative: read from the table's folder
    write_csv(table, rows)
    code, err = run_cli(search_args(tiny_resnet_dir, table, tmp_path), capsys)
    assert_refused(code, err, "line 3", "notes.png", "is not an image", tmp_path=tmp_path)


def test_class_folder_without_images(digit_folder, tiny_resnet_dir, tmp_path, capsys):
    train = tmp_path / "classes"
    for digit in ("0", "1"):
        (train / digit).mkdir(parents=True)
        for f in list((digit_folder / digit).glob("*.png"))[:4]:
            (train / digit / f.name).write_bytes(f.read_bytes())
    (train / "2").mkdir()
    (train / "2" / "readme.txt").write_text("images to come")
    code, err = run_cli(search_args(tiny_resnet_dir, train, tmp_path), capsys)
    assert_refused(code, err, str(train / "2"), "holds no images", tmp_path=tmp_path)


def test_image_task_with_a_text_model(digit_folder, tiny_model_dir, tmp_path, capsys):
    args = search_args(tiny_model_dir, digit_folder, tmp_path, "--task", "image-classification")
    code, err = run_cli(args, capsys)
    assert_refused(code, err, str(tiny_model_dir), "not an image model", tmp_path=tmp_path)


def test_image_task_with_preservation_data(digit_folder, tiny_resnet_dir, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("some base-side text\nanother one\n")
    args = search_args(tiny_resnet_dir, digit_folder, tmp_path, "--base-kind", "drift",
                       "--base-data", str(digit_folder), "--base-preserve-data", str(texts))
    code, err = run_cli(args, capsys)
    assert_refused(code, err, "image-classification has no preservation loss",
                   "--base-preserve-data", tmp_path=tmp_path)


def test_model_folder_without_tokenizer_files(tiny_model_dir, tiny_csv, tmp_path, capsys):
    """transformers would build the config's tokenizer with no vocabulary: every word [UNK]."""
    model = tmp_path / "no-tokenizer"
    model.mkdir()
    for name in ("config.json", "model.safetensors"):
        (model / name).write_bytes((tiny_model_dir / name).read_bytes())
    code, err = run_cli(search_args(model, tiny_csv, tmp_path), capsys)
    assert_refused(code, err, str(model), "no tokenizer files", "hub name", tmp_path=tmp_path)


def test_tokenizer_that_reads_the_texts_as_unknown(tiny_csv, tmp_path, capsys, save_tiny_bert):
    """A tokenizer whose vocabulary is its 5 special tokens: every piece of every text [UNK]."""
    model = save_tiny_bert(tmp_path / "five-tokens", words=[])
    capsys.readouterr()  # the bars of saving it
    code, err = run_cli(search_args(model, tiny_csv, tmp_path), capsys)
    assert_refused(code, err, str(model), "100%", "unknown ([UNK])", "tokenizer files",
                   tmp_path=tmp_path)


def test_image_model_given_text_data(tiny_vit_dir, tiny_csv, tmp_path, capsys):
    code, err = run_cli(search_args(tiny_vit_dir, tiny_csv, tmp_path), capsys)
    assert_refused(code, err, str(tiny_vit_dir), "is an image model with no tokenizer",
                   "--task image-classification", tmp_path=tmp_path)


class MakesFolder:
    """A pickled object that runs os.mkdir when unpickled."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __reduce__(self):
        return os.mkdir, (str(self.folder),)


def test_pickle_checkpoint_that_runs_code(tiny_model_dir, tiny_csv, tmp_path, capsys):
    model = tmp_path / "pickled"
    model.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (model / name).write_bytes((tiny_model_dir / name).read_bytes())
    ran = tmp_path / "the-pickle-ran"
    torch.save({"weights": MakesFolder(ran)}, model / "pytorch_model.bin")
    code, err = run_cli(search_args(model, tiny_csv, tmp_path), capsys)
    assert_refused(code, err, str(model / "pytorch_model.bin"), "refuses pickles that run code",
                   "save_pretrained(safe_serialization=True)", tmp_path=tmp_path)
    assert "weights_only" not in err
    assert not ran.exists()


def test_image_folder_as_a_text_model_base_data(tiny_model_dir, tiny_csv, digit_folder,
                                                tmp_path, capsys):
    args = search_args(tiny_model_dir, tiny_csv, tmp_path, "--base-kind", "drift",
                       "--base-data", str(digit_folder))
    code, err = run_cli(args, capsys)
    assert_refused(code, err, str(digit_folder), "is a folder", "--base-data", "a table",
                   tmp_path=tmp_path)
    assert "does not exist" not in err


def test_csv_header_naming_a_column_twice(tiny_model_dir, tmp_path, capsys):
    """pandas would rename the second 'text' to 'text.1' and the first would be read."""
    train = tmp_path / "twice.csv"
    train.write_text("text,label,text\n" + "good film,pos,bad film\nbad day,neg,good day\n" * 10)
    code, err = run_cli(search_args(tiny_model_dir, train, tmp_path), capsys)
    assert_refused(code, err, "twice.csv", "'text' twice", tmp_path=tmp_path)


def test_json_lines_row_naming_a_key_twice(tiny_model_dir, tmp_path, capsys, sentiment_rows):
    lines = [json.dumps(row) for row in sentiment_rows(20)]
    lines[3] = '{"text": "good film", "label": "pos", "text": "bad film"}'
    train = tmp_path / "twice.jsonl"
    train.write_text("\n".join(lines) + "\n")
    code, err = run_cli(search_args(tiny_model_dir, train, tmp_path), capsys)
    assert_refused(code, err, "twice.jsonl", "line 4", "'text' twice", tmp_path=tmp_path)


def test_json_array_row_naming_a_key_twice(tiny_model_dir, tmp_path, capsys, sentiment_rows):
    """pandas kept the last value silently, where JSON Lines was refused."""
    rows = [json.dumps(row) for row in sentiment_rows(20)]
    rows[3] = '{"text": "good film",\n "label": "pos", "text": "bad film"}'
    train = tmp_path / "twice.json"
    train.write_text("[\n" + ",\n".join(rows) + "\n]\n")
    code, err = run_cli(search_args(tiny_model_dir, train, tmp_path), capsys)
    assert_refused(code, err, "twice.json", "line 5", "'text' twice", tmp_path=tmp_path)


def test_unknown_base_kind_is_said_before_its_missing_data(tiny_model_dir, tiny_csv, tmp_path,
                                                           capsys):
    """A typo once got "needs data" first, and the unknown kind only on the second try."""
    args = search_args(tiny_model_dir, tiny_csv, tmp_path, "--base-kind", "sim")
    code, err = run_cli(args, capsys)
    assert_refused(code, err, "--base-kind: unknown base-task kind 'sim'", "similarity",
                   tmp_path=tmp_path)


def test_storage_whose_driver_is_not_installed(tiny_model_dir, tiny_csv, tmp_path, capsys):
    """Optuna said "Please install appropriate one" and named no package."""
    args = search_args(tiny_model_dir, tiny_csv, tmp_path, "--storage",
                       "postgresql+pg8000://user:secret@localhost/autoft")
    code, err = run_cli(args, capsys)
    assert_refused(code, err, "driver pg8000 is not installed", "pip install 'autoft[postgres]'",
                   tmp_path=tmp_path)
    assert "secret" not in err


def test_study_name_too_long_for_a_folder(tiny_model_dir, tiny_csv, tmp_path, capsys):
    """300 characters were a traceback: File name too long."""
    args = search_args(tiny_model_dir, tiny_csv, tmp_path)
    args[args.index("bad")] = "x" * 300
    code, err = run_cli(args, capsys)
    assert_refused(code, err, "--study: the study name is 300 characters long", tmp_path=tmp_path)
    assert not (tmp_path / "studies").exists()


@pytest.mark.slow
def test_a_model_load_is_quiet_before_the_sentence(tiny_csv, tmp_path, save_tiny_bert):
    """Loading for the classification check once printed a 'Loading weights' bar and a table
    of MISSING keys before autoft's own sentence, which names those keys itself."""
    model = save_tiny_bert(tmp_path / "encoder-only", head=None)
    args = search_args(model, tiny_csv, tmp_path, "--base-kind", "classification",
                       "--base-data", str(tiny_csv))
    done = subprocess.run([sys.executable, "-m", "autoft", *args], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 2
    assert done.stderr.startswith("autoft: ") and len(done.stderr.strip().splitlines()) == 1, \
        done.stderr
    assert "no saved head for 'classification'" in done.stderr
    assert "classifier.weight" in done.stderr


def test_every_setting_is_a_flag_and_every_data_setting_shapes_the_fingerprint():
    """Settings are defined once (the config's dataclasses): the command line passes each on,
    and the prepared data's identity covers every data setting."""
    flags = set(vars(build_parser().parse_args(["search"])))
    file_only = {"base_max_examples", "base_check_examples"}  # tuning a base check, in the file
    assert set(setting_names()) - flags == file_only
    assert set(data_setting_names()) <= set(DATA_FIELDS)
