"""Orbax checkpoints of the trainer carry: ``<run>/checkpoints/latest`` and ``<run>/checkpoints/best``.

Each folder is an ``orbax.checkpoint.CheckpointManager`` whose steps hold two items:

* ``carry``: the whole :class:`TrainCarry` pytree (params, optimiser state, PopArt and observation
  statistics, env states, rng, update counter) written with ``StandardSave``, so it restores
  bit-exactly into a template of the same structure (``trainer.init``'s output);
* ``meta``: a JSON dict (``JsonSave``) with the training step, the caller's bookkeeping (update
  count, env steps, objective) and a structure fingerprint (key path, shape, dtype of every leaf)
  used on restore to say *which* leaf differs when a config change altered the carry.

Orbax step numbers here are save sequence numbers (1, 2, ...), not training steps: re-saving an
earlier training step after a resume, or a new best found at an earlier update than an older one,
never collides with an existing folder, and "latest" is always the last save. The training step
lives in ``meta["step"]``.

Atomicity: orbax writes a step into ``<n>.orbax-checkpoint-tmp-<time>``, writes
``commit_success.txt`` and renames it into place, so a process killed mid-save leaves only a tmp
folder that orbax does not list. After orbax commits, ``tbjax_files.json`` records the size and
SHA-256 of every file of the step. Restore skips step folders without ``commit_success.txt`` (a
partial copy, a failed rename on another file system) and steps whose files are missing, truncated
or changed, and falls back, with one warning, to the newest earlier step that loads; no orbax read
ever sees a damaged file of a step that has a file list. A save that fails (disk full, permission)
removes what it wrote and raises one :class:`~tbjax.errors.InputError`; the earlier steps stay
untouched. Saves are synchronous: when ``save_*`` returns, a following process sees the checkpoint.

Orbax and tensorstore report a failed read or write twice: as the exception we turn into one
message, and as dozens of tracebacks from their background tasks ("Exception ignored in
coroutine", "Event loop is closed", "Task exception was never retrieved"). :func:`quiet_orbax`
silences the second kind around every orbax call.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp

from tbjax.atomic import describe_os_error, write_atomic
from tbjax.errors import InputError

COMMIT_FILE = "commit_success.txt"  # orbax's marker of a finalised step (atomicity_types.COMMIT_SUCCESS_FILE)
FILE_LIST = "tbjax_files.json"  # size and SHA-256 of every file of a committed step, written after the commit
KINDS = ("latest", "best")
KEEP = {"latest": 2, "best": 1}
# What to do when a checkpoint of this kind is missing or unusable, unless the caller knows better
# (``restore(..., fix=...)``): a missing "latest" is what a fresh start replaces, a missing "best"
# means no validation has run yet.
DEFAULT_FIX = {"latest": "start without --resume, or pick another run dir",
               "best": "use the 'latest' checkpoint instead (python -m tbjax.evaluate --checkpoint latest), "
                       "or pick another run dir"}
NOISY_LOGGERS = ("absl", "asyncio", "orbax", "tensorstore")


def _is_orbax_echo(unraisable) -> bool:
    """An unraisable exception that only echoes a failed orbax read: a coroutine of orbax's dying
    with its error, or a tensorstore callback finding orbax's event loop already closed."""
    exc, obj = unraisable.exc_value, unraisable.object
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed" and obj is None:
        return True
    code = getattr(obj, "cr_code", None)
    return code is not None and "orbax" in code.co_filename


