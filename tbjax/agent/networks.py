"""Actor and quantile critic (flax.linen).

Layout follows PureJaxRL's ActorCritic (luchris429/purejaxrl, ppo.py): tanh MLP torsos with
orthogonal initialisation (scale sqrt(2) in the torso, 0.01 on the policy head so the first
policy is near uniform, 1.0 on the value head), zero biases. The critic outputs N quantiles of
the PopArt-NORMALISED return at levels tau_i = (i + 0.5) / N (see distributional.py); the caller
maps them back with popart.denormalize_value.

PopArt (van Hasselt et al. 2016) needs the critic's LAST operation to be an affine map whose
rescale preserves the unnormalised outputs. It lives at ``params[critic_head_path()]`` with
leaves "kernel" and "bias":
- plain head (non_crossing=False): ``critic_head`` is Dense(num_quantiles), kernel [H, N].
- non-crossing head (non_crossing=True): monotone quantiles first,
  theta_0 free, theta_i = theta_0 + sum_{1<=k<=i} softplus(d_k) (Zhou, Wang & Feng 2020,
  "Non-crossing quantile regression for deep RL", in the simple cumulative-softplus form of
  docs/ALGORITHMS.md), then ``critic_head`` is y = kernel * theta + bias with ONE scalar kernel and
  ONE scalar bias (shape [1], broadcast over quantiles). A shared map keeps the order for any
  kernel > 0; PopArt multiplies the kernel by sigma / sigma' > 0, and the forward pass stops the
  gradient into the kernel, so training cannot flip its sign. The kernel therefore starts at 1
  and changes only through popart_rescale; the shared bias is trainable (order-preserving).

Recurrent policies (``policy`` "gru" or "lstm"; docs/ALGORITHMS.md, "Recurrent policy"): the torso
is the MLP encoder followed by a recurrent core of ``rnn_size`` units, and the heads read the
core's output. The state of every core is one float32 array [..., state_size] (GRU: h; LSTM:
c then h; separate actor and critic cores: actor's then critic's), zeroed where ``reset`` is
true BEFORE the step, so a sequence with an episode start inside equals two separate sequences.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tbjax.agent.bar_encoder import BarEncoder
from tbjax.agent.policy import (  # re-exported: the trainer imports the policy API from here
    ACTION_MODES,
    check_action_mode,
    policy_entropy,
    policy_log_prob,
    policy_mode,
    policy_sample,
)
from tbjax.agent.recurrent import (CELLS, STATE_BIAS, STATE_PARTS, cell_step, input_gates, join_state, sequence,
                                   split_state)
from tbjax.config_rules import POLICIES  # the ppo.policy rule: "mlp" and every CELLS core

__all__ = [
    "ACTION_MODES",
    "POLICIES",
    "ActorCritic",
    "critic_head_path",
    "init_params",
    "policy_entropy",
    "policy_log_prob",
    "policy_mode",
    "policy_sample",
    "state_size",
]

# Clamp for the continuous policy's log standard deviation: std in [e^-5, e^2] ~ [0.007, 7.4].
LOG_STD_MIN = -5.0
LOG_STD_MAX = 2.0
# Initial spread (normalised units) of the non-crossing quantiles: about the +-2 sigma range of
# PopArt-normalised targets, centred on 0.
_INITIAL_QUANTILE_SPREAD = 4.0


def critic_head_path() -> tuple[str, ...]:
    """Path inside ``variables["params"]`` of the critic's final affine map (kernel, bias)."""
    return ("critic_head",)


def _orthogonal(scale: float) -> nn.initializers.Initializer:
    return nn.initializers.orthogonal(scale)


def _inverse_softplus(x: float) -> float:
    return math.log(math.expm1(x))


class MLPTorso(nn.Module):
    """tanh MLP with orthogonal(sqrt 2) kernels and zero biases."""

    hidden_sizes: tuple[int, ...]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden_sizes:
            x = nn.Dense(
                width,
                kernel_init=_orthogonal(math.sqrt(2.0)),
                bias_init=nn.initializers.zeros,
                dtype=self.dtype,
                param_dtype=jnp.float32,
            )(x)
            x = nn.tanh(x)
        return x


