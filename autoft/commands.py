"""What each `autoft` command does: run a search (prepare, workers, soup, audit, report, best
model), a worker that joins a study, report and export (status is autoft.status's, which needs
no torch). autoft.cli parses the command line and imports this module only then, so `autoft
--help` does not wait for torch.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path

import optuna

from autoft.audit import audit_reported
from autoft.config import StudyConfig, parse_duration
from autoft.describe import describe_numbers, describe_settings
from autoft.devices import device_slots
from autoft.errors import NothingToShow, UsageError
from autoft.export import BEST_MODEL, export_trial, holds_answer, save_best_model
from autoft.files import is_disk_full, unwritable_folder
from autoft.prepare import prepare_study
from autoft.progress import LiveDisplay
from autoft.report import nothing_to_show, summary_text, write_report
from autoft.schedule import budget_left, check_not_stopped
from autoft.signals import Stop
from autoft.soup import cook_soup
from autoft.storage import load_study, open_storage, open_study, storage_url, study_read_only
from autoft.study_facts import record_study_facts
from autoft.summary import build_summary
from autoft.trials import winning_soup
from autoft.workers import WAIT_SECONDS, join_study, run_workers, time_limits


def search(config: StudyConfig) -> optuna.Study:
    """Prepare, run the trials, try a soup of the best ones, audit the reported configs, then
    summarise and export the best model (the soup when it won); returns the study (`autoft
    search` and autoft.search share this path).

    After a Ctrl-C (or SIGTERM) the report and the best model are still written from the trials
    that finished; a second signal while they are written waits until they are.
    """

    check_writable(config.study_dir)
    slots = device_slots(config.devices, config.trials_per_gpu, config.where("devices"))
    # A storage the user named is opened before anything is loaded: a wrong URL is one sentence
    # and leaves nothing behind. The default SQLite file is made once the data proved good.
    storage = open_storage(config.storage) if config.storage else None
    prepared = prepare_study(config)
    study = open_study(config, storage, prepared.direction)
    record_study_facts(study, prepared)
    print(f"  using {describe_settings(study.user_attrs['settings'])}")
    started = time.time()
    data = prepared.data
    since = datetime.now()
    deferred = Stop()  # between and after the workers a signal only asks to stop
    deferred.install()
    try:
        with LiveDisplay(study, config.n_trials, data.metric, prepared.depth, len(data.train)):
            interrupted = run_workers(prepared, storage_url(config), slots,
                                      *time_limits(config.timeout),
                                      sampler_and_pruner=(study.sampler, study.pruner))
        if not interrupted:
            check_not_stopped(study, since, config.n_trials)
        cook_soup(study, config.study_dir)  # the best trials averaged, where that wins
        audit_reported(study, study_dir=config.study_dir,
                       trust_remote_code=config.trust_remote_code)
        summary = write_report(study, config.study_dir)
        if summary["best"] is not None:
            study.set_user_attr("best_trial", summary["best"]["number"])
            save_best_model(study, config.study_dir, config.trust_remote_code)
    finally:
        deferred.uninstall()
    print()
    print(summary_text(summary))
    print(f"This run took {time.time() - started:.0f} s.")
    print(f"Report: {config.study_dir / 'report.html'} (and report.md, summary.json)")
    if summary["best"] is not None:
        print(f"Best model: {config.study_dir / 'best_model'}")
    if (interrupted or deferred.signalled) and budget_left(study, config.n_trials) > 0:
        raise KeyboardInterrupt
    if summary["best"] is None:
        raise NothingToShow(nothing_to_show(summary))
    return study


def check_writable(study_dir: Path) -> None:
    """A search or worker writes its study folder (storage, logs, weights, report): refuse one
    it cannot write before anything runs."""
    folder = unwritable_folder(study_dir)
    if folder is not None:
        raise UsageError(
            f"Cannot write in {folder} (it is read-only to this user), where study folder "
            f"{study_dir} lives; pass --studies-dir a writable folder."
        )


def export(args: argparse.Namespace) -> int:
    study = load_study(args.study, args.studies_dir, args.storage)
    out = export_trial(study, args.trial, Path(args.out), Path(args.studies_dir) / args.study,
                       overwrite=args.overwrite, trust_remote_code=args.trust_remote_code)
    soup = winning_soup(study) if args.trial is None else None
    what = (f"the soup of trials {describe_numbers(soup['members'])}" if soup else
            f"trial {args.trial if args.trial is not None else 'best'}")
    print(f"Saved {what} to {out}")
    return 0


def report(args: argparse.Namespace) -> int:
    """Write the report, and the best model where it is missing or no longer the study's answer
    (a search stopped by a full disk before it); a study that cannot be written gets its summary
    on screen and one sentence saying why the files are missing."""
    study = load_study(args.study, args.studies_dir, args.storage)
    study_dir = Path(args.studies_dir) / args.study
    if not study_read_only(args.study, args.studies_dir, args.storage):
        audit_reported(study, study_dir=study_dir,  # stores its results in the study
                       trust_remote_code=args.trust_remote_code)
    try:
        summary = write_report(study, study_dir)
        best_model = (summary["best"] is not None
                      and not holds_answer(study, study_dir / BEST_MODEL)
                      and save_best_model(study, study_dir, args.trust_remote_code))
    except OSError as error:
        if is_disk_full(error):
            raise
        print(summary_text(build_summary(study)))
        raise UsageError(
            f"Cannot write the report in {study_dir} ({error.strerror}); the summary is above, "
            f"and copying the study folder to a writable place and running autoft report "
            f"there writes the files."
        ) from None
    print(summary_text(summary))
    print(f"Report: {study_dir / 'report.html'} (and report.md, summary.json)")
    if best_model:
        print(f"Best model: {best_model} (written again: it was missing or out of date)")
    return 0


def worker(args: argparse.Namespace) -> int:
    """Run trials of an existing study here, e.g. on a second machine sharing its PostgreSQL."""
    check_writable(Path(args.studies_dir) / args.study)
    study = study_to_join(args.study, args.studies_dir, args.storage,
                          parse_duration(args.wait, "--wait"))
    if join_study(
        study,
        args.studies_dir,
        args.storage,
        devices=args.devices,
        trials_per_gpu=args.trials_per_gpu,
        timeout=parse_duration(args.timeout, "--timeout"),
    ):
        raise KeyboardInterrupt
    return 0


def study_to_join(name: str, studies_dir: str, storage: str | None,
                  wait: float | None) -> optuna.Study:
    """The study a worker joins, once `autoft search` has created it and recorded its config
    (its last fact), waiting up to `wait` seconds for that: the tasks of a job array start in
    any order. Past the wait, the study as it is (join_study says what it lacks)."""
    deadline = time.time() + (wait or 0)
    while True:
        try:
            study = load_study(name, studies_dir, storage)
        except UsageError:  # no such study yet, or its database not up yet
            if time.time() >= deadline:
                raise
        else:
            if "config" in study.user_attrs or time.time() >= deadline:
                return study
        time.sleep(WAIT_SECONDS)
