"""The one error type for bad user input: a sentence that names the thing and the fix.

The CLI prints it without a traceback and exits with code 2, before any trial starts.
"""


class UsageError(Exception):
    """Bad input from the user (a file, a field, a flag); its message is shown as it is."""
