"""What a training run does at the chunk loop's hooks (:class:`tbjax.run.chunks.ChunkHooks`).

:class:`TrainingChunks` is a lone run: a diverged update is an error, an evaluation is the
validation objective offered to the member book, and each chunk logs its row, then (after an
evaluation) saves the best and latest checkpoints, then moves the progress bar.
:class:`PopulationChunks` is a population's members (``train.population``): a member whose NaN
guard fires stops alone, every evaluation is offered with the member's carry, and the row is the
members' mean of each training metric and the median (and best) of their val objectives. The
session they drive is a :class:`tbjax.run.session.TrainingSession`.
"""

from __future__ import annotations

import time

import numpy as np

from tbjax.errors import InputError
from tbjax.evaluation.objective import finite_or_zero
from tbjax.run.chunks import Chunk, ChunkHooks
from tbjax.run.metrics_log import reduce_chunk_metrics


class TrainingChunks(ChunkHooks):
    """A training run at the chunk loop's hooks (one member, no vmap): a diverged update is an
    error; an evaluation is the validation objective; each chunk logs its row, then (after an
    evaluation) saves the best and latest checkpoints, then moves the progress bar."""

    def __init__(self, session, stop, bar):
        self.session, self.stop_flag, self.bar = session, stop, bar
        self.row: dict = {}
        self.save: dict | None = None
        self.last_val: dict = {}
        self.t0 = time.perf_counter()

    def stop(self) -> bool:
        return (self.stop_flag is not None and self.stop_flag.raised) or self.stopped_early()

    def stopped_early(self) -> bool:
        """Every member stopped by ``train.patience`` (the run is finished, not interrupted)."""
        return self.session.book.patience.all_stopped()

    def _offer(self, i: int, value: float, chunk: Chunk, val_eval: dict, carry=None, val_sortino=None) -> None:
        """Member ``i``'s evaluation to the book (:class:`tbjax.run.member_book.MemberBook`)."""
        session = self.session
        if session.book.offer(i, value, chunk.update, carry, val_sortino, val_eval).stopped:
            print(f"note: {session.member_name(i)} stops at update {chunk.update} of {session.cfg.n_updates}: no new best val objective "
                  f"in {session.book.patience.patience} evaluations (train.patience)", flush=True)

    def record(self, i: int, metrics: dict, chunk: Chunk) -> None:
        self.row = {"update": chunk.update, "env_steps": chunk.update * self.session.cfg.batch_size,
                    **reduce_chunk_metrics(metrics)}
        self.save = None

    def diverged(self, i: int, error, chunk: Chunk) -> None:
        raise InputError(f"NaN guard fired: {error}. The last good checkpoint is in "
                         f"'{self.session.run_dir / 'checkpoints'}'; check the data, or start a new run "
                         "(another --run-dir) with a lower ppo.learning_rate") from None

    def evaluate(self, i: int, carry, chunk: Chunk) -> None:
        value, val_eval, _ = self.session.objective(carry)
        self._offer(i, value, chunk, val_eval)  # no carry: a lone run's best goes straight to disk (_keep)
        pooled = val_eval["pooled"]
        self.last_val = {"val/sortino": pooled["sortino"], "val/sharpe": pooled["sharpe"],
                         "val/total_return": pooled["total_return"], "val/objective": value}
        self.row.update(self.last_val)
        self.save = {"update": chunk.update, "env_steps": self.row["env_steps"], "objective": value}

    def chunk_done(self, carry, chunk: Chunk) -> None:
        session, row = self.session, self.row
        session.update = chunk.update
        row["patience/stopped"] = session.book.patience.n_stopped()
        session.log.append(row)  # before the checkpoint (tbjax.run.metrics_log)
        if self.save is not None:
            session.keep_checkpoints(carry, self.save, self.last_val["val/sortino"])
        steps = (chunk.update - chunk.start) * session.members_steps_per_update
        dt = time.perf_counter() - self.t0
        self.bar.update(steps)
        self.bar.set_postfix({"steps/s": f"{steps / dt:,.0f}",
                              "val_sortino": f"{finite_or_zero(self.last_val.get('val/sortino')):.2f}",
                              "objective": f"{self.last_val.get('val/objective', float('nan')):.2f}",
                              "nan_guard": int(row.get("nan_guard_count", 0))}, refresh=False)
        self.t0 = time.perf_counter()


def _nan_mean(values) -> float:
    """``np.nanmean`` of the members' values, NaN when none has one yet (e.g. the explained-variance
    EMA before its first update) without numpy's "Mean of empty slice" warning, a line in the CLI."""
    v = np.asarray(values, np.float64)
    return float(v[~np.isnan(v)].mean()) if np.any(~np.isnan(v)) else float("nan")


class PopulationChunks(TrainingChunks):
    """A population's members at the chunk loop's hooks: a member whose NaN guard fires stops alone
    (its last good carry is kept; all of them diverging is the error); every evaluation is offered
    to the book with the member's carry; the logged row is the members' mean of each training
    metric and the median (and best) of their val objectives."""

    def __init__(self, session, stop, bar):
        super().__init__(session, stop, bar)
        self.rows: dict[int, dict] = {}
        self.vals: dict[int, tuple[float, float]] = {}
        self.dead: dict[int, str] = {}

    def alive(self):
        return [i not in self.dead and not self.session.book.patience.stopped(i) for i in range(self.session.n_members)]

    def stopped_early(self) -> bool:
        return self.session.book.patience.all_stopped(excluded=self.dead)

    def record(self, i: int, metrics: dict, chunk: Chunk) -> None:
        self.rows[i] = reduce_chunk_metrics(metrics)

    def diverged(self, i: int, error, chunk: Chunk) -> None:
        self.dead[i] = str(error)
        print(f"warning: population member {i} (seed {self.session.cfg.train.seed + i}) diverged at update "
              f"{chunk.update} and stops training; its best carry so far stays: {error}", flush=True)
        if len(self.dead) == self.session.n_members:
            super().diverged(i, error, chunk)

    def evaluate(self, i: int, carry, chunk: Chunk) -> None:
        value, val_eval, _ = self.session.objective(carry)
        self.vals[i] = (value, val_eval["pooled"]["sortino"])
        self._offer(i, value, chunk, val_eval, carry, val_eval["pooled"]["sortino"])

    def chunk_done(self, carry, chunk: Chunk) -> None:
        rows = [r for i, r in self.rows.items() if i not in self.dead] or list(self.rows.values())
        self.row = {"update": chunk.update, "env_steps": chunk.update * self.session.cfg.batch_size,
                    "population/alive": self.session.n_members - len(self.dead),
                    **{k: _nan_mean([r[k] for r in rows]) for k in rows[0]}}
        self.rows, self.save = {}, None
        if self.vals:
            objectives = [v[0] for v in self.vals.values()]
            self.last_val = {"val/objective": float(np.median(objectives)), "val/objective_best": max(objectives),
                             "val/sortino": float(np.median([v[1] for v in self.vals.values()]))}
            self.row.update(self.last_val)
            self.save = {"update": chunk.update, "env_steps": self.row["env_steps"], "objective": max(objectives)}
            self.vals = {}
        super().chunk_done(carry, chunk)
