"""From a Config to what the compiled trainer needs: EnvParams → HParams → TrainerSpec → Trainer.

The ONE assembly of every path that trains or acts from a Config (training runs, HPO trials,
walk-forward, ``tbjax.load_policy``): :func:`assemble` returns an :class:`Assembly`, whose
trainer comes from the process-wide cache :func:`trainer_for`, so two paths with the same static
signature share one set of compiled functions. The pieces (``env_params_from_config``,
``hparams_from_config``, ``spec_from_config``) stay public for callers that need EnvParams of
another role or with overrides (evaluation walks, ``TradingPolicy.target_positions``).

It is also the one adapter between the config and the layers below it, which never read the
config: each piece copies the settings tbjax/config.py declares ``traced()`` / ``static()`` by
that declaration (no field is listed here), and :func:`make_env_params`, :func:`make_hparams` and
:func:`make_spec` give code that builds them by hand (tests, benchmarks, notebooks) the config's
defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tbjax.agent.hparams import HParams, TrainerSpec, checked_hparams
from tbjax.config import Config, default_config, keys_of_kind
from tbjax.data.market import ROLE_TRAIN
from tbjax.env import market as market_env
from tbjax.env.market import EnvParams
from tbjax.errors import InputError
from tbjax.learner.trainer import Trainer


def declared(cfg: Config, section: str, kind: str) -> dict:
    """``section``'s settings declared ``kind`` (traced / static) in tbjax/config.py, by name
    (lists as tuples: static values are hashed)."""
    values = getattr(cfg, section)
    return {k: tuple(v) if isinstance(v, list) else v
            for k in keys_of_kind(kind, section) for v in (getattr(values, k),)}


def env_params_from_config(cfg: Config, role: int = ROLE_TRAIN, **overrides) -> EnvParams:
    """EnvParams of ``role`` from every traced and static ``env.*`` key of ``cfg``, validated by
    :func:`tbjax.env.market.checked_env_params` (the reward-shaping weights passed as such);
    ``overrides`` replace any of them. ``liquidity_multipliers`` is read from the file that
    ``env.liquidity_seasonality`` names."""
    settings = {**declared(cfg, "env", "traced"), **declared(cfg, "env", "static"), "role": role}
    if cfg.env.liquidity_seasonality:
        settings["liquidity_multipliers"] = market_env.load_liquidity_multipliers(cfg.env.liquidity_seasonality)
    settings.update(overrides)
    shaping = {k: settings.pop(k) for k in keys_of_kind("shaping", "env")}
    return market_env.checked_env_params(shaping=shaping, **settings)


def make_env_params(**settings) -> EnvParams:
    """EnvParams (train role unless ``role`` is given) with the config's ``env.*`` defaults,
    ``settings`` replacing any of them."""
    return env_params_from_config(default_config(), **settings)


def spec_from_config(cfg: Config, n_groups: int) -> TrainerSpec:
    """The TrainerSpec of every static ``ppo.*`` and ``train.*`` key (TrainerSpec's fields of the same
    names), the run's length in updates and the number of symbols."""
    return TrainerSpec(**declared(cfg, "ppo", "static"), **declared(cfg, "train", "static"),
                       total_updates=cfg.n_updates, n_groups=max(1, n_groups))


def make_spec(**fields) -> TrainerSpec:
    """TrainerSpec with the config's defaults, ``fields`` replacing any of them."""
    return dataclasses.replace(spec_from_config(default_config(), n_groups=1), **fields)


def hparams_from_config(cfg: Config, env_params) -> HParams:
    """HParams of every traced ``ppo.*`` key of ``cfg`` and ``env_params``."""
    return checked_hparams(env_params, **declared(cfg, "ppo", "traced"))


def make_hparams(env_params=None, **floats: float) -> HParams:
    """HParams with the config's ``ppo.*`` defaults overridden by ``floats``.

    Raises InputError for an unknown name, or (:func:`tbjax.agent.hparams.checked_hparams`) a value
    outside its valid range, with the message a config gets.
    """
    defaults = declared(default_config(), "ppo", "traced")
    unknown = sorted(set(floats) - set(defaults))
    if unknown:
        raise InputError(f"hyperparameters: unknown name(s) {', '.join(unknown)}; "
                         f"valid names are {', '.join(defaults)}")
    return checked_hparams(env_params, **{**defaults, **floats})


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
