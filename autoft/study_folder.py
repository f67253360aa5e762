"""A study folder knows whose it is: `autoft-study.json`, written first by the search that claims
the folder, names its study, where the study's storage is and the inputs its trials train on.

Every search and worker checks it before reading the data, so a second study, another storage
(a search that forgot `--storage`) or other data cannot write over the trials and best model of
the first; two searches that start at once on a new name are decided by the claim itself (a
hard link, which only one process can make) before either writes, not by whoever writes last.
Status, report and export read it to say where a study that is not in this folder's study.db
lives.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path

from autoft.config import StudyConfig
from autoft.errors import UsageError
from autoft.files import write_text_whole

IDENTITY = "autoft-study.json"
OWN_DATABASE = "study.db"  # the storage named in an identity when it is the folder's own SQLite


def identity_path(study_dir: Path) -> Path:
    return Path(study_dir) / IDENTITY


def read_identity(study_dir: Path) -> dict | None:
    """The folder's identity; None when it has none or the file is damaged (then rebuilt by
    the next search, from its own checks: the storage still records the inputs)."""
    try:
        identity = json.loads(identity_path(study_dir).read_text())
    except (OSError, ValueError):
        return None
    wanted = {"study", "storage", "inputs"}
    return identity if isinstance(identity, dict) and wanted <= set(identity) else None


def storage_named(config: StudyConfig) -> str:
    """The study's storage as its identity records it: the folder's own SQLite file, or the
    user's URL without its password (storage.redact)."""
    from autoft.storage import redact  # storage imports this module to say where a study lives

    return redact(config.storage) if config.storage else OWN_DATABASE


def check_identity(config: StudyConfig, fingerprint: str) -> None:
    """Refuse, before anything is read or written, a folder whose identity names another
    study, another storage or other inputs."""
    theirs = read_identity(config.study_dir)
    if theirs is not None:
        refuse_other(config, theirs, identity_of(config, fingerprint))


def claim(config: StudyConfig, fingerprint: str) -> None:
    """Make a new folder the study's just before the first write into it (prepared data that
    proved good: a first try refused for a wrong flag claims nothing), or refuse it when
    another search claimed it first for other inputs. A folder from before autoft wrote
    identities, or whose identity is damaged, is left to the storage's and the prepared
    data's own checks, and `remember`ed once they passed."""
    mine = identity_of(config, fingerprint)
    theirs = read_identity(config.study_dir)
    if theirs is None and not _has_study(config.study_dir):
        theirs = _claim_new(config.study_dir, mine)
    if theirs is not None:
        refuse_other(config, theirs, mine)


def remember(config: StudyConfig, fingerprint: str, echo=print) -> None:
    """Write the identity of a folder that passed every check without one (or a damaged one)."""
    path, mine = identity_path(config.study_dir), identity_of(config, fingerprint)
    if read_identity(config.study_dir) == mine:
        return
    if path.exists():
        echo(f"{path} was damaged; written again.")
    write_text_whole(path, json.dumps(mine))


def identity_of(config: StudyConfig, fingerprint: str) -> dict:
    return {"study": config.name, "storage": storage_named(config), "inputs": fingerprint}


def _has_study(folder: Path) -> bool:
    """Whether the folder holds a study's files (an identity, damaged or not, too)."""
    return any((folder / name).exists() for name in (IDENTITY, OWN_DATABASE, "prepared"))


def _claim_new(folder: Path, mine: dict) -> dict | None:
    """Write the identity if no one has (None), else the identity that won the race."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = identity_path(folder).with_name(f"{IDENTITY}.{os.getpid()}.tmp")
    write_text_whole(tmp, json.dumps(mine))
    try:
        os.link(tmp, identity_path(folder))  # fails if it exists: the first claim wins
        return None
    except FileExistsError:
        return read_identity(folder) or mine
    finally:
        tmp.unlink(missing_ok=True)


def refuse_other(config: StudyConfig, theirs: dict, mine: dict) -> None:
    """One sentence for a folder that is another study's, or this study's in another storage
    or on other inputs; nothing is changed."""
    where = f"study folder {config.study_dir}"
    if theirs["study"] != mine["study"]:
        raise UsageError(
            f"The {where} holds study '{theirs['study']}' ({identity_path(config.study_dir)}); "
            f"choose another --study name or --studies-dir; nothing was changed."
        )
    if theirs["storage"] != mine["storage"]:
        raise UsageError(
            f"The {where} holds study '{theirs['study']}', stored in "
            f"{_storage_words(theirs['storage'])}, not {_storage_words(mine['storage'])}; "
            f"{_storage_fix(theirs['storage'])} to go on with it, or choose another --study "
            f"name; nothing was changed."
        )
    if theirs["inputs"] != mine["inputs"]:
        raise UsageError(
            f"The {where} holds study '{theirs['study']}', whose trials trained on other data or "
            f"model settings; give the data and model it was run on to go on with it, or choose "
            f"a new --study name; nothing was changed."
        )


def _storage_words(storage: str) -> str:
    return f"its own {OWN_DATABASE}" if storage == OWN_DATABASE else storage


def _storage_fix(storage: str) -> str:
    if storage == OWN_DATABASE:
        return "drop --storage"
    return f"pass --storage {storage} (with its password, if it has one)"


def storage_elsewhere(study_dir: Path) -> str | None:
    """Where the study of a folder without its own study.db lives, as a fix in words
    (status, report, export without --storage); None when the folder says nothing."""
    identity = read_identity(study_dir)
    if identity is None or identity["storage"] == OWN_DATABASE:
        return None
    return (f"study '{identity['study']}' is stored in {identity['storage']}; "
            f"{_storage_fix(identity['storage'])}")


def trial_folders(study_dir: Path) -> int:
    """How many trials left results (checkpoints, curves) in the folder."""
    trials = Path(study_dir) / "trials"
    return sum(1 for entry in trials.iterdir() if entry.is_dir()) if trials.is_dir() else 0


def check_own_database(config: StudyConfig) -> None:
    """A folder whose trials left results but whose study.db is missing, empty, not SQLite or
    without the study (a bad copy) is refused: a search would start a new study there and
    write over trial 0's results and the best model."""
    if config.storage or not trial_folders(config.study_dir):
        return
    path = config.study_dir / OWN_DATABASE
    damage = _database_damage(path, config.name)
    if damage is None:
        return
    raise UsageError(
        f"{path} {damage}, but {config.study_dir}/trials holds the results of "
        f"{trial_folders(config.study_dir)} trials of study '{config.name}': restore study.db "
        f"from a backup to go on with them, or choose a new --study name; nothing was changed."
    )


def _database_damage(path: Path, name: str) -> str | None:
    """What is wrong with a study's SQLite file, read without writing it; None when it holds
    the study."""
    if not path.is_file():
        return "is missing"
    if path.stat().st_size == 0:
        return "is empty (0 bytes)"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path.resolve()}?mode=ro",
                                                uri=True)) as connection:
            found = connection.execute(
                "SELECT 1 FROM studies WHERE study_name = ?", (name,)).fetchone()
    except sqlite3.DatabaseError as error:
        return f"cannot be read as a study database ({error})"
    return None if found else f"holds no study '{name}'"
