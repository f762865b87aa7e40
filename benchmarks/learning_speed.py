"""Wall-clock learning curves of tbjax and SB3 PPO on three markets whose right answer is known.

Markets (``benchmarks.common.planted_market``, long-short positions {-1, 0, 1}, the only cost a 5 bp
fee per unit traded), each with its own budget per learner:

* ``rho_0.2``: planted signal, rho = 0.2 (60 s): the headline market;
* ``rho_0.1``: weak signal, rho = 0.1 (180 s);
* ``rho_0``: NO signal (60 s): the right answer is to stay out, so what counts is val turnover
  (goal <= 0.05 per bar) and whether the val Sharpe is distinguishable from zero (PSR).

The oracle is ``tbjax.evaluation.oracle.threshold_oracle``'s per-bar Sharpe on the validation split
with the same cost (docs/ALGORITHMS.md "Planted-signal oracle"). It picks its threshold on val
itself, with hindsight, so it also fits val's noise: the rule chosen on TRAIN and scored on val
(``common.train_fit_oracle``, reported as ``train_fit_fraction`` of the oracle) is what a learner
could at best reach, and each side's held fraction is also given relative to it. Both learners train from the same
seed with the SAME settings: the PPO hyperparameters are tbjax's defaults (``common.PPO_SETTINGS``,
read from tbjax/config.py, chosen by the study in docs/TUNING.md), each at its own practical scale,
and are evaluated periodically on the val split with frozen observation statistics and a
deterministic policy:
* tbjax: ``tbjax.evaluation.backtest.backtest`` (a compiled walk of every symbol's split);
* SB3: the Gymnasium twin walked over the same decision bars (the same start per symbol, the same
  rules), observations normalised by VecNormalize's current statistics without updating them.
Both then compute the SAME per-bar Sharpe (``common.per_bar_sharpe``: mean / std of the
concatenated per-bar net returns, as the oracle does) and the same turnover (mean |traded| per bar).

Each side trains for its whole budget (to show whether it HOLDS a level, not only reaches it), with
the product's learning-rate schedule (``ppo.lr_schedule``, linear decay to ``ppo.lr_min`` by default)
laid over that budget: the rate at a moment is ``tbjax.agent.ppo.learning_rate_at`` of the fraction of
the budget's seconds spent (:func:`budget_learning_rate`), set between tbjax's chunks (a traced leaf:
no recompile) and at each SB3 update (its ``lr_schedule``). A run of ``tbjax.train`` knows its end
(``train.total_env_steps``) and decays over it; a wall-clock budget's end is its seconds
(``--lr-schedule constant`` measures a constant rate, as this benchmark did until 2026-12).
The clock counts training only, from the learner's construction: for tbjax the members' init
(its compile and first rollout, ``setup_s``) and the first chunk's compile (a user waits for both;
``compile_and_first_chunk_s`` gives the latter alone), for SB3 the vec-env and model. A process
compiles each program once: with several markets, the first one run pays tbjax's compiles.
Evaluation time is excluded on both sides. Per market and side: seconds to
50/60/70/80/90 % of the oracle (None if never), the final and peak fraction, the "held" fraction
(mean over the last third of the evaluations), the best mean over any stretch of that length
(``best_third_fraction``: held / best third is 1 when the curve has not decayed, while held / peak
also counts the jitter between single evaluations) and the final val turnover. The top-level
``tbjax_seconds`` / ``sb3_seconds`` / ``ratio`` are the rho 0.2 market's time to 80 %; a side that
misses reports its budget, so with one miss the ratio is a bound.

    python benchmarks/learning_speed.py [--quick] [--markets rho_0.2,rho_0]
        → benchmarks/results/learning_speed.json
    python benchmarks/learning_speed.py --sides tbjax --markets rho_0.1 --tbjax-set ppo.clip_eps=0.1 --out X.json
        (a candidate setting of the tbjax side on the same clock; ppo.learning_rate sets the schedule's start)
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common, sb3_side  # noqa: E402
from tbjax.data.market import ROLE_VAL  # noqa: E402
from tbjax.evaluation.significance import probabilistic_sharpe_ratio  # noqa: E402

FEE_BPS = 5.0
MILESTONES = (0.5, 0.6, 0.7, 0.8, 0.9)
HEADLINE, HEADLINE_FRAC = "rho_0.2", 0.8
# name -> (signal rho, budget in seconds per learner at full size)
MARKETS = {"rho_0.2": (0.2, 60.0), "rho_0.1": (0.1, 180.0), "rho_0": (0.0, 60.0)}
QUICK_BUDGETS = {"rho_0.2": 20.0, "rho_0.1": 40.0, "rho_0": 20.0}
NO_SIGNAL_TURNOVER_GOAL = 0.05


def milestones(history: list[dict], oracle_sharpe: float) -> dict:
    """Training seconds at which validation first reached each fraction of the oracle Sharpe
    (None if never, within the budget): the learning curve summarised beyond one target."""
    out = {}
    for frac in MILESTONES:
        hit = next((h["seconds"] for h in history if h["val_sharpe_per_bar"] >= frac * oracle_sharpe), None)
        out[f"{frac:g}"] = hit
    return out


def summarise(history: list[dict], oracle_sharpe: float, final_returns: np.ndarray, bh_returns: np.ndarray) -> dict:
    """The curve in a few numbers: milestones, final / peak / held fraction of the oracle (held = mean
    over the last third of the evaluations: a learner that peaks and collapses scores low), final
    val turnover, and the final val series' PSR against zero and against buy-and-hold's Sharpe."""
    frac = [h["val_sharpe_per_bar"] / oracle_sharpe for h in history]
    bh_sr = common.per_bar_sharpe([bh_returns])
    return {"milestones_s": milestones(history, oracle_sharpe), "final_fraction": frac[-1],
            "peak_fraction": max(frac), "held_fraction": common.held(frac), "best_third_fraction": common.best_third(frac),
            "final_val_sharpe_per_bar": history[-1]["val_sharpe_per_bar"],
            "final_val_turnover": history[-1]["val_turnover"],
            "psr_vs_zero": probabilistic_sharpe_ratio(final_returns, 0.0),
            "psr_vs_buy_and_hold": probabilistic_sharpe_ratio(final_returns, bh_sr)}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small budgets (about 5 minutes in all)")
    p.add_argument("--tiny", action="store_true", help="smallest settings, for tests")
    common.add_workload_args(p)
    p.add_argument("--markets", default=",".join(MARKETS), help=f"comma-separated subset of {', '.join(MARKETS)}")
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiplies every market's budget")
    p.add_argument("--tbjax-envs", type=int, default=common.DEFAULT_PPO.n_envs, help="envs per member")
    p.add_argument("--tbjax-population", type=int, default=common.DEFAULT_TRAIN.population,
                   help="members trained as one program and scored as their ensemble (train.population)")
    p.add_argument("--tbjax-chunk", type=int, default=4, help="updates between evaluations")
    p.add_argument("--turnover-penalty", type=float, default=common.DEFAULT_ENV.turnover_penalty,
                   help="env.turnover_penalty of BOTH learners' training reward (shaping; metrics ignore it)")
    p.add_argument("--sides", default="tbjax,sb3", help="learners to run: tbjax, sb3 or both (tbjax alone for a "
                   "search over its own settings)")
    p.add_argument("--sb3-envs", type=int, default=8)
    p.add_argument("--sb3-eval-every", type=int, default=32_768, help="env steps between evaluations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr-schedule", choices=("constant", "linear"), default=common.DEFAULT_PPO.lr_schedule,
                   help="both learners' rate over the budget's seconds (ppo.lr_schedule; default the product's)")
    p.add_argument("--tbjax-set", action="append", default=[], metavar="KEY=VALUE",
                   help="a traced ppo.* setting of the tbjax side only (repeatable), e.g. ppo.clip_eps=0.1: probes "
                        "a candidate against the defaults on the same clock")
    p.add_argument("--out", default=str(common.RESULTS_DIR / "learning_speed.json"))
    args = p.parse_args(argv)
    args.markets = [m.strip() for m in args.markets.split(",") if m.strip()]
    args.sides = [x.strip() for x in args.sides.split(",") if x.strip()]
    if not args.sides or set(args.sides) - {"tbjax", "sb3"}:
        p.error(f"--sides: use tbjax, sb3 or tbjax,sb3, got {','.join(args.sides) or 'nothing'}")
    unknown = sorted(set(args.markets) - set(MARKETS))
    if unknown:
        p.error(f"--markets: unknown {', '.join(unknown)}; use names from {', '.join(MARKETS)}")
    args.budgets = {m: MARKETS[m][1] * args.budget_scale for m in args.markets}
    args.tbjax_overrides = {}
    for item in args.tbjax_set:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("ppo.") or key == "ppo.lr_min":
            p.error(f"--tbjax-set {item}: use ppo.KEY=VALUE of a traced setting (ppo.learning_rate is the "
                    "schedule's start; ppo.lr_min is the product's)")
        try:
            args.tbjax_overrides[key[len("ppo."):]] = float(value)
        except ValueError:
            p.error(f"--tbjax-set {item}: {value!r} is not a number")
    if args.quick:
        args.bars, args.sb3_eval_every = 8_000, 8_192
        args.budgets = {m: QUICK_BUDGETS[m] * args.budget_scale for m in args.markets}
    if args.tiny:
        args.symbols, args.bars, args.window, args.n_steps = 2, 1_500, 8, 16
        args.tbjax_envs, args.tbjax_chunk, args.sb3_envs, args.sb3_eval_every = 16, 1, 2, 64
        args.tbjax_population = min(args.tbjax_population, 2)
        args.budgets = {m: 1.0 for m in args.markets}
    return args


def budget_learning_rate(seconds: float, budget: float, schedule: str, start: float | None = None) -> float:
    """The rate ``ppo.lr_schedule`` gives after ``seconds`` of a ``budget``-second run: the product's own
    schedule (:func:`tbjax.agent.ppo.learning_rate_at`, from ``ppo.learning_rate`` to ``ppo.lr_min``)
    with the budget's seconds standing for its updates, so a time-budgeted learner decays as a run of
    ``tbjax.train`` decays over its ``train.total_env_steps``."""
    import jax.numpy as jnp

    from tbjax.agent.ppo import learning_rate_at

    steps = 10_000  # the budget in ten-thousandths
    progress = jnp.asarray(round(steps * min(max(seconds / budget, 0.0), 1.0)), jnp.int32)
    start = common.PPO_SETTINGS["learning_rate"] if start is None else start
    rates = types.SimpleNamespace(learning_rate=start, lr_min=common.DEFAULT_PPO.lr_min)
    return float(learning_rate_at(rates, progress, steps, schedule))


class Stopwatch:
    """Training time only: evaluation runs between ``pause`` and ``resume``."""

    def __init__(self):
        self.elapsed, self._t0 = 0.0, time.perf_counter()

    def pause(self) -> float:
        self.elapsed += time.perf_counter() - self._t0
        return self.elapsed

    def resume(self) -> None:
        self._t0 = time.perf_counter()

    def read(self) -> float:
        """Seconds so far, the clock still running."""
        return self.elapsed + time.perf_counter() - self._t0


def val_buy_and_hold(pm) -> np.ndarray:
    """Buy-and-hold's per-bar returns over the val decision bars of every symbol, concatenated."""
    return common.oracle_inputs(pm, ROLE_VAL)[1]


