"""Learning on known markets with the DEFAULT learner: find the edge when it is there, stay out when not.

Synthetic hourly klines (`python -m tbjax.synth --signal RHO --regime NORMAL`) → `python -m
tbjax.prepare` → the training session on the train split with the shipped defaults (a population of
``train.population`` members, ``ppo.n_envs`` envs each, the default ``env.turnover_penalty``) → a
deterministic backtest on the val split of the policy a run trades: the ensemble of its members
(all of them here, so val chooses nothing).

* Planted signal (rho 0.3): the taker-buy ratio of bar t predicts bar t+1's return. The learned
  policy must reach LEVEL x the per-bar Sharpe of the best threshold rule fitted on the TRAIN
  bars and scored on the same val bars with the same 5 bp cost (the rule a learner could at
  best find; the rule fitted on val itself, with hindsight, is reported alongside).
* No signal (rho 0): the right answer is to stay out. Val turnover <= 0.05 per bar and a val
  Sharpe that the Probabilistic Sharpe Ratio cannot tell from zero nor from buy-and-hold's
  (two-sided 95 %).
"""

from __future__ import annotations

import numpy as np
import pytest

from tbjax.config import load_config
from tbjax.data.market import ROLE_TRAIN, ROLE_VAL
from tbjax.evaluation.oracle import threshold_oracle
from tbjax.evaluation.significance import probabilistic_sharpe_ratio
from tbjax.run.population import ensemble_policy
from tbjax.run.session import TrainingSession
from tbjax.evaluation.scoring import evaluate_split
from tiny_run_config import synthetic_market

COST_BPS = 5.0  # fee 4 bp + half spread 1 bp per unit of traded notional
LEVEL = 0.85  # measured here: 0.94 (the default 8-member ensemble; 4 members held 0.92, one 256-env learner 0.84)
BUDGET = 300_000  # env steps per member: 73 updates of each member's 64 envs x 64 steps
SPLITS = ["data.train_start=2020-01-01", "data.train_end=2022-12-31", "data.val_start=2023-01-02",
          "data.val_end=2023-05-20", "data.test_start=null", "data.test_end=null"]


def _prepared(root, rho: float, bars: int):
    synthetic_market(root, symbols=2, bars=bars, timeframe="1h", seed=3, signal=rho, regime="NORMAL")
    return root


def _train(root, env_steps: int):
    """A session with the DEFAULT ppo.* / train.population settings (only the budget per member,
    the costs and the market are set here)."""
    cfg = load_config(None, [
        f"data.processed_dir={root / 'processed'}", *SPLITS,
        "env.position_levels=[-1, 0, 1]", "env.fee_bps=4", "env.half_spread_bps=1", "env.episode_len=128",
        f"train.total_env_steps={env_steps}", "train.updates_per_chunk=30", "train.eval_every=1000000",
        "eval.regime_bars=300", "output.tensorboard=false",
    ])
    # val ends 2023-05-20 so the inferred test split (to the data's end, 2023-06-02) holds more than
    # window_size + 1 bars: a run whose test split cannot hold one decision is refused up front.
    session = TrainingSession(cfg, root / "run", write=False, quiet=True)
    session.exp.regimes = None  # the objective's regime markets are not part of this check
    assert session.train(resume=False, stop=None)
    return session


def _backtest(session, role: int):
    """(result, series) of the final carry's policy on ``role``: the ensemble of every member."""
    size = session.cfg.train.population
    if size == 1:
        return session.evaluate(session.carry, role)
    apply, params, stats = ensemble_policy(session.cfg, session.trainer, session.carry, list(range(size)))
    return evaluate_split(session.exp, apply, params, stats, session.env_params, role)


def _oracle_inputs(session, role: int):
    """(signal z of bar t, return of bar t+1) on the decision bars a backtest of ``role`` walks."""
    _, series = _backtest(session, role)
    signals, nexts = [], []
    for sym, s in series.items():
        table = session.exp.tables[sym]
        bars = np.searchsorted(table["open_time"], s["time_ms"])  # bars the returns are marked on
        ratio = table["taker_buy_ratio"]
        z = (ratio - np.nanmean(ratio)) / np.nanstd(ratio)
        signals.append(z[bars - 1])
        nexts.append(table["close"][bars] / table["close"][bars - 1] - 1.0)
    return np.concatenate(signals), np.concatenate(nexts)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return _prepared(tmp_path_factory.mktemp("planted"), 0.3, 30_000)


@pytest.fixture(scope="module")
def no_signal(tmp_path_factory):
    return _prepared(tmp_path_factory.mktemp("nosignal"), 0.0, 30_000)


def test_default_learner_reaches_the_attainable_oracle_on_val(planted):
    session = _train(planted, BUDGET)
    result, series = _backtest(session, ROLE_VAL)
    returns = np.concatenate([s["returns"] for s in series.values()])
    learned = returns.mean() / returns.std()
    fit = threshold_oracle(*_oracle_inputs(session, ROLE_TRAIN), cost_bps=COST_BPS)
    val = threshold_oracle(*_oracle_inputs(session, ROLE_VAL), cost_bps=COST_BPS)
    attainable = next(r["sharpe_per_bar"] for r in val["table"]
                      if (r["threshold"], r["mode"]) == (fit["threshold"], fit["mode"]))
    print(f"learned {learned:.4f} = {learned / attainable:.2f} of the train-fit rule {attainable:.4f}, "
          f"{learned / val['sharpe_per_bar']:.2f} of the val-fit rule {val['sharpe_per_bar']:.4f}")
    assert attainable > 0.05, (fit, val["sharpe_per_bar"])  # the planted edge survives the costs
    assert learned >= LEVEL * attainable, (learned, attainable, val["sharpe_per_bar"], result["pooled"])


def test_default_learner_stays_out_of_a_market_without_signal(no_signal):
    session = _train(no_signal, BUDGET)
    result, series = _backtest(session, ROLE_VAL)
    returns = np.concatenate([s["returns"] for s in series.values()])
    turnover = result["pooled"]["turnover"]
    _, next_returns = _oracle_inputs(session, ROLE_VAL)  # buy-and-hold's per-bar returns on the same bars
    print(f"no signal: val turnover {turnover:.4f}, Sharpe per bar "
          f"{returns.mean() / returns.std() if returns.std() > 0 else 0.0:.4f}")
    assert turnover <= 0.05, (turnover, result["pooled"])
    if np.std(returns) > 0:  # a policy that never trades has no Sharpe to test
        bh = next_returns.mean() / next_returns.std()
        for benchmark in (0.0, bh):
            psr = probabilistic_sharpe_ratio(returns, benchmark)
            assert 0.025 < psr < 0.975, (benchmark, psr, result["pooled"])
