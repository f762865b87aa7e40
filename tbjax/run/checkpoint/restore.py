"""Restoring the newest loadable checkpoint of a kind into a template (docs: :mod:`tbjax.run.checkpoint`).

Restore skips step folders without orbax's commit marker (a partial copy, a failed rename on
another file system) and steps whose files are missing, truncated or changed (their file list,
:func:`tbjax.run.checkpoint.files.step_damage`), and falls back, with one warning, to the newest
earlier step that loads. A step saved for a carry of another structure is refused with the leaf
that differs (:func:`tbjax.run.checkpoint.carry.describe_mismatch`), never read into a wrong one.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import orbax.checkpoint as ocp

from tbjax.errors import InputError
from tbjax.run.checkpoint.carry import abstract, describe_mismatch, rewrap, structure_fingerprint
from tbjax.run.checkpoint.files import step_damage
from tbjax.run.checkpoint.folders import CheckpointFolders
from tbjax.run.checkpoint.quiet import quiet_orbax

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


class CheckpointRestores(CheckpointFolders):
    """``restore`` a carry, and the ``meta`` (training step, bookkeeping) of the newest intact step."""

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
