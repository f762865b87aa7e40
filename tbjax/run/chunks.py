"""The chunk loop: ONE definition of what the host does between two compiled chunks.

A training run (:meth:`tbjax.run.session.TrainingSession.train`: one member unstacked, or a seed
population), a group of HPO trials (:meth:`tbjax.hpo.runner.TrialRunner.run_group`) and
walk-forward folds (:mod:`tbjax.walkforward.driver`) all call :func:`run_chunks`, several members
stacked on the carry's leading axis. It owns what they must agree on:

* the schedule (:class:`ChunkSchedule`): chunks of ``train.updates_per_chunk`` updates until
  ``cfg.n_updates``; a chunk evaluates when the updates done so far are a multiple of
  ``train.eval_every`` rounded up to whole chunks (counted from update 0, so a resumed run
  evaluates where the uninterrupted one did), and the last chunk always evaluates;
* the per-chunk metrics fetch (one ``jax.device_get`` for all members);
* the NaN guard of every live member (:func:`tbjax.learner.carry.raise_if_nonfinite`);
* the update counter.

What differs between the callers is a :class:`ChunkHooks` object: which members are still alive
(HPO's mask; a dead member's carry is kept by the stacked program), when to stop early (train's
stop flag; ``max_chunks``), what a chunk's metrics are recorded as (train: a metrics.jsonl row;
HPO: ``lr_applied``), what a diverged member means (train: an error; HPO: PRUNED), what an
evaluation does (train: validation objective → best/latest checkpoints; HPO: report, prune; each
offers it to its member book, :mod:`tbjax.run.member_book`) and what closes a chunk (train: log
row, checkpoints, progress bar; HPO: the last chunk completes the survivors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from tbjax.config import Config
from tbjax.learner.carry import NonFiniteUpdateError, raise_if_nonfinite
from tbjax.learner.population import take_member


def take(tree: Any, i: int) -> Any:
    """Member ``i`` of a pytree with a leading member axis: host (NumPy) trees are indexed in
    place, device trees by :func:`tbjax.learner.population.take_member` (one compiled program)."""
    if all(isinstance(x, (np.ndarray, np.generic)) for x in jax.tree_util.tree_leaves(tree)):
        return jax.tree_util.tree_map(lambda x: x[i], tree)
    return take_member(tree, i)


def member_of(tree: Any, i: int, n_members: int | None) -> Any:
    """Member ``i`` of ``tree``: the tree itself when it is not stacked (``n_members`` None)."""
    return tree if n_members is None else take(tree, i)


@dataclass(frozen=True)
class ChunkSchedule:
    """Which chunks run and which of them evaluate; one rule for training and HPO."""

    updates_per_chunk: int
    total_updates: int
    eval_every: int

    @classmethod
    def of(cls, cfg: Config) -> ChunkSchedule:
        return cls(cfg.train.updates_per_chunk, cfg.n_updates, cfg.train.eval_every)

    @property
    def eval_chunks(self) -> int:
        """``train.eval_every`` in whole chunks (rounded up, at least one)."""
        return max(1, math.ceil(self.eval_every / self.updates_per_chunk))

    def is_last(self, update: int) -> bool:
        return update >= self.total_updates

    def evaluates(self, update: int) -> bool:
        """Whether the chunk that ends with ``update`` updates done evaluates."""
        return (update // self.updates_per_chunk) % self.eval_chunks == 0 or self.is_last(update)

    def chunk_ends(self, start: int = 0) -> list[int]:
        """The update counts after each chunk a run from ``start`` trains."""
        ends, update = [], start
        while update < self.total_updates:
            update += self.updates_per_chunk
            ends.append(update)
        return ends

    def eval_updates(self, start: int = 0) -> list[int]:
        """The update counts at which a run from ``start`` evaluates (train logs ``val/*``, HPO reports)."""
        return [u for u in self.chunk_ends(start) if self.evaluates(u)]


@dataclass(frozen=True)
class Chunk:
    """One chunk just trained: updates done before (``start``) and after (``update``) it."""

    start: int
    update: int
    evaluates: bool
    last: bool


class ChunkHooks:
    """What differs between the callers of :func:`run_chunks`. ``i`` is a member's index (0 for an
    unstacked run); every method has a default, so a caller overrides only what it needs."""

    def alive(self) -> Sequence[bool] | None:
        """Which members still train (read before every chunk); None: all of them."""
        return None

    def stop(self) -> bool:
        """Checked before every chunk: True ends the loop before it (e.g. SIGINT)."""
        return False

    def record(self, i: int, metrics: dict, chunk: Chunk) -> None:
        """Member ``i``'s metrics of ``chunk`` (host arrays, one entry per update), before its NaN guard."""

    def diverged(self, i: int, error: NonFiniteUpdateError, chunk: Chunk) -> None:
        """Member ``i``'s NaN guard fired in ``chunk``; it is not evaluated. Default: raise ``error``."""
        raise error

    def evaluate(self, i: int, carry: Any, chunk: Chunk) -> None:
        """A scheduled evaluation of member ``i`` (its own carry, not stacked)."""

    def chunk_done(self, carry: Any, chunk: Chunk) -> None:
        """After every member of ``chunk`` was checked (and evaluated): the whole carry."""


def run_chunks(advance: Callable[[Any, list[bool]], tuple[Any, dict]], carry: Any, schedule: ChunkSchedule,
               hooks: ChunkHooks, *, n_members: int | None = None, start_update: int = 0,
               max_chunks: int | None = None) -> tuple[Any, int]:
    """Train chunk by chunk from ``start_update`` until ``schedule.total_updates``; returns
    ``(carry, updates done)``.

    ``advance(carry, alive)`` runs one compiled chunk and returns ``(carry, metrics)``; ``alive``
    is the members' mask (a stacked program keeps a dead member's carry). ``n_members``: the
    members stacked on the carry's leading axis, None for one unstacked run (one member without
    vmap). The loop ends early when no member is alive, ``hooks.stop()`` says so, or after
    ``max_chunks`` chunks.
    """
    count = 1 if n_members is None else n_members
    update, done = start_update, 0
    while update < schedule.total_updates:
        alive = hooks.alive()
        alive = [True] * count if alive is None else [bool(a) for a in alive]
        if not any(alive) or hooks.stop() or (max_chunks is not None and done >= max_chunks):
            break
        carry, metrics = advance(carry, alive)
        metrics = jax.device_get(metrics)
        after = update + schedule.updates_per_chunk
        chunk = Chunk(update, after, schedule.evaluates(after), schedule.is_last(after))
        update, done = after, done + 1
        for i in (i for i in range(count) if alive[i]):
            own = member_of(metrics, i, n_members)
            hooks.record(i, own, chunk)
            try:
                raise_if_nonfinite(own, chunk.start)
            except NonFiniteUpdateError as exc:
                hooks.diverged(i, exc, chunk)
                continue
            if chunk.evaluates:
                hooks.evaluate(i, member_of(carry, i, n_members), chunk)
        hooks.chunk_done(carry, chunk)
    return carry, update
