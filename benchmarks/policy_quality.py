"""Policy quality at EQUAL wall-clock: tbjax (a seed population and its ensemble) vs SB3 PPO.

Throughput that buys nothing on real data is wasted; this benchmark compares the POLICIES each
learner produces in the same time, on three markets:

* ``sample``: the shipped daily sample (configs/base.yaml: its splits, features, costs, long-only levels);
* ``planted_weak``: synthetic hourly symbols with a weak planted signal (rho 0.1), long-short, 5 bp fee;
* ``regimes_no_signal``: synthetic hourly symbols switching Markov regimes, NO planted signal (rho 0).

Each learner gets ``--budget`` seconds (compile and its periodic val evaluations included), the same
features, costs, reward (with the default ``env.turnover_penalty`` shaping), network (2 x 64 actor and
critic) and PPO settings (``benchmarks.common.PPO_SETTINGS``); tbjax trains the default population
(``train.population`` members of ``ppo.n_envs`` envs),
and chooses its snapshot on VAL: tbjax keeps each population member's best carry by val Sortino and
trades the ensemble of the members that beat flat on val (``tbjax.learner.population``); SB3
(+ VecNormalize(norm_reward=False)) keeps its best snapshot by val Sortino. Both are then scored on
TEST with the same pooled metrics (``tbjax.evaluation.metrics.pooled_metrics``); SB3 acts in the
Gymnasium twin, whose parity with the JAX env is tested. Repetitions use different master seeds.

    python benchmarks/policy_quality.py [--quick] [--budget S] [--reps R]
        → benchmarks/results/policy_quality.json
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common, sb3_side  # noqa: E402
from tbjax.data.market import ROLE_TEST, ROLE_TRAIN, ROLE_VAL  # noqa: E402
from tbjax.evaluation.backtest import backtest, split_walk  # noqa: E402
from tbjax.evaluation.metrics import pooled_metrics  # noqa: E402
from tbjax.learner.population import ensemble_apply, stack_trees  # noqa: E402
from tbjax.learner.walk import held_positions  # noqa: E402
from tbjax.run.chunks import member_of  # noqa: E402
from tbjax.run.population import select_members  # noqa: E402

MARKETS = ("sample", "planted_weak", "regimes_no_signal")
REPORTED = ("sharpe", "sortino", "total_return", "max_drawdown", "turnover")


@dataclass
class Market:
    name: str
    market: object
    symbols: list[str]
    levels: tuple
    params: dict            # role -> EnvParams (walks: equity floor 0)
    bars_per_year: float
    time_ms: dict | None = None


def load_market(name: str, args) -> Market:
    if name == "sample":
        from tbjax.config import load_config
        from tbjax.evaluation.scoring import bar_times
        from tbjax.run.assembly import env_params_from_config
        from tbjax.run.experiment import build_experiment

        cfg = load_config("configs/base.yaml", ["output.tensorboard=false"])
        exp = build_experiment(cfg, with_regimes=False)
        params = {r: env_params_from_config(cfg, r).replace(equity_floor=jnp.float32(0.0))
                  for r in (ROLE_TRAIN, ROLE_VAL, ROLE_TEST)}
        return Market(name, exp.market, list(exp.symbols), tuple(cfg.env.position_levels), params,
                      float(exp.bars_per_year), bar_times(exp.tables))
    rho, regime = (0.1, "NORMAL") if name == "planted_weak" else (0.0, None)
    pm = common.planted_market(args.symbols, args.bars, signal_rho=rho, seed=args.market_seed, regime=regime,
                               window_size=args.window)
    params = {r: common.env_params(pm, role=r, fee_bps=5.0, episode_len=args.episode_len)
              for r in (ROLE_TRAIN, ROLE_VAL, ROLE_TEST)}
    return Market(name, pm.market, pm.symbols, common.LONG_SHORT, params, pm.bars_per_year)


def summary(metrics: dict) -> dict:
    return {k: float(metrics[k]) for k in REPORTED if k in metrics}


def run_tbjax(mk: Market, args, seed: int) -> dict:
    """A population trained as one program until the budget; members' best carries by val Sortino."""
    t0 = time.perf_counter()
    trainer = common.tbjax_trainer(args.tbjax_envs, args.n_steps, args.epochs, args.minibatches, args.chunk,
                                   n_groups=len(mk.symbols), position_levels=mk.levels,
                                   window_size=mk.params[ROLE_TRAIN].window_size)
    size = args.population
    program, hps, carry = common.seed_population(trainer, size, seed, common.tbjax_hparams(mk.params[ROLE_TRAIN]),
                                                 mk.market)
    best, updates = [(-np.inf, None)] * size, 0
    while updates == 0 or time.perf_counter() - t0 < args.budget:  # at least one chunk
        carry, _ = jax.block_until_ready(program.advance(carry, hps, [True] * size, mk.market))
        updates += args.chunk
        for i in range(size):
            member = member_of(carry, i, program.stacked_members)
            res, _ = backtest(trainer.policy_apply, member.params, member.obs_stats, mk.market, mk.params[ROLE_VAL],
                              ROLE_VAL, mk.bars_per_year, time_ms=mk.time_ms, significance=False)
            score = float(np.nan_to_num(res["pooled"]["sortino"], nan=-np.inf))
            if score > best[i][0] or best[i][1] is None:
                best[i] = (score, jax.device_get((member.params, member.obs_stats)))
    seconds = time.perf_counter() - t0
    chosen = select_members([b[0] for b in best], None)
    params, stats = stack_trees([best[i][1][0] for i in chosen]), stack_trees([best[i][1][1] for i in chosen])
    apply = ensemble_apply(trainer.policy_apply, "discrete", mk.levels, len(chosen))
    res, _ = backtest(apply, params, stats, mk.market, mk.params[ROLE_TEST], ROLE_TEST, mk.bars_per_year,
                      time_ms=mk.time_ms, significance=False)
    steps = updates * args.tbjax_envs * args.n_steps * size
    grads = updates * args.epochs * args.minibatches * size
    return {"test": summary(res["pooled"]), "members_val_sortino": [b[0] for b in best], "chosen": chosen,
            "seconds": seconds, "env_steps": steps, "env_steps_per_s": steps / seconds,
            "gradient_updates_per_s": grads / seconds, "population": size}


