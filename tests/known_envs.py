"""Small envs with known answers, with the market env's reset/step signature.

Both follow the trainer's Env protocol (tbjax.env.protocol): reset(key, params, data) -> (obs, state),
step(key, state, action, params, data) -> (obs, state, reward, done, info) with the info keys
the trainer reads. ``data`` is unused (pass None). Their params are flax structs whose float
fields are traced leaves, so changing reward_scale or the NaN switch never recompiles.

RiskChoiceEnv: a one-step bandit with a constant observation. Action 0 ("safe") pays
N(0.10, 0.05^2); action 1 ("risky") pays 0.30 w.p. 0.95 and -1.5 w.p. 0.05: mean 0.21 > 0.10,
but CVaR_0.1 = (0.05 * -1.5 + 0.05 * 0.30) / 0.1 = -0.6 against about 0.01 for the safe arm.
A risk-neutral learner must pick action 1, a CVaR_0.1 learner action 0.

PhaseCycleEnv: the phase p advances 0, 1, ..., P-1, 0, ... each step; the observation is
one-hot(p); the reward is reward_scale * (p + 1) / P whatever the action; episodes never
terminate and are truncated after ``time_limit`` steps (then restart at a random phase). With
correct bootstrapping on truncation the value is the infinite-horizon one,
V(p) = sum_k gamma^k r((p + k) mod P), which :func:`phase_cycle_values` computes in closed form.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

SAFE_MEAN, SAFE_STD = 0.10, 0.05
RISKY_WIN, RISKY_LOSS, RISKY_LOSS_PROB = 0.30, -1.5, 0.05


@flax.struct.dataclass
class KnownEnvParams:
    """reward_scale multiplies every reward; nan_reward > 0 turns every reward into NaN."""

    reward_scale: jax.Array
    nan_reward: jax.Array


def make_known_params(reward_scale: float = 1.0, nan_reward: bool = False) -> KnownEnvParams:
    return KnownEnvParams(
        reward_scale=jnp.asarray(reward_scale, jnp.float32),
        nan_reward=jnp.asarray(1.0 if nan_reward else 0.0, jnp.float32),
    )


@flax.struct.dataclass
class CounterState:
    step: jax.Array  # int32 steps in the current episode
    phase: jax.Array  # int32
    episode_return: jax.Array  # f32


def _scaled(reward, params: KnownEnvParams):
    reward = reward * params.reward_scale
    return jnp.where(params.nan_reward > 0, jnp.nan, reward)


def _info(terminated, truncated, ret, length, final_obs):
    return {
        "terminated": terminated,
        "truncated": truncated,
        "tradable": jnp.array(True),
        "symbol": jnp.array(0, jnp.int32),
        "episode_return": ret,
        "episode_length": length.astype(jnp.int32),
        "final_equity": jnp.exp(ret),
        "final_obs": final_obs,
    }


class RiskChoiceEnv:
    """One-step risky-vs-safe bandit (see the module docstring)."""

    obs_dim = 2

    def __hash__(self):
        return hash(type(self))

    def __eq__(self, other):
        return type(self) is type(other)

    def observation_size(self, params, data) -> int:
        return self.obs_dim

    def n_actions(self, params) -> int:
        return 2

    def action_mode(self, params) -> str:
        return "discrete"

    def _obs(self):
        return jnp.ones((self.obs_dim,), jnp.float32)

    def reset(self, key, params, data):
        zero = jnp.zeros((), jnp.int32)
        return self._obs(), CounterState(zero, zero, jnp.zeros((), jnp.float32))

    def step(self, key, state, action, params, data):
        key_safe, key_risky = jax.random.split(key)
        safe = SAFE_MEAN + SAFE_STD * jax.random.normal(key_safe)
        loss = jax.random.uniform(key_risky) < RISKY_LOSS_PROB
        risky = jnp.where(loss, RISKY_LOSS, RISKY_WIN)
        reward = _scaled(jnp.where(action == 0, safe, risky), params)
        info = _info(jnp.array(True), jnp.array(False), reward, jnp.ones((), jnp.int32), self._obs())
        _, new_state = self.reset(key, params, data)
        return self._obs(), new_state, reward, jnp.array(True), info


class PhaseCycleEnv:
    """Deterministic reward cycle with a time limit (see the module docstring)."""

    def __init__(self, n_phases: int = 4, time_limit: int = 7):
        self.n_phases = n_phases
        self.time_limit = time_limit

    def __hash__(self):
        return hash((type(self), self.n_phases, self.time_limit))

    def __eq__(self, other):
        return type(self) is type(other) and (self.n_phases, self.time_limit) == (
            other.n_phases, other.time_limit)

    def observation_size(self, params, data) -> int:
        return self.n_phases

    def n_actions(self, params) -> int:
        return 2

    def action_mode(self, params) -> str:
        return "discrete"

    def _obs(self, phase):
        return jax.nn.one_hot(phase, self.n_phases, dtype=jnp.float32)

    def reset(self, key, params, data):
        phase = jax.random.randint(key, (), 0, self.n_phases)
        state = CounterState(jnp.zeros((), jnp.int32), phase, jnp.zeros((), jnp.float32))
        return self._obs(phase), state

    def step(self, key, state, action, params, data):
        reward = _scaled((state.phase + 1).astype(jnp.float32) / self.n_phases, params)
        phase = (state.phase + 1) % self.n_phases
        steps = state.step + 1
        ret = state.episode_return + reward
        truncated = steps >= self.time_limit
        final_obs = self._obs(phase)
        reset_obs, reset_state = self.reset(key, params, data)
        cont_state = CounterState(steps, phase, ret)
        new_state = jax.tree_util.tree_map(
            lambda a, b: jnp.where(truncated, a, b), reset_state, cont_state
        )
        obs = jnp.where(truncated, reset_obs, final_obs)
        info = _info(jnp.array(False), truncated, ret, steps, final_obs)
        return obs, new_state, reward, truncated, info


def phase_cycle_values(n_phases: int, gamma: float, reward_scale: float = 1.0) -> np.ndarray:
    """V(p) = sum_k gamma^k r((p + k) mod P) by solving V = r + gamma * shift(V) (NumPy)."""
    rewards = reward_scale * (np.arange(n_phases) + 1.0) / n_phases
    shift = np.roll(np.eye(n_phases), 1, axis=1)  # (shift @ V)[p] = V[(p + 1) mod P]
    return np.linalg.solve(np.eye(n_phases) - gamma * shift, rewards)
