"""Per-bar feature encoder shared across the observation's window.

The market part of an observation is ``window_size`` rows of F features (tbjax.env.observation:
4 account values first, then the rows oldest first). A plain first layer reads all
``window_size * F`` values with its own weight for every (bar, feature) pair, so with 32 bars of
19 features and 64 units it holds 39 k weights, most of which can only learn noise, and it costs
that many multiply-adds per observation.

The encoder maps EACH row to ``bar_features`` values with ONE small dense layer shared by every
bar (a 1-D convolution of width 1 over time, the "shared per-timestep encoder" of temporal
convolutional and deep-LOB models, e.g. Zhang, Zohren & Roberts 2019, "DeepLOB"), then hands the
flattened [window_size * bar_features] codes plus the account values to the torso. With
bar_features = 4 the first two layers cost 32*19*4 + (32*4 + 4)*64 = 10.9 k multiply-adds instead
of 39.2 k, and the same feature at different lags is read through the same weights, which is the
prior a time series deserves.

Separate actor and critic torsos each have their own codes, but they read the same rows, so one
dense layer with ``torsos * bar_features`` outputs computes both (columns ``t * bar_features``
onwards belong to torso t): the observation, the largest array of the update, is then read once
per forward and once per backward pass instead of once per torso. The columns are independent,
so this is exactly two encoders side by side (tests/agent/test_bar_encoder.py).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ACCOUNT_VALUES = 4  # tbjax.env.observation.N_ACCOUNT_FEATURES (the agent layer does not import env)


class BarEncoder(nn.Module):
    """obs [..., 4 + window_size * F] -> one [..., 4 + window_size * bar_features] per torso.

    Attributes:
        window_size: bars in the observation (env.window_size).
        bar_features: codes per bar and torso (ppo.bar_features).
        torsos: how many torsos get their own codes (2: separate actor and critic).
    """

    window_size: int
    bar_features: int
    torsos: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        account, window = obs[..., :ACCOUNT_VALUES], obs[..., ACCOUNT_VALUES:]
        n_features = window.shape[-1] // self.window_size
        if n_features * self.window_size != window.shape[-1]:
            raise ValueError(f"observation of {obs.shape[-1]} values is not 4 + window_size "
                             f"({self.window_size}) x features")
        rows = window.reshape(window.shape[:-1] + (self.window_size, n_features))
        codes = nn.tanh(nn.Dense(self.torsos * self.bar_features, kernel_init=nn.initializers.orthogonal(math.sqrt(2.0)),
                                 bias_init=nn.initializers.zeros, dtype=self.dtype, param_dtype=jnp.float32,
                                 name="per_bar")(rows))
        k, out = self.bar_features, []
        for t in range(self.torsos):
            mine = codes[..., t * k:(t + 1) * k] if self.torsos > 1 else codes
            flat = mine.reshape(mine.shape[:-2] + (self.window_size * k,))
            out.append(jnp.concatenate([account.astype(flat.dtype), flat], axis=-1))
        return tuple(out)
