"""Saving a carry as the newest "latest" or the new "best" checkpoint (docs: :mod:`tbjax.run.checkpoint`).

A save is synchronous: when it returns, orbax has committed the step and :data:`FILE_LIST` (size
and SHA-256 of every file, :func:`tbjax.run.checkpoint.files.step_files`) is written beside it, so
a following process sees the checkpoint and a restore can check it before orbax reads a byte. A
save that fails (disk full, permission) removes what it wrote and raises one
:class:`~tbjax.errors.InputError`; the earlier steps stay untouched.
"""

from __future__ import annotations

import contextlib
import json
import shutil

import orbax.checkpoint as ocp

from tbjax.atomic import write_atomic
from tbjax.run.checkpoint.carry import storable, structure_fingerprint
from tbjax.run.checkpoint.files import FILE_LIST, TMP_MARK, save_error, step_files
from tbjax.run.checkpoint.folders import CheckpointFolders
from tbjax.run.checkpoint.quiet import quiet_orbax


class CheckpointSaves(CheckpointFolders):
    """``save_latest`` and ``save_best``: one orbax step per save, numbered by save sequence."""

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
