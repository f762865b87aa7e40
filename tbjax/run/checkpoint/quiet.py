"""Silence orbax's echoes of a failed read or write: :func:`quiet_orbax` around every orbax call.

Orbax and tensorstore report a failed read or write twice: as the exception that
:mod:`tbjax.run.checkpoint` turns into one message, and as dozens of tracebacks from their
background tasks ("Exception ignored in coroutine", "Event loop is closed", "Task exception was
never retrieved"). The second kind says nothing the exception does not; a user would see ~70 lines
of it.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import sys
from typing import Iterator

NOISY_LOGGERS = ("absl", "asyncio", "orbax", "tensorstore")


def _is_orbax_echo(unraisable) -> bool:
    """An unraisable exception that only echoes a failed orbax read: a coroutine of orbax's dying
    with its error, or a tensorstore callback finding orbax's event loop already closed."""
    exc, obj = unraisable.exc_value, unraisable.object
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed" and obj is None:
        return True
    code = getattr(obj, "cr_code", None)
    return code is not None and "orbax" in code.co_filename


def _raised_in_orbax(exc: BaseException | None) -> bool:
    """Whether ``exc`` or an exception it was raised from passed through a frame of orbax's code."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None:
            if "orbax" in tb.tb_frame.f_code.co_filename:
                return True
            tb = tb.tb_next
        exc = exc.__cause__ or exc.__context__
    return False


class _OrbaxTaskEcho(logging.Filter):
    """Drops asyncio's "... exception was never retrieved" about orbax's work (see quiet_orbax): a
    Task names its orbax coroutine in the message; a gathering future only carries the exception,
    whose traceback runs through orbax's reader."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "orbax" in record.getMessage():
            return False
        return not (record.exc_info and _raised_in_orbax(record.exc_info[1]))


def _install_echo_filters() -> None:
    """Process-wide filters for echoes that arrive AFTER an orbax call returned (tensorstore reads
    still in flight finish later); anything else reaches the previous hook unchanged."""
    if not getattr(sys.unraisablehook, "_tbjax_orbax_filter", False):
        previous = sys.unraisablehook

        def hook(unraisable):
            if not _is_orbax_echo(unraisable):
                previous(unraisable)

        hook._tbjax_orbax_filter = True
        sys.unraisablehook = hook
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _OrbaxTaskEcho) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_OrbaxTaskEcho())


@contextlib.contextmanager
def quiet_orbax() -> Iterator[None]:
    """Silence orbax's background chatter for the block; its exceptions still propagate.

    A failed read or write inside orbax's async machinery raises here once, and, besides, its
    dying tasks print tracebacks through ``sys.unraisablehook``, the asyncio and absl loggers and
    stderr while they are garbage collected or when tensorstore reads still in flight complete.
    Those echoes say nothing the exception does not, and a user would see ~70 lines of them: hooks
    and loggers are swapped for the block, after a failure a ``gc.collect()`` before they are
    restored flushes the dying tasks while they are still muted, and :func:`_install_echo_filters`
    drops late ones.
    """
    _install_echo_filters()
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    hook, stderr = sys.unraisablehook, sys.stderr
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    sys.unraisablehook = lambda unraisable: None
    sys.stderr = io.StringIO()
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        if failed:  # only a failed call leaves dying tasks (collecting costs ~0.2 s on a big heap)
            gc.collect()
        sys.stderr, sys.unraisablehook = stderr, hook
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