def twin_walk(venv, model, mk: Market, role: int) -> dict:
    """Deterministic walk of every symbol's split in the Gymnasium twin; per-symbol (times, returns,
    held positions) and the turnover the env charged, as the compiled backtest records them."""
    from tbjax.env.gym import MarketGymEnv

    host = sb3_side.host_market(mk.market)
    start, n_valid = split_walk(host, role, mk.params[role].window_size)
    envs = [MarketGymEnv(host, mk.params[role]) for _ in mk.symbols]
    obs = np.stack([e.reset(options={"symbol": s, "bar": int(start[s])})[0] for s, e in enumerate(envs)])
    n = int(n_valid.max())
    rets, traded, target, tradable = (np.zeros((len(envs), n)) for _ in range(4))
    equity = np.ones(len(envs))
    for i in range(n):
        actions, _ = model.predict(venv.normalize_obs(obs), deterministic=True)
        for s, env in enumerate(envs):
            if i < n_valid[s]:
                obs[s], _, _, _, info = env.step(actions[s])
                rets[s, i], equity[s] = float(info["equity"]) / equity[s] - 1.0, float(info["equity"])
                traded[s, i], target[s, i] = float(info["turnover"]), mk.levels[int(actions[s])]
                tradable[s, i] = bool(info["tradable"])
    per, trd = {}, {}
    for s, sym in enumerate(mk.symbols):
        k = int(n_valid[s])
        bars = np.arange(start[s] + 1, start[s] + 1 + k)
        times = mk.time_ms[sym][bars] if mk.time_ms is not None else bars.astype(np.int64)
        per[sym] = (times, rets[s, :k], held_positions(target[s, :k], tradable[s, :k].astype(bool)))
        trd[sym] = traded[s, :k]
    return pooled_metrics(per, mk.bars_per_year, traded=trd)