class _Weights(nn.Module):
    """Kernel [in, features] (orthogonal) and optional zero bias, declared as a Dense would name them."""

    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, in_features: int):
        kernel = self.param("kernel", _orthogonal(1.0), (in_features, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32) if self.use_bias else None
        return kernel, bias


class _Step(nn.Module):
    """The state matmul's W_h [size, gates * size] (and the GRU's b_h) under ``step/state``."""

    cell: str
    size: int

    @nn.compact
    def __call__(self):
        return _Weights(CELLS[self.cell] * self.size, self.cell in STATE_BIAS, name="state")(self.size)


class RecurrentCore(nn.Module):
    """A GRU (Cho et al. 2014) or LSTM (Hochreiter & Schmidhuber 1997) core with episode resets
    (equations: agent/recurrent.py), over one step (x [B, E], reset [B]) or a time-major sequence
    (x [T, B, E], reset [T, B]); returns (final state [B, state], outputs [(T,) B, size]).

    Parameters: ``input`` (W_x [E, gates * size], b_x) and ``step/state`` (W_h, and b_h for the
    GRU), gates in the order r, z, n (GRU) or i, f, g, o (LSTM). The input projection of all steps
    is computed before the time loop, one matmul per gate (separate arrays, so nothing is sliced or
    concatenated at full sequence size), and the sequence runs through recurrent.sequence; one step
    and a sequence run the same step function, so a replay reproduces the acting steps.
    """

    cell: str
    size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, state: jax.Array, x: jax.Array, reset: jax.Array):
        n_gates, size = CELLS[self.cell], self.size
        w_x, b_x = _Weights(n_gates * size, name="input")(x.shape[-1])
        w_h, b_h = _Step(self.cell, size, name="step")()
        carry = split_state(self.cell, state)
        if reset.ndim == state.ndim - 1:
            gates_x = input_gates(self.dtype, w_x, b_x, x, n_gates)
            carry, out, _ = cell_step(self.cell, self.dtype, w_h, b_h, carry, gates_x, reset)
        else:
            carry, out = sequence(self.cell, self.dtype, w_x, b_x, w_h, b_h, carry, x, reset)
        return join_state(self.cell, carry), out


def state_size(policy: str, rnn_size: int, shared_torso: bool) -> int:
    """Width of the recurrent state array (0 for the MLP policy)."""
    if policy == "mlp":
        return 0
    return (1 if shared_torso else 2) * STATE_PARTS[policy] * rnn_size


def init_params(network: ActorCritic, key: jax.Array, obs_dim: int):
    """Initial variables of ``network`` for observations of width ``obs_dim``."""
    if network.policy == "mlp":
        return network.init(key, jnp.zeros((obs_dim,), jnp.float32))
    size = state_size(network.policy, network.rnn_size, network.shared_torso)
    return network.init(key, jnp.zeros((1, obs_dim), jnp.float32), jnp.zeros((1, size), jnp.float32),
                        jnp.zeros((1,), bool))


