"""One error type for bad user input.

CLIs catch :class:`InputError`, print its message on one line and exit with status 2:
a person sees what was wrong, where, and how to fix it, never a traceback.
"""


class InputError(Exception):
    """Bad input from a user: a file, column, config key or value, with the fix in the text."""


def print_error(exc: BaseException) -> int:
    """Print ``error: <message>`` on ONE line to stderr (newlines folded) and return exit status 2.

    Every command reports bad input through this, so a user (or a script grepping stderr) always
    sees the same shape.
    """
    import sys

    print("error: " + " ".join(str(exc).split()), file=sys.stderr)
    return 2
