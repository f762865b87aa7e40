"""tbjax's per-bar window encoder (tbjax/agent/bar_encoder.py) as an SB3 features extractor, so the
peer benchmarks give Stable-Baselines3 the same network when ``ppo.bar_features`` > 0.

Imported only where SB3 and torch are installed (the ``bench`` / ``test`` extras).
"""

from __future__ import annotations

import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

ACCOUNT_VALUES = 4  # observation = 4 account values, then window_size rows of features


class BarFeatures(BaseFeaturesExtractor):
    """obs [B, 4 + window * F] -> [B, 4 + window * bar_features]: each row through ONE shared
    Linear(F, bar_features) + tanh, the account values passed through."""

    def __init__(self, observation_space, window_size: int, bar_features: int):
        n_obs = int(observation_space.shape[0])
        self.window, self.n_features = window_size, (n_obs - ACCOUNT_VALUES) // window_size
        super().__init__(observation_space, features_dim=ACCOUNT_VALUES + window_size * bar_features)
        self.per_bar = torch.nn.Linear(self.n_features, bar_features)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        rows = obs[:, ACCOUNT_VALUES:].reshape(-1, self.window, self.n_features)
        return torch.cat([obs[:, :ACCOUNT_VALUES], torch.tanh(self.per_bar(rows)).flatten(1)], dim=1)