def run_sb3(mk: Market, args, seed: int) -> dict:
    """SB3 PPO until the budget; the snapshot (policy + VecNormalize statistics) best on val Sortino."""
    from stable_baselines3.common.callbacks import BaseCallback

    t0 = time.perf_counter()
    venv = sb3_side.sb3_vec_env(mk.market, mk.params[ROLE_TRAIN], args.sb3_envs, "dummy", seed)
    model = sb3_side.sb3_ppo(venv, args.n_steps, args.epochs, args.minibatches, seed,
                           window_size=mk.params[ROLE_TRAIN].window_size)
    state = {"next": args.sb3_eval_every, "best": -np.inf, "snapshot": None}

    class Evaluate(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps >= state["next"]:
                state["next"] += args.sb3_eval_every
                score = float(np.nan_to_num(twin_walk(venv, model, mk, ROLE_VAL)["sortino"], nan=-np.inf))
                if score > state["best"] or state["snapshot"] is None:
                    state["best"] = score
                    state["snapshot"] = (copy.deepcopy(model.policy.state_dict()), copy.deepcopy(venv.obs_rms))
            return time.perf_counter() - t0 < args.budget

    model.learn(total_timesteps=10**12, callback=Evaluate())
    seconds = time.perf_counter() - t0
    if state["snapshot"] is not None:
        model.policy.load_state_dict(state["snapshot"][0])
        venv.obs_rms = state["snapshot"][1]
    test = twin_walk(venv, model, mk, ROLE_TEST)
    return {"test": summary(test), "val_sortino": state["best"], "seconds": seconds,
            "env_steps": int(model.num_timesteps), "env_steps_per_s": model.num_timesteps / seconds,
            "gradient_updates_per_s": model._n_updates / seconds}


def aggregate(runs: list[dict]) -> dict:
    """Mean and spread (max - min, and std) over repetitions of each test metric and rate."""
    out = {}
    for key in REPORTED:
        v = np.array([r["test"].get(key, np.nan) for r in runs], float)
        out[key] = {"mean": float(np.nanmean(v)), "spread": float(np.nanmax(v) - np.nanmin(v)),
                    "std": float(np.nanstd(v)), "values": v.tolist()}
    for key in ("env_steps_per_s", "gradient_updates_per_s", "seconds"):
        out[key] = float(np.mean([r[key] for r in runs]))
    return {**out, "runs": runs}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=120.0, help="seconds per learner and run")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--markets", default=",".join(MARKETS))
    p.add_argument("--population", type=int, default=common.DEFAULT_TRAIN.population,
                   help="tbjax members (default: train.population's)")
    p.add_argument("--quick", action="store_true", help="30 s budgets, 2 repetitions, smaller synthetic markets")
    p.add_argument("--tiny", action="store_true", help="smallest settings, for tests")
    p.add_argument("--symbols", type=int, default=4)
    p.add_argument("--bars", type=int, default=20_000)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--episode-len", type=int, default=256)
    p.add_argument("--market-seed", type=int, default=0)
    p.add_argument("--n-steps", type=int, default=64)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--minibatches", type=int, default=4)
    p.add_argument("--tbjax-envs", type=int, default=common.DEFAULT_PPO.n_envs, help="envs per member (ppo.n_envs)")
    p.add_argument("--chunk", type=int, default=5, help="updates between val evaluations")
    p.add_argument("--sb3-envs", type=int, default=8)
    p.add_argument("--sb3-eval-every", type=int, default=16_384, help="env steps between val evaluations")
    p.add_argument("--out", default=str(common.RESULTS_DIR / "policy_quality.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.budget, args.reps, args.bars = 30.0, 2, 8_000
    if args.tiny:
        args.budget, args.reps, args.bars, args.symbols, args.window, args.episode_len = 1.0, 1, 1_500, 2, 8, 64
        args.markets, args.n_steps, args.tbjax_envs, args.chunk = "planted_weak", 16, 8, 1
        args.sb3_envs, args.sb3_eval_every, args.population = 2, 64, 2
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    have_sb3 = sb3_side.have_sb3()
    markets = {}
    for name in args.markets.split(","):
        mk = load_market(name, args)
        tb, sb = [], []
        for rep in range(args.reps):
            seed = 1000 * (rep + 1)
            tb.append(run_tbjax(mk, args, seed))
            print(f"{name} rep {rep}: tbjax test {tb[-1]['test']}", flush=True)
            if have_sb3:
                sb.append(run_sb3(mk, args, seed))
                print(f"{name} rep {rep}: sb3   test {sb[-1]['test']}", flush=True)
        markets[name] = {"tbjax": aggregate(tb), "sb3": aggregate(sb) if sb else None}
    rows = [{"market": n, "learner": side, "sortino": m[side]["sortino"]["mean"],
             "sortino_spread": m[side]["sortino"]["spread"], "sharpe": m[side]["sharpe"]["mean"],
             "turnover": m[side]["turnover"]["mean"], "steps/s": m[side]["env_steps_per_s"],
             "grads/s": m[side]["gradient_updates_per_s"]}
            for n, m in markets.items() for side in ("tbjax", "sb3") if m[side]]
    common.print_table(rows, list(rows[0]))
    result = {"device": common.device_string(), "budget_s": args.budget, "reps": args.reps, "markets": markets,
              "settings": {"population": args.population, "tbjax_envs_per_member": args.tbjax_envs,
                           "sb3_envs": args.sb3_envs, "n_steps": args.n_steps, "n_epochs": args.epochs,
                           "n_minibatches": args.minibatches, "hidden": list(common.HIDDEN), **common.PPO_SETTINGS},
              "machine": common.machine_info()}
    return common.finish(args.out, result, ("jax", "stable_baselines3", "torch"))


if __name__ == "__main__":
    sys.exit(main())
