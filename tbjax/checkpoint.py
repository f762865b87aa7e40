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
folder that orbax does not list. Restore additionally skips step folders without
``commit_success.txt`` (a partial copy, a failed rename on another file system) and falls back,
with a warning, to the newest earlier step that loads. Saves are synchronous: when ``save_*``
returns, a following process sees the checkpoint.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from tbjax.errors import InputError

COMMIT_FILE = "commit_success.txt"  # orbax's marker of a finalised step (atomicity_types.COMMIT_SUCCESS_FILE)
KINDS = ("latest", "best")
KEEP = {"latest": 2, "best": 1}


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


class RunCheckpoints:
    """The two checkpoint series of one run directory (see the module docstring).

    Nothing is created or deleted until the first save: readers (``load_policy``, ``evaluate``) can
    open a run that another process is still writing, or a read-only copy of one.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.paths = {kind: self.run_dir / "checkpoints" / kind for kind in KINDS}
        self._writers: dict[str, ocp.CheckpointManager] = {}

    def _manager(self, kind: str, write: bool) -> ocp.CheckpointManager | None:
        """The writer (created on first save; clears orbax tmp folders of killed saves) or a fresh
        read-only manager that sees the folder as it is now (None when the folder does not exist)."""
        if write or kind in self._writers:
            if kind not in self._writers:
                options = ocp.CheckpointManagerOptions(max_to_keep=KEEP[kind], enable_async_checkpointing=False,
                                                       create=True, cleanup_tmp_directories=True)
                try:
                    self._writers[kind] = ocp.CheckpointManager(self.paths[kind].resolve(), options=options,
                                                                item_names=("carry", "meta"))
                except OSError as err:
                    raise InputError(f"cannot write checkpoints to '{self.paths[kind]}' ({err.strerror}): "
                                     "pick another run dir with write access") from None
            manager = self._writers[kind]
            manager.reload()
            return manager
        if not self.paths[kind].is_dir():
            return None
        absl_logger = logging.getLogger("absl")  # orbax warns that a read-only manager is read-only
        level = absl_logger.level
        absl_logger.setLevel(logging.ERROR)
        try:
            options = ocp.CheckpointManagerOptions(read_only=True, create=False, enable_async_checkpointing=False)
            return ocp.CheckpointManager(self.paths[kind].resolve(), options=options, item_names=("carry", "meta"))
        finally:
            absl_logger.setLevel(level)

    # ------------------------------------------------------------------ saving

    def _save(self, kind: str, step: int, carry, meta: dict) -> None:
        manager = self._manager(kind, write=True)
        record = {**meta, "step": int(step), "structure": structure_fingerprint(carry)}
        sequence = max(manager.all_steps(), default=0) + 1
        manager.save(sequence, args=ocp.args.Composite(carry=ocp.args.StandardSave(_storable(carry)),
                                                       meta=ocp.args.JsonSave(record)), force=True)
        manager.wait_until_finished()

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
            manager.close()

    @staticmethod
    def _read_meta(manager: ocp.CheckpointManager, sequence: int) -> dict:
        restored = manager.restore(sequence, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored.meta)

    def meta(self, which: str) -> dict | None:
        """The meta dict (with "step", without the fingerprint) of the newest readable ``which``
        checkpoint; None when there is none."""
        self._check_kind(which)
        manager, sequences = self._finalised(which)
        try:
            for sequence in sequences:
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

    @staticmethod
    def _check_kind(which: str) -> None:
        if which not in KINDS:
            raise InputError(f"checkpoint '{which}' is not one of {', '.join(KINDS)}")

    def restore(self, which: str, template) -> tuple[Any, dict]:
        """Restore the newest loadable ``which`` checkpoint into ``template``'s structure.

        ``template`` is a carry of the right structure (``trainer.init`` with the run's config); its
        values are ignored, its shardings are reused. Returns (carry, meta). A missing, corrupt or
        structurally different checkpoint raises InputError naming the folder and the fix.
        """
        self._check_kind(which)
        manager, sequences = self._finalised(which)
        try:
            return self._restore_newest(which, manager, sequences, template)
        finally:
            self._release(manager)

    def _restore_newest(self, which, manager, sequences, template):
        path = self.paths[which]
        fix = "start without --resume, or pick another run dir"
        if not sequences:
            raise InputError(f"no finished '{which}' checkpoint in '{path}': {fix}")
        wanted = structure_fingerprint(template)
        abstract = _abstract(template)
        problems = []
        for sequence in sequences:
            step_dir = path / str(sequence)
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
                restored = manager.restore(
                    sequence, args=ocp.args.Composite(carry=ocp.args.StandardRestore(abstract)))
            except Exception as err:
                problems.append(f"'{step_dir}': {type(err).__name__}")
                continue
            if problems:
                warnings.warn(f"skipped unreadable checkpoint(s) {'; '.join(problems)}; restored '{step_dir}'")
            return _rewrap(restored.carry, template), record
        raise InputError(f"checkpoint '{path}' is corrupt ({'; '.join(problems)}): {fix}")

    def close(self) -> None:
        for manager in self._writers.values():
            manager.wait_until_finished()
            manager.close()
        self._writers = {}

    def __enter__(self) -> "RunCheckpoints":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

