"""A walk-forward of ONE fold goes through the same vmapped driver as several (issue 26: no host-side
branch on the member count). One fold is a population of one: its program is the lone trainer's own
(unstacked), and the driver used to hand it the folds' stacked keys, HParams and data (a traceback
from ``jax.random.split``). Checked against the sequential driver, the other path: same best
objective at the same update."""

from __future__ import annotations

import pytest

from tbjax.config import load_config
from tbjax.walkforward import driver as wfm
from tiny_run_config import synthetic_market

TINY = [
    "ppo.n_envs=8", "ppo.n_steps=16", "ppo.n_epochs=2", "ppo.n_minibatches=2", "ppo.hidden_sizes=[16, 16]",
    "ppo.num_quantiles=8", "env.episode_len=64", "train.total_env_steps=512", "train.updates_per_chunk=2",
    "train.eval_every=2", "walkforward.seeds=1", "walkforward.folds=1", "eval.edge_confidence=0", "train.patience=0",
]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf_one")
    processed = synthetic_market(root, "proc", symbols=2, bars=1500, timeframe="1h", seed=0)
    return load_config("configs/base.yaml", TINY + [f"data.processed_dir={processed}"])


def test_one_fold_vmapped_equals_sequential(cfg):
    vmapped = wfm.build_folds(cfg)
    assert len(vmapped.folds) == 1
    program, data = wfm.fold_program(vmapped)
    assert program.stacked_members is None and data is vmapped.folds[0].market  # the lone learner's own layout
    wfm.train_vmapped(vmapped)
    sequential = wfm.build_folds(cfg)
    wfm.train_sequential(sequential)
    (v_objective, v_update, *_), = vmapped.best
    (s_objective, s_update, *_), = sequential.best
    assert v_update == s_update and v_objective == pytest.approx(s_objective, rel=1e-6, abs=1e-9)