class SharedAffine(nn.Module):
    """y = stop_gradient(kernel) * theta + bias with scalar kernel (init 1) and bias (init 0).

    The last layer of the non-crossing critic: order-preserving for kernel > 0, which PopArt's
    rescale keeps and gradient descent cannot break (no gradient reaches the kernel).
    """

    @nn.compact
    def __call__(self, theta: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.ones, (1,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (1,), jnp.float32)
        return jax.lax.stop_gradient(kernel) * theta + bias


class ActorCritic(nn.Module):
    """Policy and quantile critic on a flattened, normalised observation.

    Attributes:
        hidden_sizes: widths of the tanh torso(s).
        n_actions: number of position levels (discrete mode); ignored in continuous mode.
        action_mode: "discrete" (logits) or "continuous" ((mean, log_std) of a pre-tanh Gaussian).
        num_quantiles: N quantiles of the normalised return.
        non_crossing: monotone quantile head (see the module docstring).
        shared_torso: one torso (encoder, and core if recurrent) for actor and critic instead of two.
        policy: "mlp", or "gru" / "lstm": a recurrent core of ``rnn_size`` units after the encoder.
        window_size, bar_features: with bar_features > 0 each torso first encodes every bar of the
            window with one dense layer shared by the bars (agent/bar_encoder.py; the torsos' codes
            come from one layer with a column block per torso); 0 reads the flat window.
        dtype: compute dtype (bfloat16 on GPU/TPU); parameters stay float32, outputs are float32.
    """

    hidden_sizes: tuple[int, ...] = (64, 64)
    n_actions: int = 3
    action_mode: str = "discrete"
    num_quantiles: int = 32
    non_crossing: bool = True
    shared_torso: bool = False
    policy: str = "mlp"
    rnn_size: int = 64
    window_size: int = 0
    bar_features: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, obs: jax.Array, hidden: jax.Array | None = None, reset: jax.Array | None = None):
        """MLP: obs [..., obs_dim] -> (policy_params, quantiles_normalised [..., num_quantiles]).

        Recurrent: (obs [B, obs_dim], hidden [B, state], reset [B]) for one step, or a time-major
        sequence (obs [T, B, obs_dim], hidden [B, state], reset [T, B]) -> (policy_params,
        quantiles, final hidden [B, state]). policy_params: logits [..., n_actions] (discrete) or
        [..., 2] = (mean, log_std).
        """
        check_action_mode(self.action_mode)
        x = jnp.asarray(obs, self.dtype)
        names = ("torso",) if self.shared_torso else ("actor_torso", "critic_torso")
        if self.bar_features:  # per-bar codes for every torso from one dense layer (agent/bar_encoder.py)
            codes = BarEncoder(self.window_size, self.bar_features, len(names), self.dtype, name="bars")(x)
            encoded = [MLPTorso(self.hidden_sizes, self.dtype, name=name)(c) for name, c in zip(names, codes)]
        else:
            encoded = [MLPTorso(self.hidden_sizes, self.dtype, name=name)(x) for name in names]
        if self.policy == "mlp":
            return self._policy_head(encoded[0]), self._critic_head(encoded[-1])
        outs, states = [], []
        for name, e, state in zip(names, encoded, jnp.split(hidden, len(names), axis=-1)):
            state, y = RecurrentCore(self.policy, self.rnn_size, self.dtype, name=f"{name}_core")(state, e, reset)
            outs.append(y.astype(self.dtype))
            states.append(state)
        return self._policy_head(outs[0]), self._critic_head(outs[-1]), jnp.concatenate(states, axis=-1)

    def _dense(self, features: int, scale: float, name: str, bias: float = 0.0) -> nn.Dense:
        return nn.Dense(
            features,
            kernel_init=_orthogonal(scale),
            bias_init=nn.initializers.constant(bias),
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name=name,
        )

    def _policy_head(self, h: jax.Array) -> jax.Array:
        if self.action_mode == "discrete":
            return self._dense(self.n_actions, 0.01, "policy_logits")(h).astype(jnp.float32)
        mean = self._dense(1, 0.01, "policy_mean")(h).astype(jnp.float32)
        # State-independent log std, as in PureJaxRL's continuous ActorCritic.
        log_std = self.param("policy_log_std", nn.initializers.zeros, (1,), jnp.float32)
        log_std = jnp.clip(jnp.broadcast_to(log_std, mean.shape), LOG_STD_MIN, LOG_STD_MAX)
        return jnp.concatenate([mean, log_std], axis=-1)

    def _critic_head(self, h: jax.Array) -> jax.Array:
        n = self.num_quantiles
        if not self.non_crossing:
            return self._dense(n, 1.0, "critic_head")(h).astype(jnp.float32)
        # theta_0 starts near -spread/2 and the increments near spread/(N-1) each, so the
        # initial quantiles cover about [-2, 2] (the range of normalised targets).
        spread = _INITIAL_QUANTILE_SPREAD if n > 1 else 0.0
        theta_0 = self._dense(1, 1.0, "critic_base", bias=-0.5 * spread)(h).astype(jnp.float32)
        if n > 1:
            raw = self._dense(
                n - 1, 0.01, "critic_increments", bias=_inverse_softplus(spread / (n - 1))
            )(h).astype(jnp.float32)
            steps = jnp.cumsum(jax.nn.softplus(raw), axis=-1)
            theta = jnp.concatenate([theta_0, theta_0 + steps], axis=-1)
        else:
            theta = theta_0
        return SharedAffine(name="critic_head")(theta)
