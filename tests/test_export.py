"""Tests for autoft.export: any trial (the best, or a pruned one) saved as a Hugging Face folder
that loads on its own and predicts exactly as the trial's weights do, with a model card."""

import re
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from autoft.cli import main
from autoft.errors import UsageError
from autoft.export import export_trial, load_trial_model
from autoft.record import TrialRecord
from autoft.tasks import recorded_task
from autoft.trials import best_feasible

TEXTS = ["the film was good", "awful food", "very nasty show", "a lovely day"]


def logits(model, tokenizer) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits


def test_exported_best_trial_predicts_like_its_weights(tiny_study, tmp_path: Path) -> None:
    study, folder = tiny_study
    best = best_feasible(study)
    assert main(["export", "--study", "tiny", "--studies-dir", str(folder.parent),
                 "--trial", str(best.number), str(tmp_path / "best")]) == 0
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "best")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "best")
    attrs = study.user_attrs
    expected, expected_tokenizer = load_trial_model(recorded_task(attrs), attrs["model"],
                                                    attrs["label_names"], best)
    torch.testing.assert_close(logits(exported, tokenizer), logits(expected, expected_tokenizer))
    assert exported.config.id2label == dict(enumerate(attrs["label_names"]))
    card = (tmp_path / "best" / "README.md").read_text()
    assert f"trial {best.number}" in card
    assert f"{best.value:.4f}" in card
    assert re.search(r"on train.csv \(\d+ training and \d+ validation examples", card)
    assert "learning rate" in card
    # the study named no base task, so autoft's default check measured it
    assert "Retention of the base model's ranking skill" in card


def test_export_of_a_pruned_trial_says_where_it_stopped(tiny_study, tmp_path: Path) -> None:
    study, _ = tiny_study
    pruned = next(t for t in study.get_trials() if t.state == TrialState.PRUNED)
    out = export_trial(study, pruned.number, tmp_path / "pruned")
    exported = AutoModelForSequenceClassification.from_pretrained(out)
    base, tokenizer = load_trial_model(
        recorded_task(study.user_attrs), study.user_attrs["model"],
        study.user_attrs["label_names"], pruned
    )
    torch.testing.assert_close(logits(exported, tokenizer), logits(base, tokenizer))
    card = (out / "README.md").read_text()
    assert "pruned after 1 evaluation" in card
    quick = TrialRecord.of(pruned).quick_retention[0]  # its kept weights' check, the one it had
    assert (f"Retention of base-task skill: {quick:.1%} on the quick check of these weights "
            f"(the trial stopped before its full check; the study's bar was 95%)") in card
    assert f"{pruned.user_attrs['best_value']:.4f}" in card


def test_export_without_a_best_trial_or_with_an_unknown_trial_is_a_usage_error(
    tiny_study, tmp_path: Path
) -> None:
    study, _ = tiny_study
    with pytest.raises(UsageError, match="has no trial 99"):
        export_trial(study, 99, tmp_path / "x")


def export_args(folder: Path, out: Path, *flags: str) -> list[str]:
    return ["export", "--study", "tiny", "--studies-dir", str(folder.parent), *flags, str(out)]


def test_export_refuses_a_folder_of_other_files_unless_told_to_overwrite(
    tiny_study, tmp_path: Path, capsys
) -> None:
    _, folder = tiny_study
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(export_args(folder, out)) == 2
    assert "not an export of study 'tiny'" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert main(export_args(folder, out, "--overwrite")) == 0
    assert not (out / "notes.txt").exists() and (out / "config.json").is_file()


def test_export_never_writes_over_the_studys_model_data_or_folder(
    tiny_study, tmp_path: Path, capsys
) -> None:
    study, folder = tiny_study
    model = Path(study.user_attrs["model"])
    data = Path(study.user_attrs["config"]["train"]).parent
    for out, what in [(model, "model"), (model / "sub", "model"), (data, "training data"),
                      (folder, "own folder"), (folder.parent, "own folder")]:
        before = sorted(p.name for p in out.parent.rglob("*"))
        assert main(export_args(folder, out, "--overwrite")) == 2, out
        error = capsys.readouterr().err
        assert f"Cannot export into {out}" in error and what in error, error
        assert sorted(p.name for p in out.parent.rglob("*")) == before


def test_export_replaces_an_earlier_export_of_its_study_whole(tiny_study, tmp_path: Path) -> None:
    study, folder = tiny_study
    first, second = [t.number for t in study.get_trials() if t.state == TrialState.COMPLETE][:2]
    out = tmp_path / "model"
    assert main(export_args(folder, out, "--trial", str(first))) == 0
    assert main(export_args(folder, out, "--trial", str(second))) == 0
    assert f"trial {second}" in (out / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary sibling


def test_export_on_a_full_disk_keeps_the_earlier_export_and_says_so(
    tiny_study, small_disk, fill_disk, capsys
) -> None:
    study, folder = tiny_study
    first, second = [t.number for t in study.get_trials() if t.state == TrialState.COMPLETE][:2]
    disk = small_disk("2m")
    out = disk / "model"
    assert main(export_args(folder, out, "--trial", str(first))) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    fill_disk(disk)
    assert main(export_args(folder, out, "--trial", str(second))) == 3
    error = capsys.readouterr().err
    assert error.startswith("autoft: could not write") and "the disk is full" in error, error
    assert "autoft report --study tiny" in error and len(error.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in disk.iterdir()) == ["filler", "model"]


def test_the_model_card_carries_the_hubs_metadata(tiny_study, tmp_path: Path) -> None:
    """README.md is a Hugging Face model card: metadata the Hub reads above the same text; the
    tiny model is a local folder, so no base_model is claimed."""
    from huggingface_hub import ModelCard

    study, _ = tiny_study
    out = export_trial(study, None, tmp_path / "card")
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-classification"
    assert card.data.tags == ["autoft", "text-classification"]
    assert card.data.base_model is None
    assert card.text.startswith(f"# autoft study 'tiny', trial {best_feasible(study).number}")


def test_the_model_card_gives_precision_and_recall_beside_the_score(tiny_study, tmp_path):
    study, _ = tiny_study
    best = best_feasible(study)
    details = TrialRecord.of(best).score_details
    card = (export_trial(study, None, tmp_path / "card") / "README.md").read_text()
    assert (f"- Validation precision {details['precision']:.4f}, recall "
            f"{details['recall']:.4f} (macro average)") in card
    table = card.split("## Per class (validation)")[1]
    for name, scores in details["per_label"].items():
        assert (f"| {name} | {scores['precision']:.4f} | {scores['recall']:.4f} | "
                f"{scores['f1']:.4f} | {scores['support']} |") in table
