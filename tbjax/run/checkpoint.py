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

Modules: :mod:`tbjax.run.carry_storage` (the carry as plain arrays, the structure fingerprint),
:mod:`tbjax.run.checkpoint_files` (commit marker, file list, damage check, save errors) and
:mod:`tbjax.run.orbax_quiet` (:func:`quiet_orbax`, around every orbax call: orbax's background
tasks echo a failed read or write as dozens of tracebacks the exception already says).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import orbax.checkpoint as ocp

from tbjax.atomic import describe_os_error, write_atomic
from tbjax.errors import InputError
from tbjax.run.carry_storage import abstract, describe_mismatch, rewrap, storable, structure_fingerprint
from tbjax.run.checkpoint_files import COMMIT_FILE, FILE_LIST, TMP_MARK, save_error, step_damage, step_files
from tbjax.run.orbax_quiet import NOISY_LOGGERS, quiet_orbax

__all__ = ["COMMIT_FILE", "DEFAULT_FIX", "FILE_LIST", "KEEP", "KINDS", "NOISY_LOGGERS", "RunCheckpoints",
           "quiet_orbax", "step_damage", "structure_fingerprint"]

KINDS = ("latest", "best")
KEEP = {"latest": 2, "best": 1}
# What to do when a checkpoint of this kind is missing or unusable, unless the caller knows better
# (``restore(..., fix=...)``): a missing "latest" is what a fresh start replaces, a missing "best"
# means no validation has run yet.
DEFAULT_FIX = {"latest": "start without --resume, or pick another run dir",
               "best": "use the 'latest' checkpoint instead (python -m tbjax.evaluate --checkpoint latest), "
                       "or pick another run dir"}


class _LazyText:
    """A message part computed only when formatted (an error is actually raised)."""

    def __init__(self, make: Callable[[], str]):
        self.make = make

    def __format__(self, spec: str) -> str:
        return format(self.make(), spec)


def _this_process_only():
    """Orbax's options for a manager used by this process alone: with several JAX processes only
    process 0 reads and writes checkpoints (of host copies, tbjax.run.distributed.host_copy), so
    orbax must not wait for the others at its barriers."""
    import jax

    if jax.process_count() == 1:
        return ocp.options.MultiprocessingOptions()
    return ocp.options.MultiprocessingOptions(primary_host=jax.process_index(), active_processes={jax.process_index()})


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
        read-only manager that sees the folder as it is now (None when the folder does not exist).

        The tmp folders of killed saves are removed here, before the writer exists, not by orbax's
        ``cleanup_tmp_directories``: that runs in a thread started by the manager's constructor which
        only orbax's own ``save`` waits for, so it deleted whatever appeared in the folder meanwhile;
        a save failing on a full disk then reported "No such file or directory" instead.
        """
        if write or kind in self._writers:
            if kind not in self._writers:
                options = ocp.CheckpointManagerOptions(max_to_keep=KEEP[kind], enable_async_checkpointing=False,
                                                       create=False, cleanup_tmp_directories=False,
                                                       multiprocessing_options=_this_process_only())
                try:
                    self.paths[kind].mkdir(parents=True, exist_ok=True)  # orbax's create=True refuses active_processes
                    for entry in self.paths[kind].iterdir():  # saves a killed process left unfinished
                        if TMP_MARK in entry.name:
                            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
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
            options = ocp.CheckpointManagerOptions(read_only=True, create=False, enable_async_checkpointing=False,
                                                   multiprocessing_options=_this_process_only())
            return ocp.CheckpointManager(self.paths[kind].resolve(), options=options, item_names=("carry", "meta"))

    # ------------------------------------------------------------------ saving

    def _save(self, kind: str, step: int, carry, meta: dict) -> None:
        record = {**meta, "step": int(step), "structure": structure_fingerprint(carry)}
        sequence = None
        try:
            manager = self._manager(kind, write=True)
            sequence = max(manager.all_steps(), default=0) + 1
            with quiet_orbax():
                manager.save(sequence, args=ocp.args.Composite(carry=ocp.args.StandardSave(storable(carry)),
                                                               meta=ocp.args.JsonSave(record)), force=True)
                manager.wait_until_finished()
            step_dir = self.paths[kind] / str(sequence)
            write_atomic(step_dir / FILE_LIST, json.dumps({"files": step_files(step_dir)}, sort_keys=True))
        except Exception as err:
            self._discard_failed_save(kind, sequence)
            raise save_error(err, self.paths[kind]) from None

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
            if entry.name == str(sequence) or entry.name.startswith(f"{sequence}{TMP_MARK}"):
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
        target = abstract(template)
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
                                 f"({describe_mismatch(saved, wanted)}): use the run's own config.yaml; if "
                                 "it already is, the checkpoint was written by a tbjax whose network or carry "
                                 "layout differs from this version's: neither continuing nor evaluating it works "
                                 "with this version, so train again with it in another --run-dir")
            try:
                with quiet_orbax():
                    restored = manager.restore(
                        sequence, args=ocp.args.Composite(carry=ocp.args.StandardRestore(target)))
            except Exception as err:
                problems.append(f"'{step_dir}': unreadable ({type(err).__name__})")
                continue
            if problems:
                warnings.warn(f"skipped unreadable checkpoint(s) {'; '.join(problems)}; restored '{step_dir}' "
                              f"(update {record.get('update', record.get('step'))})", stacklevel=3)
            return rewrap(restored.carry, template), record
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
