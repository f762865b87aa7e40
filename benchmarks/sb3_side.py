"""The Stable-Baselines3 side of the peer benchmarks (vs_sb3, learning_speed, policy_quality): the
Gymnasium twin's host market and SB3's vectorised envs and learners.

Kept apart from ``benchmarks.common`` because only the peer comparisons need it: stable-baselines3,
sb3-contrib and torch are imported inside the functions, so this module loads without them and
``have_sb3`` says whether the peer side can run. The settings come from ``benchmarks.learners``
(``PPO_SETTINGS``, ``HIDDEN``, ``DEFAULT_PPO``), so both learners are configured from one place.
"""

from __future__ import annotations

import numpy as np

from benchmarks.learners import DEFAULT_PPO, HIDDEN, PPO_SETTINGS
from tbjax.data.market import MarketData


def host_market(market: MarketData) -> MarketData:
    """A NumPy copy of MarketData for the Gymnasium twin (cheap to pickle into SubprocVecEnv)."""
    import jax

    return jax.tree_util.tree_map(np.asarray, market)


def have_sb3() -> bool:
    """Whether stable-baselines3 is installed (the ``bench`` / ``test`` extras): the peer side runs."""
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        return False
    return True


def sb3_vec_env(market: MarketData, params, n_envs: int, vec: str, seed: int):
    """n_envs twins in a DummyVecEnv or SubprocVecEnv, observations normalised by VecNormalize
    (running mean/var like tbjax's RunningStats, clip 10; rewards NOT normalised)."""
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

    from tbjax.env.gym import MarketGymEnv

    host = host_market(market)
    fns = [lambda: MarketGymEnv(host, params) for _ in range(n_envs)]
    venv = SubprocVecEnv(fns) if vec == "subproc" else DummyVecEnv(fns)
    venv.seed(seed)
    return VecNormalize(venv, norm_obs=True, norm_reward=False, clip_obs=10.0, gamma=PPO_SETTINGS["gamma"])


def sb3_ppo(venv, n_steps: int, n_epochs: int, n_minibatches: int, seed: int, torch_threads: int = 1,
            window_size: int | None = None):
    """SB3 PPO with the shared settings: 2 x 64 actor and critic, batch split in n_minibatches.

    The same network as tbjax's defaults: with ``ppo.bar_features`` > 0 (needs ``window_size``)
    actor and critic each get their own per-bar encoder (benchmarks/sb3_encoder.py), and with
    ``ppo.weight_decay`` > 0 the optimiser is torch's AdamW (decoupled decay, as tbjax; torch also
    decays biases, a negligible difference at these sizes).

    torch runs single-threaded by default: for 64-wide layers OpenMP's thread hand-offs cost more
    than they save, and on a busy 2-core machine two spinning threads made SB3 10-100x slower
    (measured; see docs/PERFORMANCE.md).
    """
    import torch
    from stable_baselines3 import PPO

    torch.set_num_threads(torch_threads)
    s = PPO_SETTINGS
    policy_kwargs = {"net_arch": {"pi": list(HIDDEN), "vf": list(HIDDEN)}}
    if DEFAULT_PPO.bar_features:
        if window_size is None:
            raise ValueError("sb3_ppo: ppo.bar_features > 0 needs the market's window_size")
        from benchmarks.sb3_encoder import BarFeatures

        policy_kwargs.update(features_extractor_class=BarFeatures, share_features_extractor=False,
                             features_extractor_kwargs={"window_size": window_size,
                                                        "bar_features": DEFAULT_PPO.bar_features})
    if s["weight_decay"]:
        policy_kwargs.update(optimizer_class=torch.optim.AdamW, optimizer_kwargs={"weight_decay": s["weight_decay"]})
    return PPO("MlpPolicy", venv, n_steps=n_steps, batch_size=venv.num_envs * n_steps // n_minibatches,
               n_epochs=n_epochs, learning_rate=s["learning_rate"], gamma=s["gamma"],
               gae_lambda=s["gae_lambda"], clip_range=s["clip_eps"], ent_coef=s["ent_coef"],
               vf_coef=s["vf_coef"], max_grad_norm=s["max_grad_norm"], policy_kwargs=policy_kwargs,
               seed=seed, device="cpu", verbose=0)


def sb3_recurrent_ppo(venv, n_steps: int, n_epochs: int, n_minibatches: int, seed: int, torch_threads: int = 1):
    """sb3-contrib RecurrentPPO with the same settings and sizes as tbjax's recurrent policy:
    separate actor and critic LSTMs of HIDDEN[-1] units (``shared_lstm=False``,
    ``enable_critic_lstm=True``) and 2 x 64 layers, the batch split in n_minibatches (of whole
    sequences, as RecurrentPPO samples them)."""
    import torch
    from sb3_contrib import RecurrentPPO

    torch.set_num_threads(torch_threads)
    s = PPO_SETTINGS
    return RecurrentPPO(
        "MlpLstmPolicy", venv, n_steps=n_steps, batch_size=venv.num_envs * n_steps // n_minibatches,
        n_epochs=n_epochs, learning_rate=s["learning_rate"], gamma=s["gamma"], gae_lambda=s["gae_lambda"],
        clip_range=s["clip_eps"], ent_coef=s["ent_coef"], vf_coef=s["vf_coef"], max_grad_norm=s["max_grad_norm"],
        policy_kwargs={"net_arch": {"pi": list(HIDDEN), "vf": list(HIDDEN)}, "lstm_hidden_size": HIDDEN[-1],
                       "shared_lstm": False, "enable_critic_lstm": True},
        seed=seed, device="cpu", verbose=0)
