"""Does the learner generalise? Judged out of sample on walk-forward folds, never on one split.

    python benchmarks/generalization.py [--quick] [--markets sample,rho0.1,rho0.2,nosignal] [--folds 4]
        [--set key=value ...] [--keep-runs DIR] [--out benchmarks/results/generalization.json]

Each market is run through the walk-forward driver as ONE program, exactly as
``python -m tbjax.walkforward --config configs/base.yaml --folds K [--set ...]`` does: the config is
loaded and validated (:func:`tbjax.config.load_config`), then :func:`tbjax.walkforward.driver.run_walkforward`
(the function the CLI calls) trains the K folds, picks each fold's best carry on its val split,
trades each fold's test segment with it and writes ``walkforward.json``; everything reported here
is read back from that file, so the figures are the ones a user gets.

Markets:

* ``sample``: the shipped daily sample as ``configs/base.yaml`` writes it (AAPL / IBM / MSFT / GOOG,
  long-only levels [0, 0.5, 1], its costs and its budget ``train.total_env_steps`` = 1 M env steps per
  fold); only ``data.processed_dir`` is made absolute so the script runs from any folder.
* ``rho0.1`` / ``rho0.2``: synthetic hourly symbols with a planted signal of correlation rho (NORMAL
  regime: a constant signal-to-noise ratio), as ``benchmarks.common.planted_market`` builds them;
* ``nosignal``: synthetic hourly symbols switching Markov regimes with NO signal (rho 0), as
  policy_quality's ``regimes_no_signal``. No planted signal is not no drift: the chain visits
  STRONG_TREND (mu > 0), so buy-and-hold earns (stitched Sharpe 4.4 at the defaults) and a persistent
  long is a fair answer; what a learner must not do here is churn or short the drift.

The synthetic markets are written the way a user makes them, ``tbjax.synth`` (seed 0, stream k for
symbol k, the same generator as ``planted_market``) then ``tbjax.prepare``, into a temporary folder,
and trained with the shipped config except long-short levels [-1, 0, 1] and the benchmarks' costs
(``benchmarks.common.env_params``): a 5 bp fee per unit traded and nothing else (no spread,
slippage, impact or borrow; equity floor 0); the reward's turnover penalty stays the default.

Default budget: every market trains the shipped budget, ``train.total_env_steps`` = 1 M env steps
per fold (250 updates of 64 envs x 64 steps = 1,024,000, a val evaluation every 20 updates, unless a
``--set`` changes them); the synthetic markets have
4 symbols of 20,000 hourly bars (``SYNTH_SYMBOLS`` x ``SYNTH_BARS``, learning_speed's size). Each
market then takes 100-115 s on 2 CPU cores that another job shares (load ~4), the four 7.3 minutes
with data and imports, well inside 20 (``--bars`` / ``--symbols`` / ``--set train.total_env_steps=...`` change
them). With K = 4 and the default spans (val = test = N // (K + 4) bars) the stitched
out-of-sample series is the last half of the data: 9,972 hourly bars of each synthetic market (the
warm-up rows prepare drops come off the front), 1,048 days of the sample.

Per market (a row of ``results``): the stitched out-of-sample Sharpe and Sortino with their
stationary-bootstrap intervals and PSR vs 0 and vs buy-and-hold (the "Is it real?" block of
``walkforward.json``, copied whole as ``is_it_real``), buy-and-hold's stitched Sharpe / Sortino on the
same bars, stitched turnover (the mean traded fraction the env charged per bar), per fold the best update
as a fraction of the fold's update budget (``cfg.n_updates``) with its val and test figures, the
number of folds that abstained (``deployed`` = "baseline" in ``walkforward.json``; None for a file
written before folds could abstain; the agent's own test Sharpe / Sortino per fold beside it), and the wall-clock seconds of the walk-forward call (setup,
compile, training, evaluation, outputs; JAX's caches are cleared before each market so every market
pays its own compile; the data's synth + prepare time is ``data_s``).

``--quick``: tiny trainer (16 envs x 16 steps, 2048 env steps per fold), 2 folds, 2 synthetic symbols
of 1500 bars, no regime markets in the objective: a smoke test of seconds per market.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

MARKETS = ("sample", "rho0.1", "rho0.2", "nosignal")
SYNTHETIC = {"rho0.1": (0.1, "NORMAL"), "rho0.2": (0.2, "NORMAL"), "nosignal": (0.0, None)}  # rho, forced regime
FEE_BPS = 5.0
SYNTH_SYMBOLS = 4
SYNTH_BARS = 20_000  # learning_speed's and policy_quality's market size
QUICK_SYMBOLS, QUICK_BARS = 2, 1_500
# tiny trainer for --quick: 16 envs x 16 steps = 256 env steps per update, 8 updates per fold
QUICK_SET = ["ppo.n_envs=16", "ppo.n_steps=16", "ppo.n_epochs=1", "ppo.n_minibatches=2", "ppo.hidden_sizes=[16, 16]",
             "ppo.num_quantiles=8", "train.total_env_steps=2048", "train.updates_per_chunk=4", "train.eval_every=4",
             "eval.w_choppy=0.0", "eval.w_trend=0.0"]
# long-short, and the only cost a 5 bp fee per unit traded (benchmarks.common.env_params)
SYNTH_SET = ["env.position_levels=[-1.0, 0.0, 1.0]", f"env.fee_bps={FEE_BPS}", "env.half_spread_bps=0.0",
             "env.slippage_k=0.0", "env.impact_coef=0.0", "env.borrow_bps_per_bar=0.0", "env.equity_floor=0.0"]
CONFIG = common.REPO_ROOT / "configs" / "base.yaml"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny settings, 2 folds (seconds per market)")
    p.add_argument("--markets", default=",".join(MARKETS), help=f"comma-separated subset of {', '.join(MARKETS)}")
    p.add_argument("--folds", type=int, default=None, help="walk-forward folds K (default 4; quick 2)")
    p.add_argument("--symbols", type=int, default=None, help=f"synthetic symbols (default {SYNTH_SYMBOLS})")
    p.add_argument("--bars", type=int, default=None, help=f"hourly bars per synthetic symbol (default {SYNTH_BARS})")
    p.add_argument("--seed", type=int, default=0, help="tbjax.synth seed of the synthetic markets")
    p.add_argument("--set", action="append", default=[], metavar="A.B=C",
                   help="config override for every market, after the benchmark's own (as the CLI's --set)")
    p.add_argument("--keep-runs", default=None, help="keep each market's walk-forward run directory under this folder")
    p.add_argument("--out", default=str(common.RESULTS_DIR / "generalization.json"))
    args = p.parse_args(argv)
    args.markets = [m.strip() for m in args.markets.split(",") if m.strip()]
    unknown = sorted(set(args.markets) - set(MARKETS))
    if unknown or not args.markets:
        p.error(f"--markets: unknown {', '.join(unknown) or 'nothing'}; use names from {', '.join(MARKETS)}")
    args.folds = args.folds or (2 if args.quick else 4)
    args.symbols = args.symbols or (QUICK_SYMBOLS if args.quick else SYNTH_SYMBOLS)
    args.bars = args.bars or (QUICK_BARS if args.quick else SYNTH_BARS)
    return args


def make_market(folder: Path, rho: float, regime: str | None, symbols: int, bars: int, seed: int) -> Path:
    """What ``python -m tbjax.synth`` then ``python -m tbjax.prepare`` run
    (:func:`tbjax.data.synthetic_dump.write_synthetic_dump`, :func:`tbjax.data.prepare.prepare`) into
    ``folder``; the processed folder."""
    from tbjax.data.prepare import prepare
    from tbjax.data.synthetic_dump import write_synthetic_dump
    from tbjax.errors import InputError

    raw, processed = folder / "raw", folder / "processed"
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # prepare's per-symbol lines would bury the table
            write_synthetic_dump(raw, int(symbols), int(bars), "1h", int(seed), float(rho), regime)
            prepare(raw, processed)
    except InputError as exc:
        raise SystemExit(f"could not build the synthetic market in {folder}: {exc}") from None
    return processed


def overrides_for(name: str, processed: Path, args) -> list[str]:
    """The market's config overrides (the benchmark's, then the user's ``--set``)."""
    own = [f"data.processed_dir={processed}"]
    if name != "sample":
        own += SYNTH_SET
    if args.quick:
        own += QUICK_SET
    return own + list(args.set) + [f"walkforward.folds={args.folds}"]


