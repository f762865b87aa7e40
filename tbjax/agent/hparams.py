"""Learner configuration split into traced hyperparameters and static structure.

docs/DESIGN.md ("Static vs traced"): everything continuous is a float32 leaf of :class:`HParams`, so a new
Optuna trial with new values reuses the compiled trainer, and a leading trial axis can be
vmapped (the rejax split of traced vs static fields). Everything that fixes a shape or the
program's structure lives in the frozen, hashable :class:`TrainerSpec`.

Neither is declared a second time here: the leaves of HParams are the ``ppo.*`` keys that
tbjax/config.py declares ``traced()`` (their defaults and their docs live there), and
:mod:`tbjax.run.assembly` builds both from the config's declarations (``make_hparams``,
``make_spec`` give the config's defaults to code that builds them by hand). This module receives
values and judges them by the rules of :mod:`tbjax.config_rules`; it never reads the config.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from tbjax.config_rules import (PPO_FLOATS, PRECISIONS, check_choice, check_count, check_floats, check_learner_shape,
                                check_learning_rates)
from tbjax.errors import InputError
from tbjax.settings_tree import SettingsTree


class HParams(SettingsTree):
    """Continuous hyperparameters: a float32 leaf per traced ``ppo.*`` key, by that name
    (``hp.learning_rate``), and ``hp.env``, the env's :class:`~tbjax.env.market.EnvParams` (its
    own traced leaves: reward shaping and costs). Stacked trials or members: leaves ``[members]``."""

    __slots__ = ()


def checked_hparams(env_params=None, **floats) -> HParams:
    """HParams of exactly ``floats`` (float32 leaves) and ``env_params``.

    Raises InputError for a value outside its valid range: the ppo.* rules of
    :mod:`tbjax.config_rules`, the same ones a config is held to, with the same messages. Array
    values (stacked trials) are the caller's to check. Which names exist and their defaults are
    the config's: :func:`tbjax.run.assembly.make_hparams` fills them in.
    """
    check_floats("ppo", floats, PPO_FLOATS)
    check_learning_rates(floats.get("learning_rate"), floats.get("lr_min"))
    return HParams({**{k: jnp.asarray(v, jnp.float32) for k, v in floats.items()}, "env": env_params})


@dataclasses.dataclass(frozen=True)
class TrainerSpec:
    """Static structure of the trainer: shapes and program layout only (hashable).

    The fields above ``total_updates`` are the ``ppo.*`` and ``train.*`` keys tbjax/config.py
    declares ``static()``, by the same names; :func:`tbjax.run.assembly.spec_from_config` copies
    them by that declaration and :func:`tbjax.run.assembly.make_spec` gives the config's defaults.

    n_envs x n_steps transitions per update, split into n_minibatches for each of n_epochs;
    updates_per_chunk updates are fused in one compiled call; total_updates sets the length of
    the linear learning-rate decay. holdout_size transitions of the initial policy are kept to
    track the critic's EV on a fixed set (clamped to n_envs * n_steps). n_groups is the number of
    symbols for the grouped EV.
    """

    n_envs: int
    n_steps: int
    n_epochs: int
    n_minibatches: int
    hidden_sizes: tuple
    policy: str
    rnn_size: int
    bar_features: int
    num_quantiles: int
    non_crossing: bool
    shared_torso: bool
    huber_kappa: float
    obs_clip: float
    lr_schedule: str
    updates_per_chunk: int
    precision: str
    total_updates: int  # derived: cfg.n_updates
    popart_sigma_min: float = 1e-4
    holdout_size: int = 1024
    n_groups: int = 1

    def validate(self, n_devices: int = 1) -> None:
        """Raise InputError naming the key and the fix: the ppo.* shape rules of
        :mod:`tbjax.config_rules` (the same a config is held to), then what only the trainer knows."""
        check_learner_shape(self)
        check_count("train.updates_per_chunk", self.updates_per_chunk)
        check_choice("train.precision", self.precision, PRECISIONS)
        for name in ("total_updates", "holdout_size", "n_groups"):  # derived, not config keys
            check_count(f"TrainerSpec.{name}", getattr(self, name))
        if not self.popart_sigma_min > 0:
            raise InputError(f"TrainerSpec.popart_sigma_min must be > 0, got {self.popart_sigma_min}")
        if self.n_envs % n_devices:
            raise InputError(
                f"ppo.n_envs = {self.n_envs} is not divisible by the {n_devices} devices of "
                f"the mesh; use a multiple of {n_devices}"
            )

    @property
    def compute_dtype(self):
        return jnp.bfloat16 if self.precision == "bfloat16" else jnp.float32
