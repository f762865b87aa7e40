"""SIGINT/SIGTERM around a training run: exit cleanly before training, finish the chunk during it.

* Before training (loading, checking, compiling) nothing is written yet: :func:`sigterm_interrupts`
  makes SIGTERM a KeyboardInterrupt like SIGINT, and :func:`interrupt_means` turns it into
  :class:`Interrupted`, whose message says when it came and what was kept (the CLI exits 130).
* During training :class:`StopFlag` turns both signals into a flag that the chunk loop checks
  between chunks: the running chunk finishes and the latest checkpoint is saved.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class Interrupted(Exception):
    """SIGINT/SIGTERM outside the chunk loop (exit 130); printed as "interrupted <message>", which
    says when and what was kept."""


_SEEN = threading.Event()  # a signal arrived before training, even if its KeyboardInterrupt was lost


def _raise_interrupt(signum, frame):
    _SEEN.set()
    raise KeyboardInterrupt


def _note_interrupt(signum, frame):
    _SEEN.set()


@contextlib.contextmanager
def _handling(handler) -> Iterator[None]:
    """SIGINT and SIGTERM go to ``handler`` inside the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


@contextlib.contextmanager
def deferred_interrupts(message: str) -> Iterator[None]:
    """Inside the block SIGINT/SIGTERM only set a flag; on leaving it, :class:`Interrupted` if one came.

    For work that must not see a KeyboardInterrupt: while XLA compiles, JAX runs Python callbacks
    from C (its garbage-collection hook), where a raised KeyboardInterrupt is printed as an ignored
    exception with a traceback and lost.
    """
    with _handling(_note_interrupt):
        yield
    raise_if_interrupted(message)


def raise_if_interrupted(message: str) -> None:
    """Raise :class:`Interrupted` if SIGINT/SIGTERM arrived since :func:`sigterm_interrupts` began.

    A KeyboardInterrupt raised while JAX runs a Python callback from C (e.g. its garbage-collection
    hook during a compile) is printed as "Exception ignored" and swallowed; the flag set by the
    handler is not, so a phase boundary can still honour the signal.
    """
    if _SEEN.is_set():
        _SEEN.clear()
        raise Interrupted(message)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM behaves like SIGINT (KeyboardInterrupt) outside the chunk loop, so a scheduler's
    kill before training gets the same clean exit 130 instead of dying mid-write; both also set
    the flag :func:`raise_if_interrupted` checks."""
    _SEEN.clear()
    with _handling(_raise_interrupt):
        yield


@contextlib.contextmanager
def interrupt_means(message: str) -> Iterator[None]:
    """A KeyboardInterrupt in the block becomes :class:`Interrupted` with ``message``."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(message) from None


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag checked between chunks (the running chunk always finishes);
    also defers an interrupt until the run directory setup is complete (or undone)."""

    def __init__(self):
        self.raised = False
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
