"""The compiled program of one group of HPO trials: B trials as one vmapped ``train_chunk``.

Batched trials (B > 1) stack B trials' HParams on a leading axis and run
``jit(vmap(train_chunk))`` (and ``vmap(init)``): one compiled program advances all B trials
(HParams leaves are traced; docs/DESIGN.md invariant 4). A member that is pruned or diverges stops
learning at once: the ``alive`` mask selects its old carry after every chunk. B = 1 uses the
trainer's own jitted functions, unstacked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from tbjax.learner.trainer import Trainer


def stack_trees(trees: list) -> Any:
    """Pytrees with one structure → one pytree with a leading trial axis."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)


@dataclass
class Program:
    """The compiled functions of one static signature (B = 1: the trainer's own)."""

    trainer: Trainer
    init: Callable
    chunk: Callable
    batch: int

    @property
    def stacked(self) -> int | None:
        """Members on the carry's leading axis (``run_chunks``' ``batch``); None for B = 1."""
        return None if self.batch == 1 else self.batch

    def start(self, key, hparams, data):
        """The initial carry: one key for every member (common random numbers)."""
        return self.init(key if self.batch == 1 else jnp.stack([key] * self.batch), hparams, data)

    def advance(self, carry, hparams, alive, data):
        """One chunk for every member; a dead member (``alive`` False) keeps its carry."""
        if self.batch == 1:
            return self.chunk(carry, hparams, data)
        return self.chunk(carry, hparams, jnp.asarray(alive), data)


def batched_program(trainer: Trainer, batch: int) -> Program:
    """``jit(vmap(init))`` and ``jit(vmap(train_chunk))`` with the alive mask, carry donated."""

    def init(keys, hps, data):
        return jax.vmap(trainer.init, in_axes=(0, 0, None))(keys, hps, data)

    def chunk(carry, hps, alive, data):
        new, metrics = jax.vmap(trainer.train_chunk, in_axes=(0, 0, None))(carry, hps, data)

        def keep(n, o):
            return jnp.where(alive.reshape(alive.shape + (1,) * (n.ndim - 1)), n, o)

        return jax.tree_util.tree_map(keep, new, carry), metrics

    return Program(trainer, jax.jit(init), jax.jit(chunk, donate_argnums=0), batch)


def program_for(trainer: Trainer, batch: int) -> Program:
    """B = 1: the trainer's own jitted functions; B > 1: :func:`batched_program`."""
    return Program(trainer, trainer.init, trainer.train_chunk, 1) if batch == 1 else batched_program(trainer, batch)
