"""Populations: the carries of ``n_members`` learners on one leading axis (the member axis), trained
by ONE compiled program, and the ensemble policy that acts for several of them.

One mechanism for every population tbjax trains:

* seeds of one training run (``train.population``): the market data is shared (``data_axis``
  None), each member has its own key, so its own network init, env draws, observation and
  PopArt statistics;
* batched HPO trials (``hpo.batch``): shared data, stacked HParams (traced leaves, so a new
  trial's values never recompile);
* walk-forward folds: the market's arrays are shared, only each fold's role ranges and feature
  scaling (fit on its train rows) are stacked on the member axis (``data_axis``: a MarketData-shaped
  ``in_axes`` prefix, 0 on those leaves, None on the rest; :func:`tbjax.data.market.stack_folds`).

``jit`` of ``train_chunk`` mapped over the members. How the members are mapped depends on the
backend (``member_batch``): on a GPU or TPU ``vmap`` (every member in one batched step: small
batches fill a wide device), on a CPU ``lax.map`` one member at a time inside the same compiled
program (measured on 2 cores: a vmapped member axis made every matmul and gather a batched one
and trained 7-12 % slower than the same members one by one). Either way the members do not
interact, so member i of a population equals a lone run with member i's key, hparams and data (a
test checks it, and that both mappings agree). The initial carry is NOT
vmapped: each member runs the trainer's own compiled ``init`` (one rollout, run once per member)
and one small compiled stack joins them, so a population compiles the same ``init`` as a lone run
instead of a second, batched one (2-core CPU, K = 4 folds: about 12 % less CPU time than the
batched init's compile and run). A
member that is pruned or diverges stops learning at once: when members are stepped one by one a
``lax.cond`` skips its chunk altogether (a pruned HPO trial stops costing compute); when they are
batched, the ``alive`` mask selects its old carry after every chunk.

One member is not stacked: :func:`population_program` of one member is the trainer's own jitted
``init`` / ``train_chunk`` on its own carry (no member axis). That carry is the format of every lone
run's, HPO trial's and walk-forward fold's checkpoint, which ``tbjax.evaluate`` and
``tbjax.load_policy`` read, and the trainer's own program is what a lone run has always compiled
(the same numbers). :class:`Program` is the one place that knows it: callers hand it per-member
values as a list (:meth:`Program.members`) and read ``stacked_members``, and never test the count.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tbjax.env.observation import POSITION_INDEX
from tbjax.learner.trainer import Trainer


def stack_trees(trees: list) -> Any:
    """Pytrees with one structure → one pytree with a leading member axis. Host (NumPy) leaves stay
    on the host: with several processes a checkpoint is saved from host copies, and orbax refuses a
    device array that lives on one process's devices only."""
    def stack(*xs):
        if all(isinstance(x, np.ndarray) for x in xs):
            return np.stack(xs)
        return jnp.stack([jnp.asarray(x) for x in xs])

    return jax.tree_util.tree_map(stack, *trees)


def member_keys(seed: int, n_members: int) -> jax.Array:
    """Member i's key is ``PRNGKey(seed + i)``: member i of a population trains exactly as a lone
    run with ``train.seed = seed + i``, and member 0 as the run without a population."""
    return jnp.stack([jax.random.PRNGKey(seed + i) for i in range(n_members)])


@dataclass
class Program:
    """The compiled functions of one static signature over ``n_members`` members (one member: the
    trainer's own, unstacked; module docstring)."""

    trainer: Trainer
    init: Callable
    chunk: Callable
    n_members: int

    @property
    def stacked_members(self) -> int | None:
        """Members on the carry's leading axis (``run_chunks``' ``n_members``); None when unstacked."""
        return None if self.n_members == 1 else self.n_members

    def members(self, trees: list, stacked: Any = None) -> Any:
        """Per-member values (keys, HParams, data: one per member, in member order) as this program
        takes them: stacked on the member axis (``stacked`` when the caller stacked them by its own
        rule, e.g. walk-forward folds' shared arrays once), or the lone member's own value."""
        if self.n_members == 1:
            return trees[0]
        return stack_trees(trees) if stacked is None else stacked

    def start(self, key, hparams, data):
        """The initial carry: one key for every member (common random numbers) unless ``key`` is
        already one row per member (:meth:`members`)."""
        if self.n_members > 1 and jnp.ndim(key) == 1:
            key = jnp.stack([key] * self.n_members)
        return self.init(key, hparams, data)

    def _args(self, alive) -> tuple:
        """The ``alive`` mask, which only the stacked chunk takes (the trainer's own has no member to skip)."""
        return () if self.n_members == 1 else (jnp.asarray(alive),)

    def compile(self, carry, hparams, data) -> None:
        """Compile the chunk for these arguments now (jit's cache keeps it for the first call)."""
        self.chunk.lower(carry, hparams, *self._args(np.ones(self.n_members, bool)), data).compile()

    def advance(self, carry, hparams, alive, data):
        """One chunk for every member; a dead member (``alive`` False) keeps its carry."""
        return self.chunk(carry, hparams, *self._args(alive), data)


_PROGRAMS: dict = {}


