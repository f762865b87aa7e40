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


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM behaves like SIGINT (KeyboardInterrupt) outside the chunk loop, so a scheduler's
    kill before training gets the same clean exit 130 instead of dying mid-write."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


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
