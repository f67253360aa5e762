"""Where a study lives: the storage URL (SQLite in the study folder, or the user's PostgreSQL),
opening it with heartbeats, the file lock beside a SQLite file, the sampler and pruner a study is
opened with, and the config recorded in the storage for workers and reports; the log settings of
a process that opens one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import inspect
import logging
import os
import warnings
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import optuna
from filelock import FileLock
from optuna.storages import RDBStorage
from sqlalchemy import text
from sqlalchemy.engine import make_url

from autoft.config import BaseTaskConfig, StudyConfig
from autoft.errors import UsageError
from autoft.files import file_lock, unwritable_folder
from autoft.sampler import policies
from autoft.schedule import run_stale_again
from autoft.signals import Stop
from autoft.study_folder import storage_elsewhere

log = logging.getLogger("autoft")

# A worker's running trial writes a heartbeat this often; one silent for GRACE_SECONDS (two
# heartbeats, Optuna's own default) is stale and its config runs again. AUTOFT_HEARTBEAT_SECONDS
# shortens both, so tests of killed workers take seconds.
HEARTBEAT_SECONDS = int(os.environ.get("AUTOFT_HEARTBEAT_SECONDS", "30"))
GRACE_SECONDS = 2 * HEARTBEAT_SECONDS


def redact(url: str) -> str:
    """A storage URL safe to print: any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def sqlite_path(study_dir: Path) -> Path:
    """The default storage: a SQLite file in the study folder."""
    return Path(study_dir) / "study.db"


def storage_url(config: StudyConfig) -> str:
    """The user's storage, or the SQLite file in the study folder."""
    return config.storage or f"sqlite:///{sqlite_path(config.study_dir).resolve()}"


def with_installed_driver(url: str) -> str:
    """SQLAlchemy 2.1 reads postgresql:// as psycopg 3; use psycopg2 when only that is installed
    (autoft's postgres extra), so the URL a user copies from Optuna's docs works."""
    if not url.startswith("postgresql://"):
        return url
    if importlib.util.find_spec("psycopg") or not importlib.util.find_spec("psycopg2"):
        return url
    return "postgresql+psycopg2://" + url[len("postgresql://") :]


def prepare_process() -> None:
    """What every command's process sets first: plain log lines, Optuna's own logs quiet."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_optuna()


def quiet_optuna() -> None:
    """Only Optuna's errors reach the screen: autoft logs each trial's end itself, and Optuna's
    own line for a failed trial would repeat it, with a traceback for every Ctrl-C."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def sqlite_lock(database: str) -> FileLock:
    """The lock on a file beside a SQLite database, shared by every process of its studies on
    this machine (files.file_lock)."""
    return file_lock(f"{database}.start-lock")


class ShieldedStorage(RDBStorage):
    """An RDB storage whose every call runs whole under a worker's Stop (Stop.shielded): a
    signal during a trial's storage call interrupts the trial when the call returns."""

    stop: Stop | None = None  # set once built: RDBStorage.__init__ calls its own methods


def _shielded(method):
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with self.stop.shielded() if self.stop else contextlib.nullcontext():
            return method(self, *args, **kwargs)

    return call


for _name, _method in vars(RDBStorage).items():
    if inspect.isfunction(_method) and not _name.startswith("__"):
        setattr(ShieldedStorage, _name, _shielded(_method))


def open_storage(url: str, stop: Stop | None = None, read_only: bool = False) -> RDBStorage:
    """An RDB storage with heartbeats, so trials of a killed worker are found and run again;
    with a worker's Stop, one whose calls a signal does not cut in half (ShieldedStorage).

    A new SQLite file gets its tables under the file lock beside it: two processes creating
    them at once would otherwise both insert Alembic's version row, and one would fail. A
    read-only storage (read_only_url) is only read: no lock, no tables made, no schema check.
    """
    url = with_installed_driver(url)
    sqlite = url.startswith("sqlite")
    engine_kwargs = {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
    try:
        database = make_url(url).database if sqlite else None
        creating = (sqlite_lock(database) if database not in (None, "", ":memory:")
                    and not read_only else contextlib.nullcontext())
        with creating, warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = (RDBStorage if stop is None else ShieldedStorage)(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=run_stale_again,
                skip_table_creation=read_only,
                skip_compatibility_check=read_only,
            )
    except ImportError as error:  # Optuna's "Please install appropriate one" names none
        missing = getattr(error.__cause__, "name", None) or "its driver"
        raise UsageError(
            f"Cannot open storage {redact(url)}: the database driver {missing} is not "
            f"installed; for PostgreSQL, pip install 'autoft[postgres]' (psycopg2) and give a "
            f"postgresql:// URL."
        ) from None
    except Exception as error:  # SQLAlchemy raises many kinds; the user needs one sentence
        reason = str(error).splitlines()[0]
        raise UsageError(
            f"Cannot open storage {redact(url)} ({reason}); check the URL and that "
            f"the database server is running."
        ) from None
    if stop is not None:
        storage.stop = stop
    return storage


def open_study(config: StudyConfig, storage: RDBStorage | None = None,
               direction: str = "maximize") -> optuna.Study:
    """Create the study or load it to resume; same name and storage means the same study.
    `direction` is the target metric's (Prepared.direction): RMSE is minimized."""
    sampler, pruner = policies(config)
    return optuna.create_study(
        storage=storage or open_storage(storage_url(config)),
        study_name=config.name,
        direction=direction,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )


INPUTS = "fingerprint"  # the study's user attribute naming the inputs its trials trained on


def recorded_inputs(config: StudyConfig) -> dict | None:
    """What the study's storage says its trials trained on (the inputs' fingerprint and their
    description), or None for a study not created yet or made before autoft recorded it.

    The storage is the one place every worker and every resume reads, wherever its study folder
    is; a SQLite file that does not exist yet is not created here.
    """
    url = storage_url(config)
    if url.startswith("sqlite") and not sqlite_path(config.study_dir).is_file():
        return None
    storage = open_storage(url)
    try:
        attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(config.name))
    except KeyError:
        return None
    finally:
        storage.engine.dispose()
    if INPUTS not in attrs:
        return None
    return {"fingerprint": attrs[INPUTS], "description": attrs.get("data_description")}