class _OrbaxTaskEcho(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" about orbax tasks (see quiet_orbax)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "orbax" not in record.getMessage()


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


def _is_prng_key(x: Any) -> bool:
    return isinstance(x, (jax.Array, jax.ShapeDtypeStruct)) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _storable(carry):
    """Typed PRNG keys → their uint32 key data (orbax stores plain arrays); other leaves unchanged."""

    def one(x):
        if not _is_prng_key(x):
            return x
        return jax.eval_shape(jax.random.key_data, x) if isinstance(x, jax.ShapeDtypeStruct) else jax.random.key_data(x)

    return jax.tree_util.tree_map(one, carry)


def _abstract(template):
    """ShapeDtypeStruct per leaf, with the template's sharding where it has one (a sharded env axis
    restores sharded), else on the default device. ``template`` may be concrete or come from
    ``jax.eval_shape(trainer.init, ...)``, which builds no arrays."""
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def one(x):
        sharding = getattr(x, "sharding", None) or default
        if not isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
            x = np.asarray(x)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree_util.tree_map(one, _storable(template))


def _key_impl(x):
    if isinstance(x, jax.ShapeDtypeStruct):
        return x.dtype._impl  # the key implementation an abstract key dtype carries (no public accessor)
    return jax.random.key_impl(x)


def _rewrap(restored, template):
    """Undo :func:`_storable`: key data back into typed keys of the template's implementation."""
    return jax.tree_util.tree_map(
        lambda r, t: jax.random.wrap_key_data(r, impl=_key_impl(t)) if _is_prng_key(t) else r, restored, template)


def structure_fingerprint(carry) -> list[list]:
    """[key path, shape, dtype] of every stored leaf: JSON-able, compared on restore."""
    leaves = jax.tree_util.tree_leaves_with_path(_storable(carry))
    out = []
    for path, x in leaves:
        if not hasattr(x, "shape"):
            x = np.asarray(x)
        out.append([jax.tree_util.keystr(path), [int(d) for d in x.shape], str(x.dtype)])
    return out


def _describe_mismatch(saved: list, wanted: list) -> str:
    if len(saved) != len(wanted):
        return f"it holds {len(saved)} arrays, the current config builds {len(wanted)}"
    for s, w in zip(saved, wanted):
        if list(s) != list(w):
            return f"leaf {s[0]} is {s[2]}{tuple(s[1])} there, {w[2]}{tuple(w[1])} now"
    return "the structure differs"


class _LazyText:
    """A message part computed only when formatted (an error is actually raised)."""

    def __init__(self, make: Callable[[], str]):
        self.make = make

    def __format__(self, spec: str) -> str:
        return format(self.make(), spec)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _step_files(step_dir: Path) -> dict[str, list]:
    """{relative path: [size, sha256]} of every file of a step (the file list itself excluded)."""
    out = {}
    for f in sorted(step_dir.rglob("*")):
        rel = f.relative_to(step_dir).as_posix()
        if f.is_file() and rel != FILE_LIST:
            out[rel] = [f.stat().st_size, _sha256(f)]
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
        if actual != size:
            return f"{rel} is truncated ({actual} of {size} bytes)" if actual < size else f"{rel} has {actual} bytes, not {size}"
        if _sha256(f) != digest:
            return f"{rel} is corrupt (its SHA-256 differs from the one saved)"
    return None


def _save_error(err: Exception, path: Path) -> InputError:
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


class RunCheckpoints:
    """The two checkpoint series of one run directory (see the module docstring).

    Nothing is created or deleted until the first save: readers (``load_policy``, ``evaluate``) can
    open a run that another process is still writing, or a read-only copy of one.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.paths = {kind: self.run_dir / "checkpoints" / kind for kind in KINDS}
        self._writers: dict[str, ocp.CheckpointManager] = {}
        self._legacy_verdicts: dict[tuple[str, int], str | None] = {}

    def _manager(self, kind: str, write: bool) -> ocp.CheckpointManager | None:
        """The writer (created on first save; clears orbax tmp folders of killed saves) or a fresh
        read-only manager that sees the folder as it is now (None when the folder does not exist)."""
        if write or kind in self._writers:
            if kind not in self._writers:
                options = ocp.CheckpointManagerOptions(max_to_keep=KEEP[kind], enable_async_checkpointing=False,
                                                       create=True, cleanup_tmp_directories=True)
                try:
                    with quiet_orbax():
                        self._writers[kind] = ocp.CheckpointManager(self.paths[kind].resolve(), options=options,
                                                                    item_names=("carry", "meta"))
                except OSError as err:
                    raise describe_os_error(err, self.paths[kind], "creating checkpoint folder") from None
            manager = self._writers[kind]
            manager.reload()
            return manager
        if not self.paths[kind].is_dir():
            return None
        with quiet_orbax():  # orbax warns that a read-only manager is read-only
            options = ocp.CheckpointManagerOptions(read_only=True, create=False, enable_async_checkpointing=False)
            return ocp.CheckpointManager(self.paths[kind].resolve(), options=options, item_names=("carry", "meta"))

    # ------------------------------------------------------------------ saving

    def _save(self, kind: str, step: int, carry, meta: dict) -> None:
        record = {**meta, "step": int(step), "structure": structure_fingerprint(carry)}
        sequence = None
        try:
            manager = self._manager(kind, write=True)
            sequence = max(manager.all_steps(), default=0) + 1
            with quiet_orbax():
                manager.save(sequence, args=ocp.args.Composite(carry=ocp.args.StandardSave(_storable(carry)),
                                                               meta=ocp.args.JsonSave(record)), force=True)
                manager.wait_until_finished()
            step_dir = self.paths[kind] / str(sequence)
            write_atomic(step_dir / FILE_LIST, json.dumps({"files": _step_files(step_dir)}, sort_keys=True))
        except Exception as err:
            self._discard_failed_save(kind, sequence)
            raise _save_error(err, self.paths[kind]) from None

    def _discard_failed_save(self, kind: str, sequence: int | None) -> None:
        """Remove what a failed save left (orbax's tmp folder, a step without its file list) and drop
        the writer, whose view of the folder is stale; earlier steps are not touched."""
        manager = self._writers.pop(kind, None)
        if manager is not None:
            with quiet_orbax(), contextlib.suppress(Exception):
                manager.close()
        if sequence is None or not self.paths[kind].is_dir():
            return
        for entry in self.paths[kind].iterdir():
            if entry.name == str(sequence) or entry.name.startswith(f"{sequence}.orbax-checkpoint-tmp"):
                shutil.rmtree(entry, ignore_errors=True)

    def save_latest(self, step: int, carry, meta: dict) -> None:
        """Save ``carry`` as the newest "latest" (keeps the previous one too); ``meta`` must be JSON-able."""
        self._save("latest", step, carry, meta)

    def save_best(self, step: int, carry, meta: dict) -> None:
        """Replace the "best" checkpoint; ``meta["objective"]`` records the score that made it best."""
        if "objective" not in meta:
            raise ValueError("save_best needs meta['objective'], the score that made this checkpoint best")
        self._save("best", step, carry, meta)

    # ------------------------------------------------------------------ reading

    def _finalised(self, kind: str) -> tuple[ocp.CheckpointManager | None, list[int]]:
        """A manager for ``kind`` and its committed orbax steps, newest first."""
        manager = self._manager(kind, write=False)
        if manager is None:
            return None, []
        steps = sorted(manager.all_steps(), reverse=True)
        return manager, [s for s in steps if (self.paths[kind] / str(s) / COMMIT_FILE).is_file()]

    def _release(self, manager: ocp.CheckpointManager | None) -> None:
        if manager is not None and all(manager is not w for w in self._writers.values()):
            with quiet_orbax():
                manager.close()

    @staticmethod
    def _read_meta(manager: ocp.CheckpointManager, sequence: int) -> dict:
        with quiet_orbax():
            restored = manager.restore(sequence, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored.meta)

    def meta(self, which: str) -> dict | None:
        """The meta dict (with "step", without the fingerprint) of the newest intact ``which``
        checkpoint; None when there is none."""
        self._check_kind(which)
        manager, sequences = self._finalised(which)
        try:
            for sequence in sequences:
                if step_damage(self.paths[which] / str(sequence)) is not None:
                    continue
                try:
                    record = self._read_meta(manager, sequence)
                except Exception:  # unreadable meta: an older step may still be good
                    continue
                record.pop("structure", None)
                return record
            return None
        finally:
            self._release(manager)

    def latest_step(self) -> int | None:
        """Training step of the newest "latest" checkpoint, None when there is none."""
        record = self.meta("latest")
        return None if record is None else int(record["step"])

    def best_step(self) -> int | None:
        """Training step of the "best" checkpoint, None when there is none."""
        record = self.meta("best")
        return None if record is None else int(record["step"])

    def survey(self) -> tuple[dict[str, int], list[str]]:
        """What the run's checkpoint folders hold, without a template: ({kind: update of its newest
        usable checkpoint}, ["latest/2: carry/... is truncated", ...] for everything else: damaged
        steps, unfinished saves). A fresh start needs the first empty, a resume a "latest".

        A step without a file list (saved by an older tbjax) is read in full to find out.
        """
        usable, problems = {}, []
        for kind in KINDS:
            if not self.paths[kind].is_dir():
                continue
            manager, sequences = self._finalised(kind)
            try:
                for sequence in sequences:
                    why = self._deep_damage(manager, kind, sequence)
                    if why is not None:
                        continue
                    if kind not in usable:
                        try:
                            record = self._read_meta(manager, sequence)
                        except Exception:
                            continue
                        usable[kind] = int(record.get("update", record.get("step", 0)))
            finally:
                self._release(manager)
            for entry in sorted(self.paths[kind].iterdir()):
                if not entry.is_dir():
                    continue
                why = (self._deep_damage(None, kind, int(entry.name)) if entry.name.isdigit()
                       else "unfinished save")
                if why is not None:
                    problems.append(f"{kind}/{entry.name}: {why}")
        return usable, problems

    def _deep_damage(self, manager, kind: str, sequence: int) -> str | None:
        """:func:`step_damage`, plus a full template-free read for a step without a file list."""
        step_dir = self.paths[kind] / str(sequence)
        why = step_damage(step_dir)
        if why is not None or (step_dir / FILE_LIST).is_file():
            return why
        key = (kind, sequence)
        if key not in self._legacy_verdicts:
            own = manager is None
            manager = manager or self._manager(kind, write=False)
            try:
                with quiet_orbax():
                    manager.restore(sequence, args=ocp.args.Composite(carry=ocp.args.StandardRestore()))
                self._legacy_verdicts[key] = None
            except Exception as err:
                self._legacy_verdicts[key] = f"unreadable ({type(err).__name__})"
            finally:
                if own:
                    self._release(manager)
        return self._legacy_verdicts[key]

    @staticmethod
    def _check_kind(which: str) -> None:
        if which not in KINDS:
            raise InputError(f"checkpoint '{which}' is not one of {', '.join(KINDS)}")

    def restore(self, which: str, template, fix: str | Callable[[], str] | None = None) -> tuple[Any, dict]:
        """Restore the newest loadable ``which`` checkpoint into ``template``'s structure.

        ``template`` is a carry of the right structure (``trainer.init`` with the run's config); its
        values are ignored, its shardings are reused. Returns (carry, meta). A missing, corrupt or
        structurally different checkpoint raises InputError naming the folder and ``fix`` (what the
        calling command's user should do, or a function computing it only then, as it may survey the
        folder; :data:`DEFAULT_FIX` otherwise). Skipping a damaged newer step warns once
        (``warnings.warn``; the CLIs print it as one line).
        """
        self._check_kind(which)
        manager, sequences = self._finalised(which)
        try:
            return self._restore_newest(which, manager, sequences, template, fix or DEFAULT_FIX[which])
        finally:
            self._release(manager)

    def _restore_newest(self, which, manager, sequences, template, fix):
        path = self.paths[which]
        if callable(fix):
            advice = fix
            fix = _LazyText(advice)
        if not sequences:
            raise InputError(f"no finished '{which}' checkpoint in '{path}': {fix}")
        wanted = structure_fingerprint(template)
        abstract = _abstract(template)
        problems = []
        for sequence in sequences:
            step_dir = path / str(sequence)
            damage = step_damage(step_dir)
            if damage is not None:
                problems.append(f"'{step_dir}': {damage}")
                continue
            try:
                record = self._read_meta(manager, sequence)
            except Exception as err:
                problems.append(f"'{step_dir}': unreadable meta ({type(err).__name__})")
                continue
            saved = record.pop("structure", None)
            if saved is not None and saved != wanted:
                raise InputError(f"checkpoint '{step_dir}' does not match the carry this config builds "
                                 f"({_describe_mismatch(saved, wanted)}): use the run's own config.yaml, "
                                 f"{fix}")
            try:
                with quiet_orbax():
                    restored = manager.restore(
                        sequence, args=ocp.args.Composite(carry=ocp.args.StandardRestore(abstract)))
            except Exception as err:
                problems.append(f"'{step_dir}': unreadable ({type(err).__name__})")
                continue
            if problems:
                warnings.warn(f"skipped unreadable checkpoint(s) {'; '.join(problems)}; restored '{step_dir}' "
                              f"(update {record.get('update', record.get('step'))})", stacklevel=3)
            return _rewrap(restored.carry, template), record
        raise InputError(f"checkpoint '{path}' is corrupt ({'; '.join(problems)}): {fix}")

    def close(self) -> None:
        for manager in self._writers.values():
            with quiet_orbax():
                manager.wait_until_finished()
                manager.close()
        self._writers = {}

    def __enter__(self) -> "RunCheckpoints":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
