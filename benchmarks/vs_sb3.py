"""Training throughput of tbjax against Stable-Baselines3 PPO on the same market, in one invocation.

Same data (synthetic planted-signal market, ``benchmarks.common.planted_market``), same window and
features, same cost model (SB3 drives the Gymnasium twin ``tbjax.env.gym.MarketGymEnv``, which
follows the JAX env's rules bar for bar), same 2 x 64 widths, n_steps, epochs and minibatch count,
and observation normalisation on both sides (tbjax RunningStats; SB3 VecNormalize with
norm_reward=False). Each side runs at its own practical scale on this machine: SB3 in a
DummyVecEnv or SubprocVecEnv of 8-64 envs with single-threaded torch (``--sb3-vec auto`` probes
a few and keeps the fastest), tbjax with 1,024+ envs in one compiled program (the fastest of
``--tbjax-envs``).

Figure: env-steps/s of full training (rollout + update). tbjax's compile time is excluded from
the rate (the first init + train_chunk calls compile; the timed chunks follow) and reported
separately; SB3 has no compile step, its model construction is excluded likewise.
tbjax also trains a 32-quantile critic with PopArt and CVaR terms, so it does more work per step.

``--policy gru`` / ``lstm``: tbjax's recurrent policy (separate actor and critic cores of 64 units
after the 2 x 64 encoder) against sb3-contrib's RecurrentPPO with separate 64-unit actor and critic
LSTMs and the same 2 x 64 layers (``--policy gru,lstm`` times both tbjax cores against one SB3 run).

    python benchmarks/vs_sb3.py [--quick]     → benchmarks/results/vs_sb3.json
    python benchmarks/vs_sb3.py --policy gru,lstm   → benchmarks/results/vs_sb3_recurrent.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from benchmarks import common, sb3_side  # noqa: E402

SB3_CANDIDATES = (("dummy", 8), ("dummy", 32), ("dummy", 64), ("subproc", 8))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a short run (about a minute)")
    p.add_argument("--tiny", action="store_true", help="smallest settings, for tests")
    common.add_workload_args(p)
    p.add_argument("--tbjax-envs", default="1024,4096", help="comma-separated; the fastest is reported")
    p.add_argument("--tbjax-updates", type=int, default=12, help="timed updates after compilation")
    p.add_argument("--sb3-vec", choices=("auto", "dummy", "subproc"), default="auto")
    p.add_argument("--sb3-envs", type=int, default=16, help="ignored with --sb3-vec auto")
    p.add_argument("--sb3-steps", type=int, default=65_536, help="timed SB3 env steps")
    p.add_argument("--sb3-threads", type=int, default=1, help="torch threads of the SB3 side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policy", default="mlp", help="mlp (SB3 PPO), or gru and/or lstm (RecurrentPPO), comma-separated")
    p.add_argument("--out", default=None, help="default: results/vs_sb3.json (mlp), vs_sb3_recurrent.json (gru, lstm)")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = str(common.RESULTS_DIR / ("vs_sb3.json" if args.policy == "mlp" else "vs_sb3_recurrent.json"))
    if args.quick:
        args.bars, args.tbjax_envs, args.tbjax_updates, args.sb3_steps = 6_000, "1024", 4, 8_192
        if args.sb3_vec == "auto":
            args.sb3_vec, args.sb3_envs = "dummy", 32
    if args.tiny:
        args.symbols, args.bars, args.window, args.n_steps = 2, 1_500, 8, 16
        args.tbjax_envs, args.tbjax_updates, args.sb3_envs, args.sb3_steps = "64", 1, 2, 64
        args.sb3_vec = "dummy"
    return args


def time_tbjax(pm, params, n_envs: int, args, policy: str = "mlp") -> dict:
    """Time ``tbjax_updates`` fused updates after the first (compiling) calls.

    compile_s = first init call + first train_chunk call - one steady chunk: the compile time
    plus one cheap init rollout.
    """
    updates = args.tbjax_updates
    per_chunk = 2 if updates % 2 == 0 else 1
    trainer = common.tbjax_trainer(n_envs, args.n_steps, args.epochs, args.minibatches, per_chunk,
                                   n_groups=len(pm.symbols), policy=policy, window_size=pm.window_size)
    hp = common.tbjax_hparams(params)
    t0 = time.perf_counter()
    carry = jax.block_until_ready(trainer.init(jax.random.PRNGKey(args.seed), hp, pm.market))
    carry, metrics = jax.block_until_ready(trainer.train_chunk(carry, hp, pm.market))
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(updates // per_chunk):
        carry, metrics = trainer.train_chunk(carry, hp, pm.market)
    jax.block_until_ready((carry, metrics))
    seconds = time.perf_counter() - t0
    steps = updates * n_envs * args.n_steps
    return {"steps_per_s": steps / seconds, "env_steps": steps, "seconds": seconds,
            "compile_s": max(first_s - seconds / (updates // per_chunk), 0.0), "n_envs": n_envs, "policy": policy,
            "updates_per_chunk": per_chunk, "reward_mean": float(metrics["reward_mean"][-1])}


def time_sb3(pm, params, vec: str, n_envs: int, steps: int, args) -> dict:
    """Wall time of ``model.learn`` over about ``steps`` env steps (whole rollouts + updates),
    after one untimed warm-up rollout (torch's first-call set-up, like tbjax's compile)."""
    venv = sb3_side.sb3_vec_env(pm.market, params, n_envs, vec, args.seed)
    try:
        if args.policy == "mlp":
            model = sb3_side.sb3_ppo(venv, args.n_steps, args.epochs, args.minibatches, args.seed,
                                   torch_threads=args.sb3_threads, window_size=pm.window_size)
        else:
            model = sb3_side.sb3_recurrent_ppo(venv, args.n_steps, args.epochs, args.minibatches, args.seed,
                                             torch_threads=args.sb3_threads)
        rollouts = max(2, steps // (n_envs * args.n_steps))
        model.learn(total_timesteps=n_envs * args.n_steps)  # warm-up rollout + update, not timed
        warm = model.num_timesteps
        t0 = time.perf_counter()
        model.learn(total_timesteps=rollouts * n_envs * args.n_steps, reset_num_timesteps=False)
        seconds = time.perf_counter() - t0
        steps = model.num_timesteps - warm
        return {"steps_per_s": steps / seconds, "env_steps": int(steps),
                "seconds": seconds, "vec_env": vec, "n_envs": n_envs}
    finally:
        venv.close()


def best_sb3(pm, params, args) -> tuple[dict, list[dict]]:
    """SB3 at its best practical setting: probe candidates briefly (auto) and time the fastest."""
    if args.sb3_vec != "auto":
        return time_sb3(pm, params, args.sb3_vec, args.sb3_envs, args.sb3_steps, args), []
    probes = []
    for vec, n in SB3_CANDIDATES:
        probe = time_sb3(pm, params, vec, n, 8_192, args)
        print(f"  sb3 probe {vec:>7} x {n:>2} envs: {probe['steps_per_s']:,.0f} steps/s", flush=True)
        probes.append(probe)
    fastest = max(probes, key=lambda r: r["steps_per_s"])
    return time_sb3(pm, params, fastest["vec_env"], fastest["n_envs"], args.sb3_steps, args), probes


def main(argv=None) -> int:
    args = parse_args(argv)
    have_sb3 = sb3_side.have_sb3()
    if have_sb3 and args.policy != "mlp":
        try:
            import sb3_contrib  # noqa: F401
        except ImportError:
            have_sb3 = False
    pm = common.planted_market(args.symbols, args.bars, seed=args.seed, window_size=args.window)
    params = common.env_params(pm, episode_len=64 if args.tiny else 256)
    print(f"market: {args.symbols} symbols x {args.bars} bars, window {args.window}, "
          f"obs {args.window * pm.market.n_features + 4}; device {common.device_string()}", flush=True)
    tb_runs = []
    for policy in args.policy.split(","):
        for n_envs in (int(v) for v in str(args.tbjax_envs).split(",")):
            tb_runs.append(time_tbjax(pm, params, n_envs, args, policy))
            print(f"  tbjax {policy} {n_envs} envs: {tb_runs[-1]['steps_per_s']:,.0f} steps/s "
                  f"(compile {tb_runs[-1]['compile_s']:.1f} s)", flush=True)
    best_of = {p: max((r for r in tb_runs if r["policy"] == p), key=lambda r: r["steps_per_s"])
               for p in args.policy.split(",")}
    tb = max(best_of.values(), key=lambda r: r["steps_per_s"])
    sb, probes = (best_sb3(pm, params, args) if have_sb3 else (None, []))
    ratio = tb["steps_per_s"] / sb["steps_per_s"] if sb else None
    rows = [{"learner": f"tbjax {r['policy']}", "setting": f"{r['n_envs']} envs, jit", "steps/s": r["steps_per_s"],
             "env steps": r["env_steps"], "seconds": r["seconds"], "compile s": r["compile_s"]}
            for r in best_of.values()]
    if sb:
        rows.append({"learner": "sb3" if args.policy == "mlp" else "sb3-contrib RecurrentPPO",
                     "setting": f"{sb['vec_env']} x {sb['n_envs']}",
                     "steps/s": sb["steps_per_s"], "env steps": sb["env_steps"], "seconds": sb["seconds"],
                     "compile s": 0.0})
    common.print_table(rows, ["learner", "setting", "steps/s", "env steps", "seconds", "compile s"])
    print(f"ratio tbjax / sb3: {ratio:.1f}x" if ratio else "ratio: n/a (stable-baselines3 not installed)")
    result = {
        "device": common.device_string(),
        "tbjax_steps_per_s": tb["steps_per_s"],
        "sb3_steps_per_s": sb["steps_per_s"] if sb else None,
        "ratio": ratio,
        "tbjax_compile_s": tb["compile_s"],
        "policy": args.policy,
        "ratio_per_policy": {p: (r["steps_per_s"] / sb["steps_per_s"] if sb else None) for p, r in best_of.items()},
        "tbjax_steps_per_s_per_policy": {p: r["steps_per_s"] for p, r in best_of.items()},
        "settings": {
            "market": {"symbols": args.symbols, "bars": args.bars, "window": args.window,
                       "features": pm.market.n_features, "signal_rho": pm.signal_rho},
            "cost": {"fee_bps": 5.0, "position_levels": list(common.LONG_SHORT)},
            "shared": {"n_steps": args.n_steps, "n_epochs": args.epochs, "n_minibatches": args.minibatches,
                       "hidden": list(common.HIDDEN), **common.PPO_SETTINGS},
            "tbjax": tb, "tbjax_runs": tb_runs, "sb3": sb, "sb3_probes": probes, "quick": args.quick, "tiny": args.tiny,
            "sb3_torch_threads": args.sb3_threads,
        },
        "machine": common.machine_info(),
    }
    return common.finish(args.out, result, ("jax", "jaxlib", "flax", "optax", "stable_baselines3", "sb3_contrib",
                                            "torch", "gymnasium", "numpy"))


if __name__ == "__main__":
    sys.exit(main())
