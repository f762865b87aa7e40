"""Env-only throughput: the vmapped JAX market env against its NumPy/Gymnasium twin.

JAX: one jitted ``lax.scan`` of ``steps`` vmapped auto-resetting steps with random actions, the
market z-scored once per call as every compiled program of tbjax does (its cost is timed). The
observation is carried in the scan (as a PPO rollout carries it into the policy), so it is built
and written every step; compile time is excluded and the best of ``repeats`` timed calls is
reported (the machine may be shared). Both ``return_final_obs`` settings are measured.
Gymnasium twin: one env stepped in a Python loop with random actions (resetting when done); its
steps/s does not depend on n_envs and is reported beside every row.

    python benchmarks/env_throughput.py            # 4 symbols x 20,000 bars x 16 features, window 32
    python benchmarks/env_throughput.py --quick    # seconds; used by tests
    python benchmarks/env_throughput.py --n-envs 4096 16384 65536   # an accelerator's sizes
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

import jax
import numpy as np

from benchmarks import common
from tbjax.data.features import feature_names
from tbjax.data.market import market_data_from_arrays, scaled_once
from tbjax.env import market
from tbjax.env.gym import MarketGymEnv
from tbjax.run.assembly import make_env_params

RESULTS = Path(__file__).parent / "results" / "env_throughput.json"


def synthetic_market(n_symbols: int, n_bars: int, n_features: int, seed: int = 0):
    """Random-walk prices with 1 % bars, random z-features (named as the product's), 1 % untradable bars,
    70/15/15 splits."""
    rng = np.random.default_rng(seed)
    cols = {k: [] for k in ("features", "open", "close", "volatility", "volume", "tradable", "hour_of_week")}
    for _ in range(n_symbols):
        close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n_bars)))
        cols["close"].append(close.astype(np.float32))
        cols["open"].append((np.concatenate([[100.0], close[:-1]]) * np.exp(rng.normal(0, 0.002, n_bars)))
                            .astype(np.float32))
        cols["features"].append(rng.normal(size=(n_bars, n_features)).astype(np.float32))
        cols["volatility"].append(np.full(n_bars, 0.01, np.float32))
        cols["volume"].append(rng.uniform(1e3, 1e4, n_bars).astype(np.float32))
        cols["tradable"].append(rng.random(n_bars) > 0.01)
        cols["hour_of_week"].append((np.arange(n_bars) % 168).astype(np.int32))
    a, b = int(0.7 * n_bars), int(0.85 * n_bars)
    return market_data_from_arrays(
        symbols=[f"SYN{i}" for i in range(n_symbols)], open_=cols.pop("open"),
        role_ranges=[[(0, a), (a, b), (b, n_bars)]] * n_symbols,
        feature_names=_feature_names(n_features), **cols)


def _feature_names(n_features: int) -> list[str]:
    """The product's feature names for the first columns (so a program that reads them, the training
    rollout's mirror plan, is the product's), then generic ones."""
    names = feature_names(has_taker=True)
    return [f"{names[i] if i < len(names) else f'f{i}'}_z" for i in range(n_features)]


def jax_steps_per_s(params, data, n_envs: int, steps: int, repeats: int, return_final_obs: bool) -> float:
    vstep = jax.vmap(functools.partial(market.step, return_final_obs=return_final_obs),
                     in_axes=(0, 0, 0, None, None))
    n_levels = market.n_actions(params)

    @jax.jit
    def rollout(carry, params, data):
        data = scaled_once(data)  # as the trainer does: z-score the market once per program, not per step

        def body(carry, _):
            key, states, obs = carry
            key, k_act, k_env = jax.random.split(key, 3)
            actions = jax.random.randint(k_act, (n_envs,), 0, n_levels)
            obs, states, reward, done, info = vstep(jax.random.split(k_env, n_envs), states, actions, params, data)
            kept = reward.sum() + (info["final_obs"][:, 0].sum() if return_final_obs else 0.0)
            return (key, states, obs), kept
        return jax.lax.scan(body, carry, None, steps)

    keys = jax.random.split(jax.random.PRNGKey(0), n_envs)
    obs, states = jax.vmap(market.reset, in_axes=(0, None, None))(keys, params, data)
    carry = (jax.random.PRNGKey(1), states, obs)
    carry, _ = jax.block_until_ready(rollout(carry, params, data))  # compile + warm-up
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        carry, _ = jax.block_until_ready(rollout(carry, params, data))
        best = max(best, n_envs * steps / (time.perf_counter() - start))
    return best


def gym_steps_per_s(params, data, n_steps: int) -> float:
    env = MarketGymEnv(data, params)
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, market.n_actions(params), n_steps)
    start = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    return n_steps / (time.perf_counter() - start)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (seconds) for smoke tests")
    parser.add_argument("--n-envs", type=int, nargs="*", default=None,
                        help="env counts (default 256 1024 4096 16384; quick 64)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        shape, env_counts, steps, repeats, gym_steps = (2, 2000, 8), (64,), 20, 1, 500
    else:
        shape, env_counts, steps, repeats, gym_steps = (4, 20_000, 16), (256, 1024, 4096, 16384), 200, 10, 20_000
    env_counts = tuple(args.n_envs or env_counts)
    data = synthetic_market(*shape)
    params = make_env_params(window_size=32, episode_len=256, position_levels=(-1.0, 0.0, 1.0),
                             borrow_bps_per_bar=1.0, turnover_penalty=0.0)
    market.check_data(params, data)
    device = jax.devices()[0]
    gym_rate = gym_steps_per_s(params, data, gym_steps)
    rows = []
    print(f"device: {device.device_kind} ({device.platform}); data {shape[0]} symbols x {shape[1]} bars x "
          f"{shape[2]} features, window 32, {steps} steps per call, best of {repeats}")
    print(f"{'n_envs':>8} {'tbjax steps/s':>15} {'+final_obs':>15} {'gym steps/s':>13}")
    result = {"device": device.device_kind or device.platform, "cpu": common.cpu_model(), "results": rows,
              "config": {"n_symbols": shape[0], "n_bars": shape[1], "n_features": shape[2], "window_size": 32,
                         "steps_per_call": steps, "repeats": repeats, "quick": args.quick}}
    for n_envs in env_counts:
        lean = jax_steps_per_s(params, data, n_envs, steps, repeats, return_final_obs=False)
        with_final = jax_steps_per_s(params, data, n_envs, steps, repeats, return_final_obs=True)
        rows.append({"n_envs": n_envs, "tbjax_steps_per_s": lean, "tbjax_steps_per_s_final_obs": with_final,
                     "gym_steps_per_s": gym_rate})
        common.write_json(args.out, result)  # after every row: a run stopped early keeps the rows it finished
        print(f"{n_envs:>8} {lean:>15,.0f} {with_final:>15,.0f} {gym_rate:>13,.0f}", flush=True)
    common.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