def train_tbjax(pm, args, budget: float) -> tuple[dict, np.ndarray]:
    """The default learner: ``--tbjax-population`` members (``train.population``) trained as one
    program, scored as their ensemble (``tbjax.learner.population.ensemble_apply``, every member,
    the current carries) as a population run trades; a population of 1 is the lone trainer."""
    from tbjax.learner.population import ensemble_apply

    params = common.env_params(pm, fee_bps=FEE_BPS, episode_len=64 if args.tiny else 256,
                               turnover_penalty=args.turnover_penalty)
    val_params = common.env_params(pm, role=ROLE_VAL, fee_bps=FEE_BPS, episode_len=params.episode_len,
                                   turnover_penalty=args.turnover_penalty)
    trainer = common.tbjax_trainer(args.tbjax_envs, args.n_steps, args.epochs, args.minibatches,
                                   args.tbjax_chunk, n_groups=len(pm.symbols), window_size=pm.window_size)
    size = args.tbjax_population
    clock, history = Stopwatch(), []  # from here: the members' init (compiled, one rollout each) counts too
    program, hps, carry = common.seed_population(trainer, size, args.seed,
                                                 common.tbjax_hparams(params, **args.tbjax_overrides), pm.market)
    carry = jax.block_until_ready(carry)
    setup_s = clock.read()
    start = args.tbjax_overrides.get("learning_rate", common.PPO_SETTINGS["learning_rate"])  # the schedule's start

    def chunk_hparams(seconds: float):  # the schedule's rate for the next chunk (traced: never recompiles)
        # ppo.learning_rate must be > 0: a chunk begun at the very end (a tiny budget) keeps a trace of it
        lr = max(budget_learning_rate(seconds, budget, args.lr_schedule, start), 1e-3 * start)
        return program.members([common.tbjax_hparams(params, **{**args.tbjax_overrides, "learning_rate": lr})] * size)

    apply = ensemble_apply(trainer.policy_apply, "discrete", common.LONG_SHORT, size) if size > 1 else None
    steps, compile_s = 0, None
    hps = chunk_hparams(clock.read())
    while True:
        t_chunk = time.perf_counter()
        carry, _ = jax.block_until_ready(program.advance(carry, hps, [True] * size, pm.market))
        if compile_s is None:
            compile_s = time.perf_counter() - t_chunk  # first call: compile + one chunk
        steps += args.tbjax_chunk * args.tbjax_envs * args.n_steps * size
        seconds = clock.pause()
        sharpe, turnover, returns = common.val_score(trainer, carry, pm, val_params, policy_apply=apply)
        history.append({"seconds": seconds, "env_steps": steps, "val_sharpe_per_bar": sharpe,
                        "val_turnover": turnover})
        print(f"    tbjax {seconds:7.1f} s {steps:>11,} steps  val Sharpe {history[-1]['val_sharpe_per_bar']:+.4f}"
              f"  turnover {history[-1]['val_turnover']:.3f}", flush=True)
        if seconds >= budget:
            break
        hps = chunk_hparams(seconds)
        clock.resume()
    return {"env_steps": steps, "setup_s": setup_s, "compile_and_first_chunk_s": compile_s, "history": history,
            "n_envs": args.tbjax_envs, "population": size}, returns


