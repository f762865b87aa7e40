"""Wall-clock time for tbjax and for SB3 PPO to reach 80 % of the oracle Sharpe on validation.

The market has a planted signal (``benchmarks.common.planted_market``, rho = 0.2) and the only cost
is a 5 bp fee per unit traded, long-short positions {-1, 0, 1}. The target is
``target_frac`` x the per-bar Sharpe of ``tbjax.evaluation.oracle.threshold_oracle`` on the validation split
with the same cost (docs/ALGORITHMS.md "Planted-signal oracle").

Both learners train from the same seed with the shared PPO settings and widths, each at its own
practical scale, and are evaluated periodically on the val split with frozen observation
statistics and a deterministic policy:
* tbjax: ``tbjax.evaluation.backtest.backtest`` (a compiled walk of every symbol's split);
* SB3: the Gymnasium twin walked over the same decision bars (the same start per symbol, the same
  rules), observations normalised by VecNormalize's current statistics without updating them.
Both then compute the SAME per-bar Sharpe (``common.per_bar_sharpe``: mean / std of the
concatenated per-bar net returns, as the oracle does).

The clock counts training only, compilation included for tbjax (a user waits for it too; it is
also reported alone). Evaluation time is excluded on both sides. A side that misses the budget
reports the budget and ``reached: false``.

    python benchmarks/learning_speed.py [--quick]  → benchmarks/results/learning_speed.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from tbjax.evaluation.backtest import backtest  # noqa: E402
from tbjax.data.market import ROLE_VAL  # noqa: E402

FEE_BPS = 5.0
MILESTONES = (0.5, 0.6, 0.7, 0.8, 0.9)


def milestones(history: list[dict], oracle_sharpe: float) -> dict:
    """Training seconds at which validation first reached each fraction of the oracle Sharpe
    (None if never, within the budget): the learning curve summarised beyond one target."""
    out = {}
    for frac in MILESTONES:
        hit = next((h["seconds"] for h in history if h["val_sharpe_per_bar"] >= frac * oracle_sharpe), None)
        out[f"{frac:g}"] = hit
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small budgets (about 2 minutes in all)")
    p.add_argument("--tiny", action="store_true", help="smallest settings, for tests")
    common.add_workload_args(p)
    p.add_argument("--rho", type=float, default=0.2)
    p.add_argument("--budget", type=float, default=180.0, help="seconds per learner")
    p.add_argument("--target-frac", type=float, default=0.8)
    p.add_argument("--tbjax-envs", type=int, default=256)
    p.add_argument("--tbjax-chunk", type=int, default=4, help="updates between evaluations")
    p.add_argument("--sb3-envs", type=int, default=8)
    p.add_argument("--sb3-eval-every", type=int, default=32_768, help="env steps between evaluations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(common.RESULTS_DIR / "learning_speed.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.bars, args.budget, args.sb3_eval_every = 8_000, 30.0, 8_192
    if args.tiny:
        args.symbols, args.bars, args.window, args.n_steps, args.budget = 2, 1_500, 8, 16, 1.0
        args.tbjax_envs, args.tbjax_chunk, args.sb3_envs, args.sb3_eval_every = 64, 1, 2, 64
    return args


class Stopwatch:
    """Training time only: evaluation runs between ``pause`` and ``resume``."""

    def __init__(self):
        self.elapsed, self._t0 = 0.0, time.perf_counter()

    def pause(self) -> float:
        self.elapsed += time.perf_counter() - self._t0
        return self.elapsed

    def resume(self) -> None:
        self._t0 = time.perf_counter()


def train_tbjax(pm, args, target: float) -> dict:
    params = common.env_params(pm, fee_bps=FEE_BPS, episode_len=64 if args.tiny else 256)
    val_params = common.env_params(pm, role=ROLE_VAL, fee_bps=FEE_BPS, episode_len=params.episode_len)
    trainer = common.tbjax_trainer(args.tbjax_envs, args.n_steps, args.epochs, args.minibatches,
                                   args.tbjax_chunk, n_groups=len(pm.symbols))
    hp = common.tbjax_hparams(params)
    clock, history = Stopwatch(), []
    carry = jax.block_until_ready(trainer.init(jax.random.PRNGKey(args.seed), hp, pm.market))
    steps, compile_s, sharpe = 0, None, float("nan")
    while True:
        t_chunk = time.perf_counter()
        carry, _ = jax.block_until_ready(trainer.train_chunk(carry, hp, pm.market))
        if compile_s is None:
            compile_s = time.perf_counter() - t_chunk  # first call: compile + one chunk
        steps += args.tbjax_chunk * args.tbjax_envs * args.n_steps
        seconds = clock.pause()
        result, series = backtest(trainer.policy_apply, carry.params, carry.obs_stats, pm.market, val_params,
                                  ROLE_VAL, pm.bars_per_year)
        sharpe = common.per_bar_sharpe([series[s]["returns"] for s in pm.symbols])
        history.append({"seconds": seconds, "env_steps": steps, "val_sharpe_per_bar": sharpe})
        print(f"    tbjax {seconds:7.1f} s {steps:>11,} steps  val Sharpe {sharpe:+.4f}", flush=True)
        if sharpe >= target or seconds >= args.budget:
            break
        clock.resume()
    reached = sharpe >= target and seconds <= args.budget
    return {"seconds": seconds if reached else args.budget, "reached": bool(reached), "env_steps": steps,
            "final_val_sharpe_per_bar": sharpe, "compile_and_first_chunk_s": compile_s, "history": history,
            "n_envs": args.tbjax_envs}


def walk_twin_split(venv_norm, model, pm, val_params) -> list[np.ndarray]:
    """Deterministic walk of every symbol's val split in the twin, all symbols in lockstep (a
    recurrent SB3 model, e.g. RecurrentPPO, carries its state through the split as tbjax's walk does).

    Starts and lengths follow ``tbjax.evaluation.backtest.split_walk``; like backtest, the walk keeps the
    training ``episode_len`` (it scales the bars-held feature) and ignores the time-limit flag.
    """
    from tbjax.evaluation.backtest import split_walk
    from tbjax.env.gym import MarketGymEnv

    host = common.host_market(pm.market)
    start, n_valid = split_walk(host, ROLE_VAL, val_params.window_size)
    envs = [MarketGymEnv(host, val_params) for _ in range(len(pm.symbols))]
    obs = np.stack([e.reset(options={"symbol": s, "bar": int(start[s])})[0] for s, e in enumerate(envs)])
    equity = np.ones(len(envs))
    returns = [np.empty(int(n)) for n in n_valid]
    state, starts = None, np.ones(len(envs), bool)  # a recurrent model's state, zero at each symbol's start
    for i in range(int(n_valid.max())):
        actions, state = model.predict(venv_norm.normalize_obs(obs), state=state, episode_start=starts,
                                       deterministic=True)
        starts[:] = False
        for s, env in enumerate(envs):
            if i >= n_valid[s]:
                continue
            obs[s], _, _, _, info = env.step(actions[s])
            returns[s][i] = float(info["equity"]) / equity[s] - 1.0
            equity[s] = float(info["equity"])
    return returns


def train_sb3(pm, args, target: float) -> dict:
    from stable_baselines3.common.callbacks import BaseCallback

    params = common.env_params(pm, fee_bps=FEE_BPS, episode_len=64 if args.tiny else 256)
    val_params = common.env_params(pm, role=ROLE_VAL, fee_bps=FEE_BPS, episode_len=params.episode_len)
    clock, history, state = Stopwatch(), [], {"sharpe": float("nan"), "seconds": 0.0,
                                                    "next": args.sb3_eval_every}
    venv = common.sb3_vec_env(pm.market, params, args.sb3_envs, "dummy", args.seed)
    model = common.sb3_ppo(venv, args.n_steps, args.epochs, args.minibatches, args.seed)

    class Evaluate(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps < state["next"]:
                return True
            state["next"] += args.sb3_eval_every
            seconds = clock.pause()
            state["sharpe"] = common.per_bar_sharpe(walk_twin_split(venv, model, pm, val_params))
            history.append({"seconds": seconds, "env_steps": self.num_timesteps,
                            "val_sharpe_per_bar": state["sharpe"]})
            state["seconds"] = seconds
            print(f"    sb3   {seconds:7.1f} s {self.num_timesteps:>11,} steps  val Sharpe {state['sharpe']:+.4f}",
                  flush=True)
            clock.resume()
            return not (state["sharpe"] >= target or seconds >= args.budget)

    clock.resume()
    model.learn(total_timesteps=10**12, callback=Evaluate())
    reached = state["sharpe"] >= target and state["seconds"] <= args.budget
    return {"seconds": state["seconds"] if reached else args.budget, "reached": bool(reached),
            "env_steps": int(model.num_timesteps), "final_val_sharpe_per_bar": state["sharpe"],
            "history": history, "n_envs": args.sb3_envs, "vec_env": "dummy"}


def main(argv=None) -> int:
    args = parse_args(argv)
    have_sb3 = common.have_sb3()
    pm = common.planted_market(args.symbols, args.bars, signal_rho=args.rho, seed=args.seed,
                               window_size=args.window)
    oracle = common.oracle_sharpe(pm, ROLE_VAL, cost_bps=FEE_BPS)
    target = args.target_frac * oracle["sharpe_per_bar"]
    print(f"oracle per-bar Sharpe on val: {oracle['sharpe_per_bar']:.4f} (threshold {oracle['threshold']}, "
          f"{oracle['mode']}); target {target:.4f}; budget {args.budget:.0f} s per learner", flush=True)
    tb = train_tbjax(pm, args, target)
    print(f"  tbjax: {'reached' if tb['reached'] else 'missed'} in {tb['seconds']:.1f} s "
          f"(val Sharpe {tb['final_val_sharpe_per_bar']:.4f}, {tb['env_steps']:,} steps)", flush=True)
    sb = train_sb3(pm, args, target) if have_sb3 else None
    if sb:
        print(f"  sb3:   {'reached' if sb['reached'] else 'missed'} in {sb['seconds']:.1f} s "
              f"(val Sharpe {sb['final_val_sharpe_per_bar']:.4f}, {sb['env_steps']:,} steps)", flush=True)
    # A side that missed reports its budget, so with one miss the ratio is a bound; with two, none.
    ratio = sb["seconds"] / tb["seconds"] if sb and (tb["reached"] or sb["reached"]) else None
    bound = bool(sb) and ratio is not None and not (tb["reached"] and sb["reached"])
    if ratio is not None:
        print(f"time ratio sb3 / tbjax: {ratio:.1f}x" + (" (one side missed its budget: a bound)" if bound else ""))
    else:
        print("ratio: n/a (" + ("stable-baselines3 not installed" if not sb else "neither side reached the target")
              + ")")
    result = {
        "device": common.device_string(),
        "tbjax_seconds": tb["seconds"], "sb3_seconds": sb["seconds"] if sb else None, "ratio": ratio,
        "ratio_is_bound": bound,
        "oracle_sharpe": oracle["sharpe_per_bar"], "target_sharpe": target,
        "tbjax_reached": tb["reached"], "sb3_reached": sb["reached"] if sb else None,
        "oracle": {k: oracle[k] for k in ("threshold", "mode", "cost_bps", "long_only", "turnover")},
        "settings": {"symbols": args.symbols, "bars": args.bars, "window": args.window, "rho": args.rho,
                     "fee_bps": FEE_BPS, "budget_s": args.budget, "target_frac": args.target_frac,
                     "n_steps": args.n_steps, "n_epochs": args.epochs, "n_minibatches": args.minibatches,
                     "seed": args.seed, **common.PPO_SETTINGS},
        "milestones_s": {"tbjax": milestones(tb["history"], oracle["sharpe_per_bar"]),
                         "sb3": milestones(sb["history"], oracle["sharpe_per_bar"]) if sb else None},
        "tbjax": tb, "sb3": sb,
        "versions": common.versions("jax", "flax", "stable_baselines3", "torch"),
    }
    common.write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
