"""One error type for bad user input.

CLIs catch :class:`InputError`, print its message on one line and exit with status 2:
a person sees what was wrong, where, and how to fix it, never a traceback.
"""


class InputError(Exception):
    """Bad input from a user: a file, column, config key or value, with the fix in the text."""