@jax.jit
def _stack(members: list) -> Any:
    """Member carries → one carry with a leading member axis (one compiled program for all leaves)."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *members)


@jax.jit
def take_member(tree: Any, i) -> Any:
    """Member ``i`` of every leaf of a device ``tree`` with a leading member axis: ONE compiled
    program per tree structure (indexing leaf by leaf compiles a slice for every distinct leaf
    shape, about 40 for a carry)."""
    return jax.tree_util.tree_map(lambda x: x[i], tree)


def member_data(data: Any, axes, i: int) -> Any:
    """Member ``i``'s data: ``data`` itself when shared (``axes`` None), else its leaves with axis 0
    taken at ``i`` and the shared ones (axis None) passed through untouched (never copied)."""
    if axes is None:
        return data
    mapped, rebuild = _split_data(data, axes)
    return rebuild(take_member(mapped, i))


def _axes_key(axes):
    """A hashable form of an ``in_axes`` tree (its None / int leaves and its structure)."""
    leaves, treedef = jax.tree_util.tree_flatten(axes, is_leaf=lambda x: x is None)
    return tuple(leaves), treedef


def default_member_batch(n_members: int) -> int:
    """Members stepped together: all of them on an accelerator, one at a time on a CPU (module
    docstring)."""
    return 1 if jax.default_backend() == "cpu" else n_members


def _split_data(data: Any, axes):
    """(the per-member leaves to map over, a function rebuilding member data from one row of them);
    shared leaves (axis None) are closed over, never copied per member."""
    if axes is None:
        return (), lambda _: data
    if isinstance(axes, int):
        return data, lambda row: row
    leaves, treedef = jax.tree_util.tree_flatten(axes, is_leaf=lambda a: a is None)
    subtrees = treedef.flatten_up_to(data)
    mapped = [x for a, x in zip(leaves, subtrees) if a is not None]

    def rebuild(row):
        it = iter(row)
        return treedef.unflatten([x if a is None else next(it) for a, x in zip(leaves, subtrees)])

    return mapped, rebuild


def _skip_dead(trainer: Trainer, rebuild: Callable) -> Callable:
    """One member's chunk inside ``lax.map`` (members one by one): ``lax.cond`` on the member's
    ``alive`` flag, so a pruned or diverged member costs nothing (its carry passes through and its
    metrics are zeros, which every caller ignores for a dead member). Under vmap a cond would run
    both branches, so there the mask selects after the step instead."""

    def one(xs):
        carry, hps, alive, row = xs

        def train(_):
            return trainer.train_chunk(carry, hps, rebuild(row))

        def idle(_):
            shapes = jax.eval_shape(train, None)[1]
            return carry, jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        return jax.lax.cond(alive, train, idle, None)

    return one


def population_program(trainer: Trainer, n_members: int, data_axis=None, member_batch: int | None = None) -> Program:
    """A jitted ``init`` and ``train_chunk`` over ``n_members`` members, carry donated.

    ``data_axis`` None: the MarketData is shared; 0: stacked, one per member; a pytree prefix of
    the data (``jax.vmap``'s ``in_axes``): per leaf. ``member_batch``: members stepped together
    (``n_members``: one vmap; 1: ``lax.map`` one by one; None: :func:`default_member_batch`). One
    member: the trainer's own jitted functions, unstacked (module docstring). Programs are cached
    per signature, so a second population with the same one never recompiles.
    """
    if n_members == 1:  # the lone learner's own program and carry format (module docstring)
        return Program(trainer, trainer.init, trainer.train_chunk, 1)
    member_batch = min(n_members, member_batch or default_member_batch(n_members))
    key = (trainer, n_members, _axes_key(data_axis), member_batch)
    if key in _PROGRAMS:
        return _PROGRAMS[key]

    def init(keys, hps, data):
        members = [trainer.init(*take_member((keys, hps), i), member_data(data, data_axis, i))
                   for i in range(n_members)]
        return _stack(members)

    def chunk(carry, hps, alive, data):
        if member_batch == n_members:
            new, metrics = jax.vmap(trainer.train_chunk, in_axes=(0, 0, data_axis))(carry, hps, data)
        else:
            mapped, rebuild = _split_data(data, data_axis)
            if member_batch == 1:  # the cond already passes a dead member's carry through: no select
                return jax.lax.map(_skip_dead(trainer, rebuild), (carry, hps, alive, mapped))
            new, metrics = jax.lax.map(lambda xs: trainer.train_chunk(xs[0], xs[1], rebuild(xs[2])),
                                       (carry, hps, mapped), batch_size=member_batch)

        def keep(n, o):
            return jnp.where(alive.reshape(alive.shape + (1,) * (n.ndim - 1)), n, o)

        return jax.tree_util.tree_map(keep, new, carry), metrics

    _PROGRAMS[key] = Program(trainer, init, jax.jit(chunk, donate_argnums=0), n_members)
    return _PROGRAMS[key]


def _closest(candidates: jax.Array, cost: jax.Array) -> jax.Array:
    """The candidates (a boolean mask over the last axis) of least ``cost``; float32 ties within 1e-6."""
    cost = jnp.where(candidates, cost, jnp.inf)
    return candidates & (cost <= jnp.min(cost, axis=-1, keepdims=True) + 1e-6)


def ensemble_action(member_actions: jax.Array, action_mode: str, position_levels,
                    current_position: jax.Array | None = None) -> jax.Array:
    """The ensemble's action from its members' actions ``[members, ...]``.

    Continuous: the mean of the members' actions clipped to [-1, 1]; the env maps an action to a
    target position affinely, so this IS the mean of the members' target positions. Discrete: the
    level nearest the mean of the members' target levels, so the ensemble stays in the env's
    action space. Ties (frequent: 4 members over {-1, 0, 1} put the mean exactly between two
    levels whenever they split 2-2) are broken in this order:

    1. the level nearest ``current_position`` (the position the account holds, ``[...]``), i.e. the
       one that trades least: holding on an even split is a no-trade band of one member's vote,
       the shape of the optimal policy under proportional costs (Davis & Norman 1990, "Portfolio
       selection with transaction costs", Math. Oper. Res. 15(4));
    2. the less exposed level (smaller |level|), so the ensemble never takes more risk than its
       average member;
    3. the level nearest the FIRST member's: a long/short split of equal exposure (levels with no
       0, such as [-1, 1], while flat or without a held position) has no majority direction, and
       the chosen members are stacked best val objective first (``run.population``), so the
       member with the most val evidence decides instead of the order of the levels (which sent
       every such tie short).
    """
    if action_mode == "continuous":
        return jnp.mean(jnp.clip(member_actions, -1.0, 1.0), axis=0)
    levels = jnp.asarray(position_levels, jnp.float32)
    mean = jnp.mean(levels[member_actions], axis=0)
    candidates = _closest(jnp.ones(mean.shape + levels.shape, bool), jnp.abs(mean[..., None] - levels))
    if current_position is not None:
        held = jnp.asarray(current_position, jnp.float32)[..., None]
        candidates = _closest(candidates, jnp.abs(levels - held))
    candidates = _closest(candidates, jnp.abs(levels))
    candidates = _closest(candidates, jnp.abs(levels - levels[member_actions[0]][..., None]))
    return jnp.argmax(candidates, axis=-1).astype(member_actions.dtype)


def held_position(obs: jax.Array) -> jax.Array:
    """The position the account holds, read from the market env's observation ``[..., obs_dim]``
    (its first account value, :mod:`tbjax.env.observation`)."""
    return obs[..., POSITION_INDEX]


@dataclasses.dataclass(frozen=True, eq=False)
class Ensemble:
    """Acting of stacked members (hashable by identity: a static argument of the compiled walk).

    Called like a trainer's acting function; ``step`` carries every member's recurrent state
    (stacked on the member axis, zero at a split's start) for GRU / LSTM members, and is the plain
    call for feed-forward ones.
    """

    base: Callable
    action_mode: str
    position_levels: tuple
    n_members: int

    def _keys(self, key):
        return None if key is None else jax.random.split(key, self.n_members)

    def __call__(self, params, obs_stats, obs, deterministic: bool = True, key=None):
        keys = self._keys(key)

        def one(p, s, k):
            return self.base(p, s, obs, deterministic, key=k)

        actions = jax.vmap(one, in_axes=(0, 0, None if keys is None else 0))(params, obs_stats, keys)
        return ensemble_action(actions, self.action_mode, self.position_levels, held_position(obs))

    def step(self, params, obs_stats, hidden, obs, deterministic: bool = True, key=None):
        if not hasattr(self.base, "step"):
            return self(params, obs_stats, obs, deterministic, key), hidden
        keys = self._keys(key)

        def one(p, s, h, k):
            return self.base.step(p, s, h, obs, deterministic, key=k)

        actions, hidden = jax.vmap(one, in_axes=(0, 0, 0, None if keys is None else 0))(params, obs_stats, hidden, keys)
        return ensemble_action(actions, self.action_mode, self.position_levels, held_position(obs)), hidden

    def initial_hidden(self, batch: tuple[int, ...]):
        h = self.base.initial_hidden(batch) if hasattr(self.base, "initial_hidden") else None
        return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (self.n_members, *x.shape)), h)


@functools.lru_cache(maxsize=64)
def _ensemble(policy_apply: Callable, action_mode: str, position_levels: tuple, n_members: int) -> Ensemble:
    return Ensemble(policy_apply, action_mode, position_levels, n_members)


def ensemble_apply(policy_apply: Callable, action_mode: str, position_levels, n_members: int) -> Ensemble:
    """The acting function of ``n_members`` stacked members' (params, obs_stats): every member acts on
    the raw observation with ITS OWN frozen statistics (and its own recurrent state), then
    :func:`ensemble_action` combines them.

    Sampled (non-deterministic) evaluation gives each member its own stream of ``key``. One
    object per (policy, action space, member count): the compiled walk takes it as a static argument,
    so a second evaluation of an ensemble never recompiles.
    """
    return _ensemble(policy_apply, action_mode, tuple(float(v) for v in position_levels), int(n_members))
