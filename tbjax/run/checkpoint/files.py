"""The files of one checkpoint step on disk: commit marker, tbjax's file list, damage check, save errors.

Orbax writes a step into ``<n>.orbax-checkpoint-tmp-<time>``, writes :data:`COMMIT_FILE` and
renames it into place, so a process killed mid-save leaves only a tmp folder that orbax does not
list. After orbax commits, :mod:`tbjax.run.checkpoint.save` writes :data:`FILE_LIST`: the size and
SHA-256 of every file of the step (:func:`step_files`). :func:`step_damage` compares a step with
its list before orbax reads anything, so no orbax read ever sees a damaged file of a step that has
a file list. :func:`save_error` turns whatever a failed save raised into one user-facing message.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

from tbjax.atomic import describe_os_error
from tbjax.data.hashing import file_sha256
from tbjax.errors import InputError

COMMIT_FILE = "commit_success.txt"  # orbax's marker of a finalised step (atomicity_types.COMMIT_SUCCESS_FILE)
FILE_LIST = "tbjax_files.json"  # size and SHA-256 of every file of a committed step, written after the commit
TMP_MARK = ".orbax-checkpoint-tmp"  # in the name of orbax's unfinished step and item folders (TMP_DIR_SUFFIX)


def step_files(step_dir: Path) -> dict[str, list]:
    """{relative path: [size, sha256]} of every file of a step (the file list itself excluded)."""
    out = {}
    for f in sorted(step_dir.rglob("*")):
        rel = f.relative_to(step_dir).as_posix()
        if f.is_file() and rel != FILE_LIST:
            out[rel] = [f.stat().st_size, file_sha256(f)]
    return out


def step_damage(step_dir: Path) -> str | None:
    """Why the step folder cannot be restored (missing, truncated or changed file), None if intact.

    Checked before orbax reads anything, so a damaged step is skipped with a precise reason instead
    of an orbax exception. A committed step without a file list (written before tbjax recorded
    them, or its list deleted) is not judged here: orbax's own read decides.
    """
    if not (step_dir / COMMIT_FILE).is_file():
        return f"unfinished save (no {COMMIT_FILE})"
    listing = step_dir / FILE_LIST
    if not listing.is_file():
        return None
    try:
        expected = json.loads(listing.read_text())["files"]
        items = [(rel, int(size), str(digest)) for rel, (size, digest) in expected.items()]
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return f"its {FILE_LIST} is unreadable"
    for rel, size, digest in items:
        f = step_dir / rel
        if not f.is_file():
            return f"{rel} is missing"
        actual = f.stat().st_size
        if actual < size:
            return f"{rel} is truncated ({actual} of {size} bytes)"
        if actual != size:
            return f"{rel} has {actual} bytes, not {size}"
        if file_sha256(f) != digest:
            return f"{rel} is corrupt (its SHA-256 differs from the one saved)"
    return None


def save_error(err: Exception, path: Path) -> InputError:
    """One message for a failed save; orbax reports OS errors as ValueError text with the errno in it."""
    if isinstance(err, InputError):
        return err
    if isinstance(err, OSError) and err.errno:
        return describe_os_error(err, path, "saving checkpoint")
    text = str(err)
    code = re.search(r"os_error_code='?(\d+)", text)
    if code:
        number = int(code.group(1))
        return describe_os_error(OSError(number, os.strerror(number)), path, "saving checkpoint")
    for number in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
        if os.strerror(number) in text:
            return describe_os_error(OSError(number, os.strerror(number)), path, "saving checkpoint")
    first = text.strip().splitlines()[0][:200] if text.strip() else ""
    return InputError(f"saving checkpoint '{path}' failed ({type(err).__name__}: {first}); nothing partial was "
                      "kept: check the disk and the folder, then run the command again")
