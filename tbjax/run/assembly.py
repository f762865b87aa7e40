"""From a Config to what the compiled trainer needs: EnvParams → HParams → TrainerSpec → Trainer.

The ONE assembly of every path that trains or acts from a Config (training runs, HPO trials,
walk-forward, ``tbjax.load_policy``): :func:`assemble` returns an :class:`Assembly`, whose
trainer comes from the process-wide cache :func:`trainer_for`, so two paths with the same static
signature share one set of compiled functions. The pieces (``env_params_from_config``,
``hparams_from_config``, ``spec_from_config``) stay public for callers that need EnvParams of
another role or with overrides (evaluation walks, ``TradingPolicy.target_positions``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tbjax.config import Config, EnvConfig, keys_of_kind
from tbjax.data.market import ROLE_TRAIN
from tbjax.env import market as market_env
from tbjax.env.market import EnvParams
from tbjax.learner.trainer import HParams, Trainer, TrainerSpec, make_hparams

# Every EnvParams field that has an env.* key of the same name: copied from the config as it is
# (lists as tuples). ``role`` is the caller's; ``liquidity_multipliers`` is read from the file
# that ``env.liquidity_seasonality`` names.
_CONFIG_ENV_KEYS = {f.name for f in dataclasses.fields(EnvConfig)}
ENV_KEYS = tuple(f.name for f in dataclasses.fields(EnvParams) if f.name in _CONFIG_ENV_KEYS)


def env_params_from_config(cfg: Config, role: int = ROLE_TRAIN, **static_overrides) -> EnvParams:
    """EnvParams of ``role`` from ``cfg.env`` (every key of :data:`ENV_KEYS`), validated by
    ``make_env_params``; ``static_overrides`` replace any of them."""
    e = cfg.env
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k in ENV_KEYS for v in (getattr(e, k),)}
    kwargs["role"] = role
    if e.liquidity_seasonality:
        kwargs["liquidity_multipliers"] = market_env.load_liquidity_multipliers(e.liquidity_seasonality)
    kwargs.update(static_overrides)
    return market_env.make_env_params(**kwargs)


def spec_from_config(cfg: Config, n_groups: int) -> TrainerSpec:
    p, t = cfg.ppo, cfg.train
    return TrainerSpec(
        n_envs=p.n_envs, n_steps=p.n_steps, n_epochs=p.n_epochs, n_minibatches=p.n_minibatches,
        updates_per_chunk=t.updates_per_chunk, total_updates=cfg.n_updates,
        hidden_sizes=tuple(p.hidden_sizes), num_quantiles=p.num_quantiles, non_crossing=p.non_crossing,
        shared_torso=p.shared_torso, policy=p.policy, rnn_size=p.rnn_size, bar_features=p.bar_features, huber_kappa=p.huber_kappa, obs_clip=p.obs_clip,
        lr_schedule=p.lr_schedule, precision=t.precision, n_groups=max(1, n_groups),
    )


HPARAM_FIELDS = keys_of_kind("traced", "ppo")


def hparams_from_config(cfg: Config, env_params) -> HParams:
    return make_hparams(env_params, **{k: getattr(cfg.ppo, k) for k in HPARAM_FIELDS})


_TRAINERS: dict = {}


def trainer_for(spec: TrainerSpec, env_params) -> Trainer:
    """One compiled trainer per COMPLETE static signature, shared within the process.

    The key is everything the compiled functions depend on besides their traced arguments: the
    TrainerSpec, the action space (the network's output: ``env.action_mode`` and the number of
    actions), the window (the per-bar encoder reads ``env.window_size`` rows) and the device count
    (the mesh). Runs, HPO trials and tests with the same signature
    reuse its compiled init / train_chunk / policy_apply (and the backtest walk, whose cache keys
    on policy_apply) instead of recompiling.
    """
    import jax

    from tbjax.env.protocol import MarketEnv
    from tbjax.learner.trainer import make_mesh, make_trainer

    key = (spec, env_params.action_mode, market_env.n_actions(env_params), env_params.window_size, jax.device_count())
    if key not in _TRAINERS:
        _TRAINERS[key] = make_trainer(spec, MarketEnv(), env_params,
                                      mesh=make_mesh() if jax.device_count() > 1 else None)
    return _TRAINERS[key]


@dataclass(frozen=True)
class Assembly:
    """What one Config compiles to: train-role EnvParams, HParams, TrainerSpec and (:attr:`trainer`)
    the shared compiled trainer."""

    env_params: EnvParams  # role ROLE_TRAIN: the trainer's; evaluation passes its role separately
    hparams: HParams
    spec: TrainerSpec

    @property
    def trainer(self) -> Trainer:
        """The compiled trainer of :attr:`spec` from the shared cache (:func:`trainer_for`), looked
        up when first asked for: HPO assembles a trial when it plans it and builds its trainer
        when its group trains, as training builds its trainer when the session is made."""
        return trainer_for(self.spec, self.env_params)


def assemble(cfg: Config, n_symbols: int) -> Assembly:
    """Config (validated) + the experiment's number of symbols → :class:`Assembly`, in the order
    every path builds them: EnvParams (train role) → HParams → TrainerSpec."""
    env_params = env_params_from_config(cfg, ROLE_TRAIN)
    return Assembly(env_params, hparams_from_config(cfg, env_params), spec_from_config(cfg, n_groups=n_symbols))
