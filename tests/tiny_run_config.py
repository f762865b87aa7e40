"""A tiny prepared market and run config shared by the subprocess tests (HPO workers, multi-process
training): 2 synthetic hourly symbols of 1,500 bars, 8 envs x 16 steps, one hidden layer of 16."""

from __future__ import annotations

from pathlib import Path

from tbjax.data.prepare import prepare
from tbjax.data.synthetic_dump import write_synthetic_dump


def synthetic_market(root: Path, processed: str = "processed", **dump) -> Path:
    """``write_synthetic_dump(root / "raw", **dump)`` then ``prepare`` into ``root / processed`` (what
    ``python -m tbjax.synth`` and ``python -m tbjax.prepare`` do); returns the processed folder."""
    write_synthetic_dump(root / "raw", **dump)
    prepare(root / "raw", root / processed)
    return root / processed


def tiny_market(root: Path) -> Path:
    """Synthetic raw klines prepared under ``root``; returns the processed folder."""
    return synthetic_market(root, symbols=2, bars=1500, seed=3)


def tiny_body(processed: Path, total_env_steps: int) -> dict:
    """The config as a YAML-ready dict (train: chunks of 2 updates, evaluation every chunk)."""
    return {
        "data": {"processed_dir": str(processed), "train_start": "2020-01-01", "train_end": "2020-02-09",
                 "val_start": "2020-02-10", "val_end": "2020-02-22", "test_start": "2020-02-23",
                 "test_end": "2020-03-03"},
        "env": {"episode_len": 32},
        "ppo": {"n_envs": 8, "n_steps": 16, "n_minibatches": 2, "n_epochs": 1, "hidden_sizes": [16],
                "num_quantiles": 8, "cvar_alpha": 0.25},  # alpha >= 1/num_quantiles (the CVaR floor)
        "train": {"total_env_steps": total_env_steps, "updates_per_chunk": 2, "eval_every": 2, "patience": 0},
        "eval": {"regime_bars": 200, "edge_confidence": 0},  # the agent's machinery (abstention: test_do_no_harm)
        "output": {"tensorboard": False},
    }