def fresh_caches() -> None:
    """Each market pays its own compile: clear JAX's caches and the drivers' program caches."""
    import jax

    from tbjax.learner import population
    from tbjax.run import assembly

    jax.clear_caches()
    population._PROGRAMS.clear()
    assembly._TRAINERS.clear()


def abstained(fold: dict) -> bool | None:
    """Whether a fold traded its baseline instead of the agent (walkforward.json's per-fold
    ``deployed``, "agent" or "baseline"); None for files written before folds could abstain."""
    return None if "deployed" not in fold else fold["deployed"] != "agent"


def summarise(name: str, doc: dict, cfg, seconds: float, data_s: float) -> dict:
    """The row of one market, read from its walkforward.json."""
    st = doc["stitched"]
    m, bh, real = st["metrics"], st["buy_and_hold"], st["is_it_real"]
    folds = []
    for row in doc["folds"]:
        t = row["test"]
        folds.append({"fold": row["fold"], "best_update": row["best_update"],
                      "best_update_fraction": row["best_update"] / cfg.n_updates,
                      "val_objective": row.get("val_objective"), "val_sortino": row.get("val_sortino"),
                      "test_sharpe": t.get("sharpe"), "test_sortino": t.get("sortino"),
                      "test_turnover": t.get("turnover"),
                      "test_buy_and_hold_sortino": t.get("buy_and_hold", {}).get("sortino"),
                      "abstained": abstained(row), "deployed": row.get("deployed"),
                      # the trained policy's own test figures where the file keeps them apart from the deployed
                      "agent_test_sharpe": (row.get("agent") or {}).get("test", {}).get("sharpe"),
                      "agent_test_sortino": (row.get("agent") or {}).get("test", {}).get("sortino"),
                      "diverged": row.get("diverged"),
                      # walkforward.seeds > 1: each seed's val objective and whether the fold's ensemble holds it
                      "seeds": [{k: s.get(k) for k in ("seed", "val_objective", "best_update", "in_ensemble")}
                                for s in row.get("seeds") or []]})
    flags = [f["abstained"] for f in folds]
    return {
        "market": name, "folds": len(folds), "updates_per_fold": cfg.n_updates,
        "env_steps_per_fold": cfg.n_updates * cfg.batch_size, "position_levels": list(cfg.env.position_levels),
        "stitched_bars": m.get("n_bars"),
        "sharpe": m.get("sharpe"), "sharpe_ci": real.get("sharpe_ci"),
        "sortino": m.get("sortino"), "sortino_ci": real.get("sortino_ci"),
        "total_return": m.get("total_return"), "max_drawdown": m.get("max_drawdown"), "turnover": m.get("turnover"),
        "buy_and_hold_sharpe": bh.get("sharpe"), "buy_and_hold_sortino": bh.get("sortino"),
        "buy_and_hold_return": bh.get("total_return"),
        "psr_vs_zero": real.get("psr"), "psr_vs_buy_and_hold": real.get("psr_vs_benchmark"),
        "significant": real.get("significant"), "reading": real.get("reading"),
        "best_update_fractions": [f["best_update_fraction"] for f in folds],
        "abstained_folds": None if all(a is None for a in flags) else sum(bool(a) for a in flags),
        "seconds": seconds, "data_s": data_s, "fold_rows": folds, "is_it_real": real,
    }


