"""The risk frontier answers on a market whose tail is planted: more CVaR weight, less val tail.

The market (``python -m tbjax.synth --regime STRONG_TREND --crash 0.02``, tbjax.data.synthetic.Crash):
a steady uptrend in which a quarter of the bars fall in fragile spells at a level L in 1..3; a
fragile bar earns 0.4 % more drift but crashes by 5 % with probability 2 % x L, and the taker-buy
ratio falls by 0.1 x L one bar before it. A risk-neutral trader stays long through every spell
(each level's mean stays above the trend's); the more a policy weighs CVaR, the more levels it
steps aside from, and the less of the trend it keeps at the top of the grid.

The answer checked: across the frontier's five ``ppo.cvar_weight`` points (one compiled grid, two
seeds each, common seeds across points) the val per-bar CVaR 5 % loss of each point's ensemble
falls with the weight, Spearman rank correlation <= -0.8, and the risk-neutral point's val return
is above the most risk-averse point's. Measured over ten market x training seeds: rho -1.0 in
seven, -0.9 in three (docs/TUNING.md, "Is risk aversion worth it").
"""

from __future__ import annotations

from scipy.stats import spearmanr

from tbjax.config import load_config
from tbjax.data.synthetic import Crash
from tbjax.run.frontier import FrontierSession, evaluate_points, frontier_grid, run_config
from tiny_run_config import synthetic_market

WEIGHTS = [0.0, 0.05, 0.15, 0.4, 1.0]
TAIL_MARKET = {"symbols": 2, "bars": 12000, "timeframe": "1h", "seed": 2, "regime": "STRONG_TREND",
               "crash": Crash(prob=0.02)}  # python -m tbjax.synth --crash 0.02 (the other crash settings default)
# one year of train, three months of val; 100 updates of 16 envs x 32 steps per member, one evaluation
TAIL_RUN = ["data.train_start=2020-01-01", "data.train_end=2020-12-31", "data.val_start=2021-01-01",
            "data.val_end=2021-04-10", "data.test_start=2021-04-15", "data.test_end=null", "env.episode_len=128",
            "ppo.n_envs=16", "ppo.n_steps=32", "ppo.n_epochs=2", "ppo.n_minibatches=2", "ppo.hidden_sizes=[32]",
            "ppo.num_quantiles=16", "ppo.learning_rate=1e-3", "train.total_env_steps=51200",
            "train.updates_per_chunk=100", "train.eval_every=100", "train.patience=0", "train.seed=0",
            "train.ensemble_top_k=2", "output.tensorboard=false", "eval.w_choppy=0", "eval.w_trend=0",
            "eval.edge_confidence=0", "eval.regime_bars=200", f"frontier.cvar_weight={WEIGHTS}", "frontier.seeds=2"]


def tail_market(root):
    """The planted-tail market, prepared under ``root``; returns the processed folder."""
    return synthetic_market(root, **TAIL_MARKET)


def test_more_cvar_weight_buys_a_smaller_val_tail_at_a_cost_in_return(tmp_path):
    processed = tail_market(tmp_path)
    cfg = load_config("configs/base.yaml", TAIL_RUN + [f"data.processed_dir={processed}"])
    grid = frontier_grid(cfg)
    session = FrontierSession(run_config(cfg, grid), tmp_path / "run", grid, write=False, quiet=True)
    assert session.train(resume=False, stop=None)
    best = session.book.best_carry(session.carry)  # every member's best on val, as the frontier run keeps
    points, _ = evaluate_points(session, best, session.book.meta(cfg.train.ensemble_top_k))
    weights = [p["settings"]["ppo.cvar_weight"] for p in points]
    tail = [-p["val"]["cvar_5"] for p in points]  # the per-bar CVaR 5 % as a loss
    returns = [p["val"]["total_return"] for p in points]  # the same val bars: orders as the mean return
    rho = spearmanr(weights, tail)[0]
    print(f"val CVaR 5% loss {[round(x, 5) for x in tail]}, return {[round(x, 3) for x in returns]}, rho {rho:.2f}")
    assert weights == WEIGHTS
    assert rho <= -0.8, (tail, returns)
    assert returns[0] > returns[-1], (tail, returns)
