"""Learner configuration split into traced hyperparameters and static structure.

docs/DESIGN.md ("Static vs traced"): everything continuous is a float32 leaf of :class:`HParams`, so a new
Optuna trial with new values reuses the compiled trainer, and a leading trial axis can be
vmapped (the rejax split of traced vs static fields). Everything that fixes a shape or the
program's structure lives in the frozen, hashable :class:`TrainerSpec`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from tbjax.config import PPOConfig, TrainConfig, default_config, keys_of_kind
from tbjax.config_rules import (PPO_FLOATS, PRECISIONS, check_choice, check_count, check_floats, check_learner_shape,
                                check_learning_rates)
from tbjax.errors import InputError

_PPO, _TRAIN = PPOConfig(), TrainConfig()

# The traced float hyperparameters and why each exists; their DEFAULTS are ppo.* in
# tbjax/config.py (the one place defaults live), read below.
HPARAM_DOCS: dict[str, str] = {
    "learning_rate": "Adam step of PPO (Schulman et al. 2017)",
    "lr_min": "end point of the linear decay (lr_schedule='linear')",
    "gamma": "discount per decision (bar)",
    "gae_lambda": "GAE bias/variance trade-off (Schulman et al. 2016)",
    "clip_eps": "PPO ratio clip",
    "ent_coef": "entropy bonus, keeps the first policy near uniform long enough to explore",
    "vf_coef": "weight of the quantile-Huber critic loss",
    "max_grad_norm": "global-norm gradient clip",
    "cvar_alpha": "tail probability of CVaR_alpha",
    "cvar_weight": "0 = risk-neutral PPO; > 0 adds the Rockafellar-Uryasev CVaR term",
    "popart_beta": "PopArt moment step per update (van Hasselt et al. 2016)",
    "weight_decay": "decoupled weight decay (AdamW, Loshchilov & Hutter 2019): shrinks weights the noise features cannot justify",
}
HPARAM_DEFAULTS: dict[str, float] = {
    name: float(getattr(PPOConfig(), name)) for name in keys_of_kind("traced", "ppo")}


@flax.struct.dataclass
class HParams:
    """Continuous hyperparameters: every leaf a float32 scalar (or the env's params pytree)."""

    learning_rate: jax.Array
    lr_min: jax.Array
    gamma: jax.Array
    gae_lambda: jax.Array
    clip_eps: jax.Array
    ent_coef: jax.Array
    vf_coef: jax.Array
    max_grad_norm: jax.Array
    cvar_alpha: jax.Array
    cvar_weight: jax.Array
    popart_beta: jax.Array
    weight_decay: jax.Array
    env: Any = None


def make_hparams(env_params: Any = None, **floats: float) -> HParams:
    """HParams with the documented defaults (HPARAM_DEFAULTS) overridden by ``floats``.

    Raises InputError for an unknown name or a value outside its valid range: the ppo.* rules of
    :mod:`tbjax.config_rules`, the same ones a config is held to, with the same messages. Array
    values (stacked trials) are the caller's to check.
    """
    unknown = sorted(set(floats) - set(HPARAM_DEFAULTS))
    if unknown:
        raise InputError(
            f"hyperparameters: unknown name(s) {', '.join(unknown)}; "
            f"valid names are {', '.join(HPARAM_DEFAULTS)}"
        )
    values = {**HPARAM_DEFAULTS, **floats}
    check_floats("ppo", values, PPO_FLOATS)
    check_learning_rates(values["learning_rate"], values["lr_min"])
    arrays = {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}
    return HParams(env=env_params, **arrays)


@dataclasses.dataclass(frozen=True)
class TrainerSpec:
    """Static structure of the trainer: shapes and program layout only (hashable).

    Defaults are read from the config's defaults (tbjax/config.py), never written here.

    n_envs x n_steps transitions per update, split into n_minibatches for each of n_epochs;
    updates_per_chunk updates are fused in one compiled call; total_updates sets the length of
    the linear learning-rate decay. holdout_size transitions of the initial policy are kept to
    track the critic's EV on a fixed set (clamped to n_envs * n_steps). n_groups is the number of
    symbols for the grouped EV.
    """

    n_envs: int = _PPO.n_envs
    n_steps: int = _PPO.n_steps
    n_epochs: int = _PPO.n_epochs
    n_minibatches: int = _PPO.n_minibatches
    updates_per_chunk: int = _TRAIN.updates_per_chunk
    total_updates: int = default_config().n_updates
    hidden_sizes: tuple = tuple(_PPO.hidden_sizes)
    num_quantiles: int = _PPO.num_quantiles
    non_crossing: bool = _PPO.non_crossing
    shared_torso: bool = _PPO.shared_torso
    policy: str = _PPO.policy
    rnn_size: int = _PPO.rnn_size
    bar_features: int = _PPO.bar_features
    huber_kappa: float = _PPO.huber_kappa
    obs_clip: float = _PPO.obs_clip
    lr_schedule: str = _PPO.lr_schedule
    precision: str = _TRAIN.precision
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
