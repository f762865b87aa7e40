"""The two checkpoint folders of a run directory and their orbax managers (docs: :mod:`tbjax.run.checkpoint`).

:class:`CheckpointFolders` owns what saving, restoring and surveying share: the paths of
``checkpoints/latest`` and ``checkpoints/best``, the writer of each folder (created on the first
save) and the read-only managers that see a folder as it is now. Nothing is created or deleted
until the first save: readers (``load_policy``, ``evaluate``) can open a run that another process
is still writing, or a read-only copy of one.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Self

import orbax.checkpoint as ocp

from tbjax.atomic import describe_os_error
from tbjax.errors import InputError
from tbjax.run.checkpoint.files import COMMIT_FILE, TMP_MARK
from tbjax.run.checkpoint.quiet import quiet_orbax

KINDS = ("latest", "best")
KEEP = {"latest": 2, "best": 1}


def _this_process_only():
    """Orbax's options for a manager used by this process alone: with several JAX processes only
    process 0 reads and writes checkpoints (of host copies, tbjax.run.distributed.host_copy), so
    orbax must not wait for the others at its barriers."""
    import jax

    if jax.process_count() == 1:
        return ocp.options.MultiprocessingOptions()
    return ocp.options.MultiprocessingOptions(primary_host=jax.process_index(), active_processes={jax.process_index()})


class CheckpointFolders:
    """The paths and orbax managers of a run's "latest" and "best" checkpoint folders."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.paths = {kind: self.run_dir / "checkpoints" / kind for kind in KINDS}
        self._writers: dict[str, ocp.CheckpointManager] = {}
        self._legacy_verdicts: dict[tuple[str, int], str | None] = {}  # the survey's reads of old steps

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

    @staticmethod
    def _check_kind(which: str) -> None:
        if which not in KINDS:
            raise InputError(f"checkpoint '{which}' is not one of {', '.join(KINDS)}")

    def close(self) -> None:
        for manager in self._writers.values():
            with quiet_orbax():
                manager.wait_until_finished()
                manager.close()
        self._writers = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
