"""The settings both learners share and the tbjax side's builders: the trainer (compiled once per
settings), its hyperparameters, a seed population, and the workload flags of the peer benchmarks."""

from __future__ import annotations

import functools

from tbjax.config import EnvConfig, PPOConfig, TrainConfig

LONG_SHORT = (-1.0, 0.0, 1.0)

# PPO settings shared by both sides: tbjax's own defaults (tbjax/config.py, chosen by the study in
# docs/TUNING.md), so SB3 gets the same tuned values. Learning rate constant on both sides (a
# time-budgeted run has no known end for a decay).
DEFAULT_PPO = PPOConfig()
DEFAULT_ENV = EnvConfig()
DEFAULT_TRAIN = TrainConfig()
PPO_SETTINGS = {k: getattr(DEFAULT_PPO, k) for k in ("learning_rate", "gamma", "gae_lambda", "clip_eps",
                                                     "ent_coef", "vf_coef", "max_grad_norm", "weight_decay")}
HIDDEN = tuple(DEFAULT_PPO.hidden_sizes)


@functools.lru_cache(maxsize=8)
def tbjax_trainer(n_envs: int, n_steps: int, n_epochs: int, n_minibatches: int, updates_per_chunk: int,
                  n_groups: int, total_updates: int = 1_000, position_levels: tuple = LONG_SHORT, mesh=None,
                  policy: str = "mlp", window_size: int = 32):
    """The tbjax trainer over the market env with the shared widths (2 x 64) and a constant lr.

    Cached per settings: benchmarks run in one process (tests, notebooks) reuse one compiled
    trainer instead of compiling the same program again. ``position_levels`` fixes the action
    space (the network's output size), ``mesh`` shards the env axis over devices; ``policy``
    gru / lstm adds separate actor and critic cores of HIDDEN[-1] units after the encoder;
    ``window_size`` is the market's (the per-bar encoder reads the window row by row)."""
    from tbjax.env.protocol import MarketEnv
    from tbjax.learner.trainer import make_trainer
    from tbjax.run.assembly import make_env_params, make_spec

    spec = make_spec(n_envs=n_envs, n_steps=n_steps, n_epochs=n_epochs, n_minibatches=n_minibatches,
                     updates_per_chunk=updates_per_chunk, total_updates=total_updates,
                     hidden_sizes=HIDDEN, lr_schedule="constant", n_groups=n_groups,
                     bar_features=DEFAULT_PPO.bar_features,
                     holdout_size=min(1024, n_envs * n_steps), policy=policy, rnn_size=HIDDEN[-1])
    action_space = make_env_params(action_mode="discrete", position_levels=tuple(position_levels),
                                   window_size=window_size)
    return make_trainer(spec, MarketEnv(), action_space, mesh=mesh)


def tbjax_hparams(params, **overrides: float):
    """HParams of the shared settings (``PPO_SETTINGS``), with ``overrides`` (a study's trial values)."""
    from tbjax.run.assembly import make_hparams

    return make_hparams(params, **{**PPO_SETTINGS, **overrides})


def seed_population(trainer, n_members: int, seed: int, hp, market):
    """(program, hparams, initial carry) of ``n_members`` members with seeds seed .. seed+n_members-1
    trained as one program (``tbjax.learner.population``); one member is the lone trainer with
    ``PRNGKey(seed)``."""
    from tbjax.learner.population import member_keys, population_program

    program = population_program(trainer, n_members)
    hps = program.members([hp] * n_members)
    return program, hps, program.start(program.members(list(member_keys(seed, n_members))), hps, market)


def add_workload_args(p, ppo_shape: bool = True) -> None:
    """The workload flags the peer benchmarks share, so every script describes the same work:
    market size and window, and (``ppo_shape``) the rollout length, epochs and minibatches."""
    p.add_argument("--symbols", type=int, default=4)
    p.add_argument("--bars", type=int, default=20_000)
    p.add_argument("--window", type=int, default=32)
    if ppo_shape:
        p.add_argument("--n-steps", type=int, default=DEFAULT_PPO.n_steps)
        p.add_argument("--epochs", type=int, default=DEFAULT_PPO.n_epochs)
        p.add_argument("--minibatches", type=int, default=DEFAULT_PPO.n_minibatches)
