"""Learner configuration split into traced hyperparameters and static structure.

docs/DESIGN.md ("Static vs traced"): everything continuous is a float32 leaf of :class:`HParams`, so a new
Optuna trial with new values reuses the compiled trainer, and a leading trial axis can be
vmapped (the rejax split of traced vs static fields). Everything that fixes a shape or the
program's structure lives in the frozen, hashable :class:`TrainerSpec`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from tbjax.agent.networks import POLICIES
from tbjax.config import PPOConfig, TrainConfig, default_config, keys_of_kind
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

LR_SCHEDULES = ("constant", "linear")
PRECISIONS = ("float32", "bfloat16")


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

    Raises InputError for an unknown name or a value outside its valid range.
    """
    unknown = sorted(set(floats) - set(HPARAM_DEFAULTS))
    if unknown:
        raise InputError(
            f"hyperparameters: unknown name(s) {', '.join(unknown)}; "
            f"valid names are {', '.join(HPARAM_DEFAULTS)}"
        )
    values = {**HPARAM_DEFAULTS, **floats}
    for name, value in values.items():
        if isinstance(value, (int, float)) and not math.isfinite(float(value)):
            raise InputError(f"hyperparameters.{name}: got {value}; use a finite number")
    _check_range(values, "gamma", 0.0, 1.0)
    _check_range(values, "gae_lambda", 0.0, 1.0)
    _check_range(values, "popart_beta", 0.0, 1.0)
    _check_range(values, "weight_decay", 0.0, math.inf)
    _check_range(values, "cvar_alpha", 1e-6, 1.0, low_open=False)
    for name in ("learning_rate", "lr_min", "clip_eps", "ent_coef", "vf_coef", "cvar_weight"):
        _check_range(values, name, 0.0, math.inf)
    _check_range(values, "max_grad_norm", 1e-12, math.inf)
    arrays = {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}
    return HParams(env=env_params, **arrays)


def _check_range(values, name, low, high, low_open=False):
    value = values[name]
    if not isinstance(value, (int, float)):
        return  # traced / array values are the caller's responsibility (e.g. stacked trials)
    if value < low or value > high or (low_open and value == low):
        raise InputError(f"hyperparameters.{name}: got {value}; use a value in [{low}, {high}]")


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
        """Raise InputError naming the field and the fix for an inconsistent spec."""
        for name in ("n_envs", "n_steps", "n_epochs", "n_minibatches", "updates_per_chunk",
                     "total_updates", "num_quantiles", "holdout_size", "n_groups", "rnn_size"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"trainer.{name}: got {getattr(self, name)}; use an integer >= 1")
        batch = self.n_envs * self.n_steps
        if batch % self.n_minibatches:
            raise InputError(
                f"trainer.n_minibatches: {self.n_minibatches} does not divide the batch "
                f"n_envs*n_steps = {batch}; choose a divisor of {batch}"
            )
        if self.policy not in POLICIES:
            raise InputError(f"trainer.policy: got {self.policy!r}; use one of {', '.join(POLICIES)}")
        if self.policy != "mlp" and self.n_envs % self.n_minibatches:
            raise InputError(
                f"trainer.n_minibatches: {self.n_minibatches} does not divide n_envs = {self.n_envs}; a "
                f"recurrent policy's minibatches are whole env sequences: choose a divisor of {self.n_envs}"
            )
        if self.n_envs % n_devices:
            raise InputError(
                f"trainer.n_envs: {self.n_envs} is not divisible by the {n_devices} devices of "
                f"the mesh; use a multiple of {n_devices}"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise InputError(
                f"trainer.lr_schedule: got {self.lr_schedule!r}; use one of {', '.join(LR_SCHEDULES)}"
            )
        if self.precision not in PRECISIONS:
            raise InputError(
                f"trainer.precision: got {self.precision!r}; use one of {', '.join(PRECISIONS)}"
            )
        if self.huber_kappa <= 0 or self.obs_clip <= 0 or self.popart_sigma_min <= 0:
            raise InputError(
                "trainer.huber_kappa, trainer.obs_clip and trainer.popart_sigma_min must be > 0; "
                f"got {self.huber_kappa}, {self.obs_clip}, {self.popart_sigma_min}"
            )

    @property
    def compute_dtype(self):
        return jnp.bfloat16 if self.precision == "bfloat16" else jnp.float32
