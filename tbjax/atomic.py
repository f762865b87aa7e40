"""Atomic file writes: the one way tbjax puts a file on disk.

A file is written to a hidden temporary sibling (same folder, so ``os.replace`` is atomic on
POSIX), flushed, and renamed over the target. A crash, a signal or a full disk leaves either the
old file or the new one, never half of one, and the temporary file is removed on failure.

``disk_errors`` turns the OS errors a user can fix (disk full, quota, permission, read-only file
system) into one :class:`~tbjax.errors.InputError` naming the path and the fix, so a CLI prints one
line and exits 2 instead of a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from tbjax.errors import InputError

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)


def describe_os_error(exc: OSError, path: str | Path, what: str = "writing") -> InputError:
    """One user-facing message for an OSError raised while ``what``-ing ``path``."""
    if exc.errno in DISK_FULL_ERRNOS:
        fix = "free disk space (or point the output elsewhere) and run the command again"
        reason = "the disk is full"
    elif exc.errno in NOT_WRITABLE_ERRNOS:
        fix = "make the folder writable or choose another output folder"
        reason = "permission denied" if exc.errno != errno.EROFS else "the file system is read-only"
    else:
        fix = "check the path and the disk, then run the command again"
        reason = exc.strerror or type(exc).__name__
    return InputError(f"{what} '{path}' failed: {reason}; nothing partial was kept: {fix}")


@contextlib.contextmanager
def disk_errors(path: str | Path, what: str = "writing") -> Iterator[None]:
    """Re-raise OSError inside the block as one InputError (see :func:`describe_os_error`)."""
    try:
        yield
    except InputError:
        raise
    except OSError as exc:
        raise describe_os_error(exc, path, what) from None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, else delete it.

    For writers that need a file name (pyarrow, matplotlib): write to the yielded path.
    """
    path = Path(path)
    with disk_errors(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual umask mode
    try:
        with disk_errors(path):
            yield Path(tmp)
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``path``; on success it replaces ``path`` as a whole.

    For outputs made of several files (a dataset export, an HPO trial's folder): a crash or a
    ``kill -9`` while writing leaves the old folder or none, never half of one; only a hidden
    ``.<name>.*.tmp`` sibling may remain, which readers of the parent folder skip.
    """
    path = Path(path)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield staging
        with disk_errors(path):
            if path.exists():
                shutil.rmtree(path)
            os.rename(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int:
    """The process umask (reading it requires setting it; restored at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically, fsync'd before the rename."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())


def append_line(path: str | Path, line: str) -> None:
    """Append one line to ``path`` and fsync it; on failure the file is cut back to its old length.

    For logs that grow by a line per step (metrics.jsonl): rewriting the whole file each time would
    cost O(lines) per line. A crash mid-append can leave a partial last line, which readers drop.
    """
    path = Path(path)
    size = path.stat().st_size if path.exists() else 0
    with disk_errors(path):
        try:
            with open(path, "ab") as fh:
                fh.write((line + "\n").encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            if path.exists():
                os.truncate(path, size)
            raise


def write_with(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
