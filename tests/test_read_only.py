"""A folder this process cannot write, made real with a read-only bind mount: a search refuses
it before anything runs; an archived (read-only) study can still be inspected, reported on
screen and exported, without a start lock or a write."""

from __future__ import annotations

import shutil
from pathlib import Path

from transformers import AutoModelForSequenceClassification

from autoft.cli import main


def test_a_search_into_a_read_only_folder_refuses_before_anything_runs(
    tiny_model_dir, tiny_csv, tmp_path, read_only, write_space, capsys
) -> None:
    space = write_space(tmp_path / "space.yaml", epochs=1)
    studies = tmp_path / "studies"
    (studies / "kept").mkdir(parents=True)
    read_only(studies)
    for name in ("new", "kept"):
        args = ["search", "--model", str(tiny_model_dir), "--train", str(tiny_csv), "--space",
                str(space), "--n-trials", "1", "--study", name, "--studies-dir", str(studies)]
        assert main(args) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1, error
        assert error.startswith(f"autoft: Cannot write in {studies.resolve()}"), error
        assert "pass --studies-dir a writable folder" in error
    assert [p.name for p in studies.iterdir()] == ["kept"]


def archived(tiny_study, tmp_path: Path, read_only) -> tuple[Path, bytes]:
    """A copy of the tiny study in a read-only folder, and its storage's bytes."""
    _, folder = tiny_study
    studies = tmp_path / "archive"
    shutil.copytree(folder, studies / "tiny", ignore=shutil.ignore_patterns("*start-lock"))
    read_only(studies)
    return studies, (studies / "tiny" / "study.db").read_bytes()


def test_a_read_only_study_shows_its_status_as_stored(tiny_study, tmp_path, read_only,
                                                       capsys) -> None:
    studies, stored = archived(tiny_study, tmp_path, read_only)
    assert main(["status", "--study", "tiny", "--studies-dir", str(studies)]) == 0
    out = capsys.readouterr().out
    assert "read-only here: shown as stored" in out and "Study 'tiny': " in out, out
    assert (studies / "tiny" / "study.db").read_bytes() == stored
    assert not list((studies / "tiny").glob("*start-lock"))


def test_a_read_only_study_exports_to_a_writable_folder(tiny_study, tmp_path, read_only) -> None:
    studies, stored = archived(tiny_study, tmp_path, read_only)
    out = tmp_path / "model"
    assert main(["export", "--study", "tiny", "--studies-dir", str(studies), str(out)]) == 0
    assert AutoModelForSequenceClassification.from_pretrained(out).config.num_labels == 2
    assert (studies / "tiny" / "study.db").read_bytes() == stored


def test_a_read_only_study_reports_on_screen_and_says_why_no_files(tiny_study, tmp_path,
                                                                    read_only, capsys) -> None:
    studies, _ = archived(tiny_study, tmp_path, read_only)
    assert main(["report", "--study", "tiny", "--studies-dir", str(studies)]) == 2
    captured = capsys.readouterr()
    assert "Study 'tiny': " in captured.out
    error = captured.err.strip()
    assert error.startswith(f"autoft: Cannot write the report in {studies / 'tiny'} "
                            "(Read-only file system)"), error
    assert len(error.splitlines()) == 1


def test_an_export_into_a_read_only_folder_is_refused_in_one_sentence(
    tiny_study, tmp_path, read_only, capsys
) -> None:
    _, folder = tiny_study
    shelf = tmp_path / "shelf"
    (shelf / "empty").mkdir(parents=True)
    read_only(shelf)
    for out in (shelf / "empty", shelf / "new"):
        assert main(["export", "--study", "tiny", "--studies-dir", str(folder.parent),
                     str(out)]) == 2
        error = capsys.readouterr().err.strip()
        assert error == (f"autoft: Cannot export into {out}: {shelf} is read-only to this "
                         "user; choose a folder you can write."), error