def walk_twin_split(venv_norm, model, pm, val_params) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Deterministic walk of every symbol's val split in the twin, all symbols in lockstep (a
    recurrent SB3 model, e.g. RecurrentPPO, carries its state through the split as tbjax's walk does).
    Returns (per-bar net returns, per-bar traded turnover) per symbol.

    Starts and lengths follow ``tbjax.evaluation.backtest.split_walk``; like backtest, the walk keeps the
    training ``episode_len`` (it scales the bars-held feature) and ignores the time-limit flag.
    """
    from tbjax.evaluation.backtest import split_walk
    from tbjax.env.gym import MarketGymEnv

    host = sb3_side.host_market(pm.market)
    start, n_valid = split_walk(host, ROLE_VAL, val_params.window_size)
    envs = [MarketGymEnv(host, val_params) for _ in range(len(pm.symbols))]
    obs = np.stack([e.reset(options={"symbol": s, "bar": int(start[s])})[0] for s, e in enumerate(envs)])
    equity = np.ones(len(envs))
    returns = [np.empty(int(n)) for n in n_valid]
    turnover = [np.empty(int(n)) for n in n_valid]
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
            turnover[s][i] = float(info["turnover"])
            equity[s] = float(info["equity"])
    return returns, turnover


def train_sb3(pm, args, budget: float) -> tuple[dict, np.ndarray]:
    from stable_baselines3.common.callbacks import BaseCallback

    params = common.env_params(pm, fee_bps=FEE_BPS, episode_len=64 if args.tiny else 256,
                               turnover_penalty=args.turnover_penalty)
    val_params = common.env_params(pm, role=ROLE_VAL, fee_bps=FEE_BPS, episode_len=params.episode_len,
                                   turnover_penalty=args.turnover_penalty)
    clock, history, state = Stopwatch(), [], {"next": args.sb3_eval_every, "returns": None}
    venv = sb3_side.sb3_vec_env(pm.market, params, args.sb3_envs, "dummy", args.seed)
    model = sb3_side.sb3_ppo(venv, args.n_steps, args.epochs, args.minibatches, args.seed, window_size=pm.window_size)
    model.lr_schedule = lambda _progress: budget_learning_rate(clock.read(), budget, args.lr_schedule)  # read each update

    class Evaluate(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps < state["next"]:
                return True
            state["next"] += args.sb3_eval_every
            seconds = clock.pause()
            returns, turnover = walk_twin_split(venv, model, pm, val_params)
            state["returns"] = np.concatenate(returns)
            history.append({"seconds": seconds, "env_steps": self.num_timesteps,
                            "val_sharpe_per_bar": common.per_bar_sharpe(returns),
                            "val_turnover": float(np.mean(np.concatenate(turnover)))})
            print(f"    sb3   {seconds:7.1f} s {self.num_timesteps:>11,} steps  val Sharpe "
                  f"{history[-1]['val_sharpe_per_bar']:+.4f}  turnover {history[-1]['val_turnover']:.3f}", flush=True)
            clock.resume()
            return seconds < budget

    model.learn(total_timesteps=10**12, callback=Evaluate())
    return {"env_steps": int(model.num_timesteps), "history": history, "n_envs": args.sb3_envs,
            "vec_env": "dummy"}, state["returns"]


def run_market(name: str, args, have_sb3: bool) -> dict:
    rho, budget = MARKETS[name][0], args.budgets[name]
    pm = common.planted_market(args.symbols, args.bars, signal_rho=rho, seed=args.seed, window_size=args.window)
    oracle = common.oracle_sharpe(pm, ROLE_VAL, cost_bps=FEE_BPS)
    attainable = common.train_fit_oracle(pm, ROLE_VAL, cost_bps=FEE_BPS)
    bh = val_buy_and_hold(pm)
    print(f"[{name}] oracle per-bar Sharpe on val: {oracle['sharpe_per_bar']:.4f} (threshold {oracle['threshold']}, "
          f"{oracle['mode']}); budget {budget:.0f} s per learner", flush=True)
    out = {"rho": rho, "budget_s": budget, "oracle_sharpe": oracle["sharpe_per_bar"],
           "oracle": {k: oracle[k] for k in ("threshold", "mode", "cost_bps", "long_only", "turnover")},
           "train_fit_oracle": attainable,
           "train_fit_fraction": attainable["sharpe_per_bar"] / oracle["sharpe_per_bar"]}
    for side, train in (("tbjax", train_tbjax if "tbjax" in args.sides else None),
                        ("sb3", train_sb3 if have_sb3 else None)):
        if train is None:
            out[side] = None
            continue
        run, final_returns = train(pm, args, budget)
        run.update(summarise(run["history"], oracle["sharpe_per_bar"], final_returns, bh))
        out[side] = run
        if attainable["sharpe_per_bar"] > 0:
            run["held_fraction_of_train_fit"] = run["held_fraction"] * oracle["sharpe_per_bar"] / attainable["sharpe_per_bar"]
        print(f"  {side}: final {run['final_fraction']:.2f} / peak {run['peak_fraction']:.2f} / held "
              f"{run['held_fraction']:.2f} of the oracle, val turnover {run['final_val_turnover']:.3f}, "
              f"milestones {run['milestones_s']}", flush=True)
    return out


def headline(markets: dict, budgets: dict) -> dict:
    """The rho 0.2 market's seconds to 80 % of the oracle per side (the budget when missed) and their ratio."""
    m = markets.get(HEADLINE)
    if m is None:
        return {"tbjax_seconds": None, "sb3_seconds": None, "ratio": None, "ratio_is_bound": False,
                "oracle_sharpe": None, "tbjax_reached": None, "sb3_reached": None}
    hit = {side: (m[side]["milestones_s"][f"{HEADLINE_FRAC:g}"] if m[side] else None) for side in ("tbjax", "sb3")}
    secs = {side: (hit[side] if hit[side] is not None else budgets[HEADLINE]) if m[side] else None
            for side in ("tbjax", "sb3")}
    reached = {side: (hit[side] is not None) if m[side] else None for side in ("tbjax", "sb3")}
    ratio = (secs["sb3"] / secs["tbjax"] if m["sb3"] and m["tbjax"] and (reached["tbjax"] or reached["sb3"])
             else None)
    return {"tbjax_seconds": secs["tbjax"], "sb3_seconds": secs["sb3"], "ratio": ratio,
            "ratio_is_bound": bool(ratio is not None and not (reached["tbjax"] and reached["sb3"])),
            "oracle_sharpe": m["oracle_sharpe"], "tbjax_reached": reached["tbjax"], "sb3_reached": reached["sb3"]}


