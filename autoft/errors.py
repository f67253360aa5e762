"""The ends that are not success: bad user input (a sentence that names the thing and the fix;
the CLI prints it without a traceback and exits with code 2, before any trial starts), and a
study that ran but has nothing to show (exit code 3, so a script can tell it from success),
no best config or a disk too full to write it.
"""

NOTHING_TO_SHOW_EXIT = 3


class UsageError(Exception):
    """Bad input from the user (a file, a field, a flag); its message is shown as it is."""


class NothingToShow(Exception):
    """The study ran and kept what it did, but has no best config (no trial completed, or none
    kept the base skill) or could not write it (a full disk); its message says why and the fix."""
