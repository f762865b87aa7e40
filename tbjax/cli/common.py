"""What every command shares: the argument parser whose errors are one line, the one-line
warnings, and :func:`run_main`, the wrapper around each command's ``main`` that turns bad input
into one ``error:`` line and exit 2 and an interrupt into exit 130 (docs/DESIGN.md, "Where each
concept lives": bad user input)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from typing import Callable

from tbjax.errors import InputError, print_error
from tbjax.run.interrupts import Interrupted


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one InputError line (exit 2 through :func:`run_main`), not
    usage text. ``see_help`` is how that line points at the help; ``{prog}`` is the command."""

    def __init__(self, *args, see_help: str = " (see {prog} --help)", **kwargs):
        super().__init__(*args, **kwargs)
        self.see_help = see_help

    def error(self, message: str):
        raise InputError(message + self.see_help.format(prog=self.prog))


@contextlib.contextmanager
def one_line_warnings():
    """Show warnings as one ``warning: ...`` line each (no file path, no source line) in the block:
    a fallback to an older checkpoint is news for the user, not a stack location."""
    with warnings.catch_warnings():  # the filters stay as they are; only the display changes

        def show(message, category, filename, lineno, file=None, line=None):
            print("warning: " + " ".join(str(message).split()), file=sys.stderr, flush=True)

        warnings.showwarning = show
        yield


def run_main(body: Callable[[], int], interrupted: str | None = None) -> int:
    """Run a command's ``body`` and return its exit status.

    Bad input (:class:`~tbjax.errors.InputError`): one ``error:`` line on stderr, 2. An interrupt a
    run's phase described (:class:`~tbjax.run.interrupts.Interrupted`): ``interrupted <when, what
    was kept>``, 130. A bare Ctrl-C: the line ``interrupted`` and 130 where the command gives one,
    else it propagates. ``--help``: its exit status is returned, not raised.
    """
    try:
        return body()
    except Interrupted as exc:
        print(f"interrupted {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(interrupted, file=sys.stderr)
        return 130
    except InputError as exc:
        return print_error(exc)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)


def training_main(parse_args: Callable, run: Callable, argv=None) -> int:
    """``main`` of a command that trains (train, frontier): SIGTERM acts as Ctrl-C before training
    (:func:`tbjax.run.interrupts.sigterm_interrupts`), and a bare Ctrl-C comes between the phases,
    where nothing is half-done (exit 130 with the line "interrupted")."""
    from tbjax.run.interrupts import sigterm_interrupts

    def body() -> int:
        args = parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        return run(args)

    with one_line_warnings(), sigterm_interrupts():
        return run_main(body, interrupted="interrupted")
