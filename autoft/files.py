"""Writing files and folders whole: into a temporary sibling that is renamed into place, or
removed when the write fails, so nothing half-written is ever found under the real name; and the
file lock that lets one process of this machine at a time do something (`file_lock`).

A write that fails for a full disk raises OSError(ENOSPC) naming the file it was writing; a
command, or autoft.search, turns that into one sentence (full_disk_said).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock

from autoft.errors import NothingToShow

FULL = (errno.ENOSPC, errno.EDQUOT)
SQLITE_FULL = "database or disk is full"


def is_disk_full(error: BaseException | None) -> bool:
    """An error of a write to a full disk (or quota), or one raised while handling it: Optuna,
    whose tell of a trial failed on a full study.db, raises its own "Should not reach" from the
    cleanup that followed (a 60-line traceback, the trial left running)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if _full(error):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _full(error: BaseException) -> bool:
    """An OSError(ENOSPC), safetensors' error, which carries Rust's "(os error 28)" in its
    message, or SQLite's SQLITE_FULL (raised by sqlite3, or wrapped by SQLAlchemy), which is no
    OSError either."""
    if isinstance(error, OSError):
        return error.errno in FULL
    return (any(f"(os error {code})" in str(error) for code in FULL)
            or SQLITE_FULL in str(error))


@contextlib.contextmanager
def naming_the_file(path: Path) -> Iterator[None]:
    """A full disk's error as OSError(ENOSPC) naming `path`: Python's error from a write
    names no file, and safetensors' is no OSError."""
    try:
        yield
    except Exception as error:
        if is_disk_full(error):  # named by the file it becomes, not its temporary sibling
            code = error.errno if isinstance(error, OSError) else errno.ENOSPC
            raise OSError(code, os.strerror(code), str(path)) from error
        raise


def disk_full_sentence(error: Exception, study: str) -> str:
    """What a full disk stopped, and how to get it once there is room: the trials are in the
    storage, so only what is written from them is missing. SQLite's error names no file: it is
    the study's storage."""
    where = getattr(error, "filename", None) or "the study's storage"
    reason = getattr(error, "strerror", None) or SQLITE_FULL
    return (
        f"could not write {where}: the disk is full ({reason}); every completed trial "
        f"is kept in the study's storage, so once space is freed `autoft report --study "
        f"{study}` (or the same command again) writes it."
    )


@contextlib.contextmanager
def full_disk_said(study: str) -> Iterator[None]:
    """A full disk during a command on `study` (an OSError, or SQLite's error through
    SQLAlchemy) ends in NothingToShow with one sentence instead of a traceback."""
    try:
        yield
    except Exception as error:
        if not is_disk_full(error):
            raise
        raise NothingToShow(disk_full_sentence(error, study)) from None


def unwritable_folder(folder: Path) -> Path | None:
    """The folder, or the nearest one above it that exists, when this process cannot write in
    it (read-only file system, permissions); None when it can."""
    folder = Path(folder).resolve()
    while not folder.exists():
        folder = folder.parent
    return None if os.access(folder, os.W_OK) else folder


def write_whole(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` writes the file's content to a temporary sibling, renamed to `path` once
    whole; on any failure the sibling is removed. Several processes may write one file at once."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with naming_the_file(path):
            write(tmp)
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_whole(path: Path, text: str) -> None:
    write_whole(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def replace_folder(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` fills a new temporary sibling folder, which then takes `path`'s place (the
    old folder, if any, is moved aside first and removed after). An interrupted or failed write
    leaves the old folder as it was, or, between the two renames, no folder: never a
    half-written one under the real name."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with naming_the_file(path):
            tmp.mkdir(parents=True)
            write(tmp)
            if path.exists():
                path.rename(old)
            tmp.rename(path)
    except BaseException:
        if old.exists() and not path.exists():
            old.rename(path)  # the swap failed: the earlier folder stays
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def file_lock(path: Path | str) -> FileLock:
    """An exclusive lock between this machine's processes, held on the file at `path` (made, with
    its folder, when missing) while in its `with` block: filelock's flock, which the kernel frees
    when its holder dies, even by kill -9; a second process waits for it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path)
