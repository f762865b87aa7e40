"""The study behind tbjax's PPO defaults: Optuna over the learner's settings on markets whose right
answer is known (docs/TUNING.md reads its results).

Markets (``benchmarks.common.planted_market``, long-short {-1, 0, 1}, 5 bp fee, the learning-speed
benchmark's shapes): planted signal rho 0.2 and rho 0.1, and NO signal (rho 0). One trial trains
a fresh learner on each market for the same number of updates (``--updates``; at the default
this is about a minute of training per market on a 2-core CPU, the issue's budget) and scores it
on VALIDATION every ``--eval-every`` updates:

* signal markets: the HELD fraction of the threshold oracle's per-bar Sharpe (mean over the last
  third of the evaluations, so a learner that peaks early and then overfits scores low);
* no-signal market: the held val turnover (mean over the last third), which should be ~0.

objective = mean over the signal markets of the held fraction
            - TURNOVER_WEIGHT x max(0, held no-signal turnover - 0.05)

The count of updates is fixed (not seconds) so that a trial's score does not depend on how busy
the machine is. The search space uses tbjax.hpo's own YAML-style entries (``tbjax.hpo.space``),
sampled by Optuna's TPE with a fixed seed; continuous settings are traced HParams leaves, so
trials that share the static settings (``ppo.bar_features``, ``ppo.hidden_sizes``) reuse one
compiled trainer. A trial is pruned (MedianPruner) when its rho 0.2 score is below the median of
the earlier trials' (that market is trained first).

tbjax.hpo itself optimises one prepared dataset's val + regime objective; this study needs a
different objective over several synthetic markets, so it drives Optuna directly with the same
search-space parser and trainer.

    python benchmarks/tune_defaults.py [--trials N] [--updates U] [--quick]
        → benchmarks/results/tune_defaults.json, docs/tuning/*.png
    python benchmarks/tune_defaults.py --grid env.turnover_penalty=0,2.5e-4,5e-4,1e-3 --updates 240
        → benchmarks/results/tune_turnover_penalty.json (one setting the study did not search)
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from tbjax.data.market import ROLE_VAL  # noqa: E402
from tbjax.hpo.space import parse_param  # noqa: E402

FEE_BPS = 5.0
SIGNAL_MARKETS = {"rho_0.2": 0.2, "rho_0.1": 0.1}
NO_SIGNAL = "rho_0"
TURNOVER_GOAL, TURNOVER_WEIGHT = 0.05, 2.0
SPACE = {
    "ppo.learning_rate": {"type": "float", "low": 1.0e-4, "high": 2.0e-3, "log": True},
    "ppo.gamma": {"type": "float", "low": 0.5, "high": 0.99},
    "ppo.gae_lambda": {"type": "float", "low": 0.7, "high": 0.95},
    "ppo.ent_coef": {"type": "float", "low": 3.0e-3, "high": 1.0e-1, "log": True},
    "ppo.weight_decay": {"type": "float", "low": 0.0, "high": 1.0},
    "ppo.bar_features": {"type": "categorical", "choices": [0, 2, 4]},
}

PENALTY_KEY = "env.turnover_penalty"

# The hand-picked defaults before this study (tried first, so the study starts from them) and the
# best setting of the hand exploration that preceded it (docs/TUNING.md), tried second.
PREVIOUS_DEFAULTS = {"ppo.learning_rate": 3e-4, "ppo.gamma": 0.99, "ppo.gae_lambda": 0.95, "ppo.ent_coef": 0.01,
                     "ppo.weight_decay": 0.0, "ppo.bar_features": 0}
HAND_CANDIDATE = {**PREVIOUS_DEFAULTS, "ppo.bar_features": 2, "ppo.gamma": 0.5, "ppo.gae_lambda": 0.8,
                  "ppo.ent_coef": 0.03}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_workload_args(p)
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--updates", type=int, default=120, help="updates per market per trial")
    p.add_argument("--eval-every", type=int, default=8)
    p.add_argument("--envs", type=int, default=256, help="envs of the lone learner each trial trains (the study "
                   "ran before the population default: one learner of 256 envs)")
    p.add_argument("--seed", type=int, default=0, help="market and learner seed")
    p.add_argument("--sampler-seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny markets and budgets (a smoke run)")
    p.add_argument("--confirm", default=None, metavar="SEEDS",
                   help="no study: score the previous and the shipped defaults on these seeds (e.g. 1,2)")
    p.add_argument("--grid", default=None, metavar="KEY=V1,V2,...",
                   help="no study: score the shipped defaults with KEY (a ppo.* setting or "
                        "env.turnover_penalty) set to each value, on --grid-seeds")
    p.add_argument("--grid-seeds", default="0", help="comma-separated market and learner seeds of --grid")
    p.add_argument("--with", dest="fixed", action="append", default=[], metavar="KEY=V",
                   help="--grid: hold another searchable setting at V instead of its default (repeatable)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/tune_defaults.json, "
                   "or tune_<setting>.json for --grid)")
    p.add_argument("--plots", default=str(common.REPO_ROOT / "docs" / "tuning"))
    args = p.parse_args(argv)

    def setting(flag: str, text: str) -> tuple[str, list[float]]:
        key, _, values = text.partition("=")
        if key != PENALTY_KEY and not (key.startswith("ppo.") and key[4:] in common.PPO_SETTINGS):
            p.error(f"{flag}: {key!r} is not searchable here; use {PENALTY_KEY} or one of "
                    + ", ".join(f"ppo.{k}" for k in common.PPO_SETTINGS))
        try:
            return key, [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            p.error(f"{flag}: values of {key} must be numbers separated by commas, got {values!r}")

    args.fixed = {k: v[0] for k, v in (setting("--with", f) for f in args.fixed)}
    if args.grid:
        args.grid = setting("--grid", args.grid)
    name = f"tune_{args.grid[0].split('.', 1)[1]}.json" if args.grid else "tune_defaults.json"
    args.out = args.out or str(common.RESULTS_DIR / name)
    if args.quick:
        args.symbols, args.bars, args.window, args.n_steps = 2, 1_500, 8, 16
        args.envs, args.updates, args.eval_every, args.trials = 64, 4, 2, 3
    return args


@functools.lru_cache(maxsize=None)
def market(rho: float, symbols: int, bars: int, window: int, seed: int):
    pm = common.planted_market(symbols, bars, signal_rho=rho, seed=seed, window_size=window)
    return pm, common.oracle_sharpe(pm, ROLE_VAL, cost_bps=FEE_BPS)["sharpe_per_bar"]


@functools.lru_cache(maxsize=None)
def trainer(args_key: tuple, bar_features: int, hidden: tuple, window: int):
    """One compiled trainer per static signature (the continuous settings are traced)."""
    from tbjax.env.protocol import MarketEnv
    from tbjax.learner.trainer import make_trainer
    from tbjax.run.assembly import make_env_params, make_spec

    envs, n_steps, epochs, minibatches, chunk, n_groups = args_key
    spec = make_spec(n_envs=envs, n_steps=n_steps, n_epochs=epochs, n_minibatches=minibatches,
                     updates_per_chunk=chunk, hidden_sizes=hidden, lr_schedule="constant", n_groups=n_groups,
                     holdout_size=min(1024, envs * n_steps), bar_features=bar_features)
    space = make_env_params(action_mode="discrete", position_levels=common.LONG_SHORT, window_size=window)
    return make_trainer(spec, MarketEnv(), space)


def train_and_score(args, rho: float, values: dict) -> dict:
    """Train one learner on one market for ``args.updates`` updates; the val curve and its summary."""
    pm, oracle = market(rho, args.symbols, args.bars, args.window, args.seed)
    penalty = float(values.get(PENALTY_KEY, common.DEFAULT_ENV.turnover_penalty))
    params = common.env_params(pm, fee_bps=FEE_BPS, turnover_penalty=penalty)
    val_params = common.env_params(pm, role=ROLE_VAL, fee_bps=FEE_BPS, turnover_penalty=penalty)
    tr = trainer((args.envs, args.n_steps, args.epochs, args.minibatches, args.eval_every, len(pm.symbols)),
                 int(values.get("ppo.bar_features", common.DEFAULT_PPO.bar_features)),
                 tuple(values.get("ppo.hidden_sizes", common.HIDDEN)), pm.window_size)
    hp = common.tbjax_hparams(params, **{k.split(".", 1)[1]: float(v) for k, v in values.items()
                                         if k.startswith("ppo.") and k.split(".", 1)[1] in common.PPO_SETTINGS})
    carry = tr.init(jax.random.PRNGKey(args.seed), hp, pm.market)
    curve, t0 = [], time.perf_counter()
    for _ in range(args.updates // args.eval_every):
        carry, _ = tr.train_chunk(carry, hp, pm.market)
        sharpe, turnover, _ = common.val_score(tr, carry, pm, val_params)
        curve.append((sharpe / oracle if oracle > 0 else 0.0, turnover))
    fraction, turnover = [c[0] for c in curve], [c[1] for c in curve]
    return {"curve_fraction": fraction, "curve_turnover": turnover, "held_fraction": common.held(fraction),
            "peak_fraction": max(fraction), "held_turnover": common.held(turnover), "oracle_sharpe": oracle,
            "seconds": time.perf_counter() - t0}


def objective_of(scores: dict) -> float:
    signal = np.mean([scores[m]["held_fraction"] for m in SIGNAL_MARKETS])
    return float(signal - TURNOVER_WEIGHT * max(0.0, scores[NO_SIGNAL]["held_turnover"] - TURNOVER_GOAL))


def run_trial(trial, args, space) -> float:
    import optuna

    # the study (stage 1) ran without reward shaping; env.turnover_penalty was chosen after it (--grid)
    values = {PENALTY_KEY: 0.0, **{spec.key: spec.suggest(trial) for spec in space}}
    scores = {}
    for i, (name, rho) in enumerate([*SIGNAL_MARKETS.items(), (NO_SIGNAL, 0.0)]):
        scores[name] = train_and_score(args, rho, values)
        trial.set_user_attr(name, scores[name])
        print(f"  trial {trial.number} {name}: held {scores[name]['held_fraction']:.3f} "
              f"peak {scores[name]['peak_fraction']:.3f} turnover {scores[name]['held_turnover']:.3f} "
              f"({scores[name]['seconds']:.0f} s)", flush=True)
        if i == 0:
            trial.report(scores[name]["held_fraction"], 0)
            if trial.should_prune():
                raise optuna.TrialPruned()
    return objective_of(scores)


def plot_study(rows: list[dict], out_dir: Path) -> list[str]:
    """Objective by trial (best so far marked) and the objective against each searched setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["objective"] is not None]
    if not done:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot([r["number"] for r in done], [r["objective"] for r in done], "o", label="trial")
    best = np.maximum.accumulate([r["objective"] for r in done])
    ax.step([r["number"] for r in done], best, where="post", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("objective")
    ax.legend()
    fig.tight_layout()
    paths = [out_dir / "objective_by_trial.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    keys = list(SPACE)
    fig, axes = plt.subplots(2, (len(keys) + 1) // 2, figsize=(10, 5.2))
    for ax, key in zip(axes.flat, keys):
        ax.plot([r["params"][key] for r in done], [r["objective"] for r in done], "o", alpha=0.7)
        if SPACE[key].get("log"):
            ax.set_xscale("log")
        ax.set_title(key, fontsize=9)
    fig.tight_layout()
    paths.append(out_dir / "objective_by_setting.png")
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return [str(p) for p in paths]


def shipped_defaults() -> dict:
    return {k: getattr(common.DEFAULT_PPO, k.split(".", 1)[1]) for k in SPACE}


def confirm(args) -> int:
    """Out-of-study check: the previous and the shipped defaults on other seeds (new markets and
    learner keys), the same objective; written next to the study's JSON."""
    seeds = [int(x) for x in args.confirm.split(",")]
    out = {"device": common.device_string(), "seeds": seeds, "settings": {"updates": args.updates}, "results": {}}
    for name, values in (("previous", {**PREVIOUS_DEFAULTS, PENALTY_KEY: 0.0}),
                         ("shipped", {**shipped_defaults(), PENALTY_KEY: common.DEFAULT_ENV.turnover_penalty})):
        per_seed = []
        for seed in seeds:
            args.seed = seed
            scores = {m: train_and_score(args, rho, values)
                      for m, rho in [*SIGNAL_MARKETS.items(), (NO_SIGNAL, 0.0)]}
            per_seed.append({"seed": seed, "objective": objective_of(scores), "markets": scores})
            print(f"  {name} seed {seed}: objective {per_seed[-1]['objective']:.3f} " + ", ".join(
                f"{m} held {v['held_fraction']:.3f} turnover {v['held_turnover']:.3f}" for m, v in scores.items()),
                flush=True)
        out["results"][name] = {"params": values, "runs": per_seed,
                                "mean_objective": float(np.mean([r["objective"] for r in per_seed]))}
    return common.finish(args.out, out)


def grid(args) -> int:
    """One setting at several values, the rest at the shipped defaults, on every market and seed:
    the project's objective per value (for a setting the study did not search)."""
    key, values = args.grid
    seeds = [int(x) for x in args.grid_seeds.split(",")]
    out = {"device": common.device_string(), "setting": key, "values": values, "seeds": seeds, "with": args.fixed,
           "objective": f"mean held oracle fraction (rho 0.2, 0.1) - {TURNOVER_WEIGHT} x max(0, held "
                        f"no-signal turnover - {TURNOVER_GOAL})",
           "settings": {"symbols": args.symbols, "bars": args.bars, "window": args.window, "n_envs": args.envs,
                        "updates": args.updates, "eval_every": args.eval_every, "fee_bps": FEE_BPS},
           "results": []}
    for value in values:
        for seed in seeds:
            args.seed = seed
            scores = {m: train_and_score(args, rho, {**shipped_defaults(), **args.fixed, key: value})
                      for m, rho in [*SIGNAL_MARKETS.items(), (NO_SIGNAL, 0.0)]}
            out["results"].append({"value": value, "seed": seed, "objective": objective_of(scores), "markets": scores})
            print(f"  {key}={value:g} seed {seed}: objective {out['results'][-1]['objective']:.3f} " + ", ".join(
                f"{m} held {v['held_fraction']:.3f} turnover {v['held_turnover']:.3f}" for m, v in scores.items()),
                flush=True)
    return common.finish(args.out, out)


def main(argv=None) -> int:
    import optuna

    args = parse_args(argv)
    if args.confirm:
        return confirm(args)
    if args.grid:
        return grid(args)
    space = [parse_param(k, v) for k, v in SPACE.items()]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=args.sampler_seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0))
    study.enqueue_trial(PREVIOUS_DEFAULTS)
    study.enqueue_trial(HAND_CANDIDATE)
    t0 = time.perf_counter()
    study.optimize(lambda t: run_trial(t, args, space), n_trials=args.trials)
    # a pruned trial's value is only its rho 0.2 score: no objective
    rows = [{"number": t.number, "state": t.state.name, "params": t.params,
             "objective": t.value if t.state == optuna.trial.TrialState.COMPLETE else None,
             "markets": {k: v for k, v in t.user_attrs.items()}} for t in study.trials]
    best = study.best_trial
    plots = plot_study(rows, Path(args.plots))
    print(f"best trial {best.number}: objective {best.value:.3f} with {best.params}")
    return common.finish(args.out, {
        "device": common.device_string(), "seconds": time.perf_counter() - t0,
        "objective": "mean held oracle fraction (rho 0.2, 0.1) - "
                     f"{TURNOVER_WEIGHT} x max(0, held no-signal turnover - {TURNOVER_GOAL})",
        "space": SPACE, "best": {"number": best.number, "objective": best.value, "params": best.params},
        "trials": rows, "plots": [common.repo_relative(p) for p in plots],
        "settings": {"symbols": args.symbols, "bars": args.bars, "window": args.window, "n_envs": args.envs,
                     "n_steps": args.n_steps, "n_epochs": args.epochs, "n_minibatches": args.minibatches,
                     "updates": args.updates, "eval_every": args.eval_every, "seed": args.seed,
                     "sampler_seed": args.sampler_seed, "fee_bps": FEE_BPS},
    }, ("jax", "optuna"))


if __name__ == "__main__":
    sys.exit(main())
