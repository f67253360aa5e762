"""The error types a user sees as one sentence: bad input (exit code 2, before any trial starts),
and a run that ended with nothing to show for it (exit code 3).

The CLI prints either without a traceback.
"""

NOTHING_TO_SHOW_EXIT = 3


class UsageError(Exception):
    """Bad input from the user (a file, a field, a flag); its message is shown as it is."""


class NothingToShow(Exception):
    """The command ran but could not give its result (say, the disk filled up); its message is
    shown as it is, and the CLI exits with NOTHING_TO_SHOW_EXIT."""