def run_market(name: str, args, work: Path) -> dict:
    from tbjax.config import load_config
    from tbjax.walkforward.driver import run_walkforward

    t0 = time.perf_counter()
    if name == "sample":
        processed = common.REPO_ROOT / "data" / "sample" / "processed"
    else:
        rho, regime = SYNTHETIC[name]
        processed = make_market(work / name, rho, regime, args.symbols, args.bars, args.seed)
    data_s = time.perf_counter() - t0
    overrides = overrides_for(name, processed, args)
    cfg = load_config(CONFIG, overrides)  # what the CLI does: load (and validate), run_walkforward
    run_dir = (Path(args.keep_runs) if args.keep_runs else work / "runs") / name
    fresh_caches()
    t0 = time.perf_counter()
    doc = run_walkforward(cfg, run_dir)
    seconds = time.perf_counter() - t0
    row = summarise(name, doc, cfg, seconds, data_s)
    row["overrides"] = [o if not o.startswith("data.processed_dir=") else "data.processed_dir=" + (
        common.repo_relative(processed) if name == "sample" else "<synth + prepare>") for o in overrides]
    if args.keep_runs:
        row["run_dir"] = common.repo_relative(run_dir)
    return row


def _ci(v) -> str:
    return "n/a" if not v or any(x is None or not math.isfinite(x) for x in v) else f"[{v[0]:.2f}, {v[1]:.2f}]"


