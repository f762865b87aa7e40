"""The Env protocol the learner trains on, and its adapter over the market env.

Any hashable object with these pure functions can be trained (the tests use small envs with
known answers); ``params`` is the env's params pytree (traced leaves + static fields), ``data``
any pytree (the MarketData for the market env). The action space (``n_actions``,
``action_mode``) must depend on static information only: the trainer builds its network from it
once, before anything is traced.

Optional: ``prepare_data(data)``, called once at the top of every compiled program before the
scan that steps the env (the market env z-scores its feature block there, so a step copies a
scaled window instead of scaling it); an env without it gets its data unchanged (:func:`prepared`).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from tbjax.data.market import scaled_once
from tbjax.env import market


class Env(Protocol):
    def reset(self, key, params, data): ...
    def step(self, key, state, action, params, data): ...
    def observation_size(self, params, data) -> int: ...
    def n_actions(self, params) -> int: ...
    def action_mode(self, params) -> str: ...


def prepared(env, data):
    """``data`` as ``env``'s steps read it inside one compiled program (see the module docstring)."""
    prepare = getattr(env, "prepare_data", None)
    return data if prepare is None else prepare(data)


@dataclasses.dataclass(frozen=True)
class MarketEnv:
    """The Env protocol over :mod:`tbjax.env.market` (EnvParams, MarketData)."""

    def reset(self, key, params, data):
        return market.reset(key, params, data)

    def step(self, key, state, action, params, data):
        return market.step(key, state, action, params, data, return_final_obs=True)

    def observation_size(self, params, data) -> int:
        return market.observation_size(params, data)

    def n_actions(self, params) -> int:
        return market.n_actions(params)

    def action_mode(self, params) -> str:
        return params.action_mode

    def prepare_data(self, data):
        return scaled_once(data)
