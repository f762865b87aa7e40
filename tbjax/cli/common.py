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


def add_training_flags(ap: OneLineParser, *, set_help: str, resume_help: str) -> None:
    """The flags every command that trains (train, frontier) shares, declared once here; their values
    reach the job as one :class:`tbjax.run.job.RunOptions` (``RunOptions.of(args)``), so a new
    shared flag is a line here and a field there. :func:`parse_training_args` checks them."""
    ap.add_argument("--set", action="append", default=[], metavar="A.B=C", help=set_help)
    ap.add_argument("--run-dir", default=None, help="run directory (default runs/<run_name or timestamp>)")
    ap.add_argument("--resume", action="store_true", help=resume_help)
    ap.add_argument("--max-chunks", type=int, default=None,
                    help="stop (resumably) after this many chunks in this invocation")
    ap.add_argument("--quiet", action="store_true", help="no progress bar; one log line per evaluation")


def parse_training_args(ap: OneLineParser, argv):
    """``ap.parse_args(argv)`` with the shared training flags checked (one line, exit 2)."""
    args = ap.parse_args(argv)
    if args.max_chunks is not None and args.max_chunks < 1:
        ap.error(f"--max-chunks must be >= 1, got {args.max_chunks}")
    return args


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