def main(argv=None) -> int:
    args = parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="tbjax-generalization-") as tmp:
        for name in args.markets:
            row = run_market(name, args, Path(tmp))
            results.append(row)
            print(f"{name}: stitched Sharpe {row['sharpe']} {_ci(row['sharpe_ci'])}, Sortino {row['sortino']} "
                  f"{_ci(row['sortino_ci'])}; buy-and-hold Sharpe {row['buy_and_hold_sharpe']}; "
                  f"{row['seconds']:.0f} s", flush=True)
    table = [{**{k: r[k] for k in ("market", "sharpe", "sortino", "buy_and_hold_sharpe", "buy_and_hold_sortino",
                                    "psr_vs_zero", "psr_vs_buy_and_hold", "turnover", "abstained_folds", "seconds")},
              "sharpe_ci": _ci(r["sharpe_ci"]), "sortino_ci": _ci(r["sortino_ci"]),
              "best_update_fractions": "/".join(f"{f:.2f}" for f in r["best_update_fractions"])} for r in results]
    common.print_table(table, ["market", "sharpe", "sharpe_ci", "sortino", "sortino_ci", "buy_and_hold_sharpe",
                               "buy_and_hold_sortino", "psr_vs_zero", "psr_vs_buy_and_hold", "turnover",
                               "best_update_fractions", "abstained_folds", "seconds"])
    report = {
        "device": common.device_string(), "machine": common.machine_info(), "quick": args.quick,
        "folds": args.folds, "config": common.repo_relative(CONFIG), "set": list(args.set),
        "synthetic": {"symbols": args.symbols, "bars_per_symbol": args.bars, "timeframe": "1h", "seed": args.seed,
                      "fee_bps": FEE_BPS},
        "method": ("per market: load_config(configs/base.yaml, overrides) + run_walkforward (what python -m "
                   "tbjax.walkforward runs), figures read from its walkforward.json; stitched = every fold's test "
                   "segment traded by that fold's best-on-val policy; intervals: the stationary bootstrap of its "
                   "'Is it real?' block; best_update_fraction = best update / cfg.n_updates; seconds = the "
                   "run_walkforward call after clearing JAX's caches"),
        "results": results,
    }
    return common.finish(args.out, report, ("jax", "jaxlib", "flax", "optax"))


if __name__ == "__main__":
    sys.exit(main())
