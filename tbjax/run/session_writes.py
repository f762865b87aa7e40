"""What a training run writes into its run directory, and in which order (docs/DESIGN.md, invariant 6
"Atomic outputs").

* Building a session only READS; :meth:`SessionWrites.setup_run_dir` then writes config.yaml,
  run_info.json, feature_pipeline.json and dataset/ all or nothing (:class:`tbjax.run.rundir.RunDirSetup`;
  :meth:`SessionWrites.undo_setup` removes them again), so a bad input or an interrupt before
  training leaves no half-made run directory.
* After each chunk its metrics row (:mod:`tbjax.run.metrics_log`), THEN, after an evaluation,
  :meth:`SessionWrites.keep_checkpoints`: the "best" checkpoint when the val objective improved
  (a population: every member's best carry, stacked, when any member improved), then "latest"
  with the member book's meta, which ``--resume`` restores the book from.
* Several JAX processes: all of them gather the carry (a collective), process 0 alone writes.
"""

from __future__ import annotations

import math

import jax

from tbjax.evaluation.objective import finite_or_zero
from tbjax.run.distributed import host_copy
from tbjax.run.rundir import RunDirSetup, export_run_dataset, run_write


class SessionWrites:
    """The run-directory side of :class:`tbjax.run.session.TrainingSession`, which sets what these
    methods read: ``cfg``, ``run_dir``, ``write`` (this process owns the run directory), ``quiet``,
    ``exp``, ``ckpt`` (:class:`tbjax.run.checkpoint.RunCheckpoints`), ``book`` (the member book),
    ``n_members``, ``update`` and ``saved_update`` (update of the newest "latest" on disk)."""

    _setup: RunDirSetup | None = None

    def setup_run_dir(self, config_text: str, fresh: bool, run_info: dict | None = None,
                      changes: dict | None = None) -> None:
        """Write what a run needs before its first chunk, all or nothing (:meth:`RunDirSetup.write`):
        fresh, run_info.json, config.yaml, feature_pipeline.json and dataset/; on resume only what
        changed (``changes`` {key: [old, new]} go to run_info.json's "resumes") or is missing."""
        self._setup = RunDirSetup(self.run_dir, fresh)
        self._setup.write(config_text, run_info, changes, self.update,
                          save_pipeline=lambda tmp: self.exp.pipeline.save(str(tmp)), export=self._export_dataset)

    def undo_setup(self) -> None:
        """Remove what :meth:`setup_run_dir` wrote (best effort): the folder as the user had it,
        minus the leftovers a fresh start cleared."""
        setup, self._setup = self._setup, None
        if setup is not None:
            setup.undo()

    def _export_dataset(self) -> None:
        """dataset/ as one unit (:func:`tbjax.run.rundir.export_run_dataset`)."""
        export_run_dataset(self.run_dir, self.exp, self.cfg)

    def _latest_meta(self, save: dict) -> dict:
        """What a checkpoint records besides the carry: the chunk's bookkeeping, the best objective so
        far (None before any evaluation: JSON has no -inf) and, for a population, every member's best
        and the members chosen on val (resume restores the book from it, evaluation reads the choice)."""
        best = self.best_objective if math.isfinite(self.best_objective) else None
        book = self.book.meta(self.cfg.train.ensemble_top_k) if self.n_members > 1 else self.book.selection_meta()
        return {**save, **book, "best_objective": best}

    def _save_latest(self, carry, meta: dict) -> None:
        with run_write(self.ckpt.paths["latest"]):
            self.ckpt.save_latest(self.update, carry, meta)
        self.saved_update = self.update

    def keep_checkpoints(self, carry, save: dict, val_sortino) -> None:
        """After an evaluation: the best checkpoint when the objective improved, then "latest".
        A population saves every member's best carry, stacked, when any member improved."""
        carry = host_copy(carry)  # several processes: all gather, process 0 saves
        if self.book.improved and self.write:
            population = self.n_members > 1
            best = self.book.best_carry(carry) if population else carry
            meta = self._latest_meta(save) if population else save
            with run_write(self.ckpt.paths["best"]):
                self.ckpt.save_best(self.update, best, meta)
        self.book.improved = False
        if self.write:
            self._save_latest(carry, self._latest_meta(save))
        self.saved_update = self.update  # on every process: the end-of-run save decision is then the same on all
        if self.quiet:  # other processes print the same line, marked
            who = "" if self.write else f"[process {jax.process_index()}] "
            print(f"{who}update {self.update}/{self.cfg.n_updates}  val sortino {finite_or_zero(val_sortino):.3f}  "
                  f"objective {save['objective']:.3f}", flush=True)

    def save_interrupted(self, carry) -> None:
        """A run stopped before its end (a signal, ``max_chunks``): "latest" at the current update,
        unless the last evaluation just saved it."""
        if self.saved_update != self.update:
            host = host_copy(carry)  # every process (a collective), then process 0 saves
            if self.write:
                self._save_latest(host, self._latest_meta({"update": self.update,
                                                         "env_steps": self.update * self.cfg.batch_size}))