def check_same_inputs(config: StudyConfig, recorded: dict | None, fingerprint: str) -> None:
    """Refuse to add trials on other data or model settings to a study's earlier trials."""
    if recorded is None or recorded["fingerprint"] == fingerprint:
        return
    raise UsageError(
        f"Study '{config.name}' in {redact(storage_url(config))} was run on other data or model "
        f"settings (its trials trained on {recorded['description'] or 'other inputs'}); its "
        f"trials and new ones would not be comparable: choose a new --study name, or give the "
        f"data and model it was run on."
    )


def recordable_config(config: StudyConfig) -> dict:
    """The study config as plain values for the storage, its storage password hidden."""
    values = dataclasses.asdict(config)
    values.pop("origins")
    if values["storage"]:
        values["storage"] = redact(values["storage"])
    return values


def recorded_config(study: optuna.Study, studies_dir: str, storage: str) -> StudyConfig:
    """The config `autoft search` recorded in the study, for a worker joining it from anywhere."""
    values = dict(study.user_attrs.get("config") or {})
    if not values:
        raise UsageError(
            f"Study '{study.study_name}' records no config (made by an older autoft?); start it "
            f"with autoft search."
        )
    base = values.pop("base")
    values.update(studies_dir=studies_dir, storage=storage)
    return StudyConfig(**values, base=BaseTaskConfig(**base) if base else None)


def study_read_only(name: str, studies_dir: str, storage: str | None) -> bool:
    """Whether the study's SQLite file can only be read (it, or its folder, where SQLite writes
    its journal, is not writable): an archived study, say. Status, report and export read it."""
    path = sqlite_path(Path(studies_dir) / name)
    if storage or not path.is_file():
        return False
    return not os.access(path, os.W_OK) or unwritable_folder(path.parent) is not None


def load_study(name: str, studies_dir: str, storage: str | None,
               read_only: bool = False) -> optuna.Study:
    """An existing study, for status, report, export and autoft.load; a clear error when there
    is none. A study that cannot be written, or asked for `read_only`, is opened read-only
    (SQLite's mode=ro, no start lock)."""
    path = sqlite_path(Path(studies_dir) / name)
    url = storage or f"sqlite:///{path.resolve()}"
    if url.startswith("sqlite") and not path.is_file():
        elsewhere = storage_elsewhere(path.parent)
        raise UsageError(
            f"{path.parent} has no study.db: {elsewhere}." if elsewhere else
            f"No study '{name}' in {studies_dir}/ (no {name}/study.db); check "
            f"--study and --studies-dir."
        )
    read_only = read_only or study_read_only(name, studies_dir, storage)
    if read_only and not storage:
        url = f"sqlite:///file:{path.resolve()}?mode=ro&uri=true"
    try:
        return optuna.load_study(study_name=name, storage=open_storage(url, read_only=read_only))
    except KeyError:
        raise UsageError(f"Storage {redact(url)} holds no study '{name}'; check --study.") from None


class StartLock:
    """Makes 'check the budget, then ask for a trial' one step across every worker of a study.

    Without it two workers both see one trial left and both start one. Optuna's ask is several
    transactions, so a database transaction cannot cover it; a lock the workers share can. For
    SQLite (one machine) that is a file lock beside the database (`sqlite_lock`): the kernel frees
    it when a worker dies, even by kill -9. For PostgreSQL (many machines) it is a session-level
    advisory lock keyed by the study name: the server frees it when the worker's connection
    closes. Other databases get no lock and may overshoot by a trial per extra worker.
    """

    def __init__(self, storage: optuna.storages.RDBStorage, study_name: str):
        self.engine = storage.engine
        self.dialect = storage.engine.dialect.name
        digest = hashlib.sha256(f"autoft:{study_name}".encode()).digest()
        self.key = int.from_bytes(digest[:8], "big", signed=True)
        self._held: object | None = None
        if self.dialect not in ("sqlite", "postgresql"):
            log.warning(
                "%s storage: trials start without a lock, so the budget may be overshot "
                "by up to one trial per extra worker.",
                self.dialect,
            )

    def acquire(self) -> None:
        if self.dialect == "sqlite":
            self._held = contextlib.ExitStack()
            self._held.enter_context(sqlite_lock(self.engine.url.database))
        elif self.dialect == "postgresql":
            connection = self.engine.connect()
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": self.key})
            self._held = connection
        else:
            self._held = True

    def release(self) -> None:
        """Free the lock if this worker holds it; safe to call twice."""
        held, self._held = self._held, None
        if held is None or held is True:
            return
        if self.dialect == "postgresql":
            held.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
        held.close()
