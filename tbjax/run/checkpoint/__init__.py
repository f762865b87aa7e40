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

Modules: :mod:`~tbjax.run.checkpoint.store` (:class:`RunCheckpoints`, what callers use), made of
:mod:`~tbjax.run.checkpoint.folders` (the two folders' orbax managers),
:mod:`~tbjax.run.checkpoint.save`, :mod:`~tbjax.run.checkpoint.restore` and
:mod:`~tbjax.run.checkpoint.survey` (what a folder holds, without a template); beneath them
:mod:`~tbjax.run.checkpoint.carry` (the carry as plain arrays, the structure fingerprint),
:mod:`~tbjax.run.checkpoint.files` (commit marker, file list, damage check, save errors) and
:mod:`~tbjax.run.checkpoint.quiet` (:func:`~tbjax.run.checkpoint.quiet.quiet_orbax`, around every
orbax call: orbax's background tasks echo a failed read or write as dozens of tracebacks the
exception already says).
"""

from tbjax.run.checkpoint.store import RunCheckpoints

__all__ = ["RunCheckpoints"]
