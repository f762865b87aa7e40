"""The member book: each member's best evaluation so far, one definition for every kind of member.

A member is one learner of a compiled program: the lone learner of a training run, a seed of a
population run (``train.population``), an HPO trial (``hpo.batch`` of them trained together) or a
walk-forward fold. Each evaluation is offered to the book (:meth:`MemberBook.offer`: member,
objective, update, carry); the book keeps that member's best objective, the update it came at, its
val Sortino and a host copy of its carry, and counts the evaluations since that best
(``train.patience``, :class:`tbjax.run.patience.Patience`). It also keeps every evaluation's "look":
its val active Sharpe against the baseline, which the deployment test deflates by
(:func:`tbjax.evaluation.deployment.decide`: the deployed carry is the best of these looks).

The host copy (:func:`owned_host_copy`) owns its memory. On a CPU, ``jax.device_get`` and
``np.asarray`` of a ``jax.Array`` return zero-copy, read-only NumPy views of the device buffer
(JAX 0.10.2: the same address, ``owndata`` False). ``train_chunk`` donates the carry, so such a view
kept across the next chunk pins a buffer that chunk was told to reuse: measured on JAX 0.10.2 with
the trainer's 78-leaf carry, the runtime then quietly skips the donation (no leaf is reused or
deleted; XLA allocates new ones, so every kept view costs a second copy of its buffer while it
lives) and the kept values stay right. It neither blocked nor corrupted the copy here, but nothing
should rest on that runtime detail, so the book keeps no view. ``np.array(x, copy=True)`` per leaf
is one copy, and the cheapest measured on a 2-core CPU (a 3.4 MB carry: 0.19 ms, vs 0.49 ms for
``device_get`` then a copy and 0.36 ms for ``device_get``'s views alone).
tests/run/test_member_book.py provokes the donation and checks the book's copy.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import numpy as np

from tbjax.evaluation.deployment import val_look
from tbjax.learner.population import stack_trees
from tbjax.run.chunks import take
from tbjax.run.distributed import host_copy
from tbjax.run.patience import Patience
from tbjax.run.population import select_members


def owned_host_copy(tree: Any) -> Any:
    """``tree`` with every leaf a NumPy array that owns its memory: never a view of a device buffer
    that a later compiled call may donate (module docstring)."""
    return jax.tree_util.tree_map(lambda x: np.array(x, copy=True), tree)


class Offer(NamedTuple):
    """What one evaluation did: a new best for its member; the evaluation that stopped it (patience)."""

    improved: bool
    stopped: bool


class MemberBook:
    """Every member's best evaluation: objective, update, val Sortino and carry (owning host copies).

    ``patience``: ``train.patience`` (0: never stop). ``keep_first``: a member's first evaluation is
    kept whatever its objective (walk-forward: every fold deploys some carry); otherwise only an
    objective above the best so far is, so -inf means "never evaluated" and a NaN is never kept.
    """

    def __init__(self, n_members: int, patience: int = 0, keep_first: bool = False, baseline: str | None = None):
        self.n_members, self.keep_first, self.baseline = n_members, keep_first, baseline
        self.looks: list[list[float]] = [[] for _ in range(n_members)]  # val_look of every evaluation
        self.objective = [-math.inf] * n_members
        self.update: list[int | None] = [None] * n_members
        self.val_sortino: list[float | None] = [None] * n_members
        self.carries: list = [None] * n_members
        self.patience = Patience(n_members, patience)
        self.improved = False  # some member improved since the caller last reset it (a "best" checkpoint is due)

    def offer(self, i: int, objective: float, update: int, carry=None, val_sortino: float | None = None,
              val_eval: dict | None = None) -> Offer:
        """One evaluation of member ``i``: keep it when ``objective`` is the member's new best, count it
        for patience, record its look (``val_eval`` against the book's baseline). ``carry`` None:
        nothing to keep (a lone training run writes its best to disk)."""
        look = None if val_eval is None or self.baseline is None else val_look(val_eval, self.baseline)
        if look is not None:
            self.looks[i].append(look)
        # several processes: the member's env axis spans every process's devices, so its global
        # values are gathered first; a collective, so every process gathers, improved or not
        gathered = None if carry is None else host_copy(carry)
        improved = objective > self.objective[i] or (self.keep_first and self.update[i] is None)
        if improved:
            self.objective[i], self.update[i], self.val_sortino[i] = objective, update, val_sortino
            self.carries[i] = None if gathered is None else owned_host_copy(gathered)
            self.improved = True
        return Offer(improved, self.patience.record(i, improved))

    def best(self, i: int):
        """Member ``i``'s (objective, update, carry, val Sortino); None before its first kept evaluation."""
        if self.update[i] is None:
            return None
        return self.objective[i], self.update[i], self.carries[i], self.val_sortino[i]

    def best_carry(self, current):
        """The members' best carries stacked; a member without one contributes its ``current`` carry."""
        return stack_trees([c if c is not None else owned_host_copy(take(current, i))
                            for i, c in enumerate(self.carries)])

    def meta(self, top_k: int | None) -> dict:
        """A population checkpoint's record of the book (``--resume`` restores it; evaluation reads
        the members chosen on val)."""
        finite = [o if math.isfinite(o) else None for o in self.objective]
        return {"member_objective": finite, "member_update": self.update, "member_val_sortino": self.val_sortino,
                "selected": select_members(finite, top_k), **self.selection_meta()}

    def selection_meta(self) -> dict:
        """What every checkpoint records of the selection itself: patience counts and the val looks."""
        return {**self.patience.meta(), "member_looks": self.looks}

    def all_looks(self) -> list[float]:
        return [x for member in self.looks for x in member]

    def restore(self, meta: dict, best_carry=None) -> None:
        """From a checkpoint's meta (and its restored "best" carry) on resume. A lone run's meta holds
        its best as ``best_objective``; keys a checkpoint lacks (an older format) stay empty."""
        n = self.n_members
        saved = meta.get("member_objective")
        if saved is None and n == 1:
            saved = [meta.get("best_objective")]
        self.objective = [-math.inf if o is None else float(o) for o in (saved or [])][:n]
        self.objective += [-math.inf] * (n - len(self.objective))
        self.update = list(meta.get("member_update", [None] * n))
        self.val_sortino = list(meta.get("member_val_sortino", [None] * n))
        self.patience.restore(meta)
        looks = list(meta.get("member_looks") or [])[:n]
        self.looks = [list(x) for x in looks] + [[] for _ in range(n - len(looks))]
        if best_carry is not None:
            self.carries = [owned_host_copy(take(best_carry, i)) if self.update[i] is not None else None
                            for i in range(n)]