def main(argv=None) -> int:
    args = parse_args(argv)
    have_sb3 = "sb3" in args.sides and sb3_side.have_sb3()
    markets = {name: run_market(name, args, have_sb3) for name in args.markets}
    top = headline(markets, args.budgets)
    if top["ratio"] is not None:
        print(f"time to {HEADLINE_FRAC:.0%} of the oracle on {HEADLINE}, sb3 / tbjax: {top['ratio']:.1f}x"
              + (" (one side missed its budget: a bound)" if top["ratio_is_bound"] else ""))
    result = {
        "device": common.device_string(), **top,
        "markets": markets,
        "goals": {"rho_0.2": "tbjax >= 0.9 of the oracle within 60 s and held", "rho_0.1": ">= 0.7 within 180 s",
                  "rho_0": f"val turnover <= {NO_SIGNAL_TURNOVER_GOAL}, val Sharpe not distinguishable from 0",
                  "ratio": "tbjax reaches 0.8 >= 5x sooner than SB3"},
        "settings": {"symbols": args.symbols, "bars": args.bars, "window": args.window, "fee_bps": FEE_BPS,
                     "budgets_s": args.budgets, "n_steps": args.n_steps, "n_epochs": args.epochs,
                     "n_minibatches": args.minibatches, "seed": args.seed, "hidden": list(common.HIDDEN),
                     "tbjax_envs_per_member": args.tbjax_envs, "tbjax_population": args.tbjax_population,
                     "sb3_envs": args.sb3_envs, "turnover_penalty": args.turnover_penalty,
                     "lr_schedule": args.lr_schedule, "lr_min": common.DEFAULT_PPO.lr_min,
                     "bar_features": common.DEFAULT_PPO.bar_features, **common.PPO_SETTINGS,
                     "tbjax_overrides": {f"ppo.{k}": v for k, v in args.tbjax_overrides.items()}},
    }
    return common.finish(args.out, result, ("jax", "flax", "stable_baselines3", "torch"))


if __name__ == "__main__":
    sys.exit(main())
