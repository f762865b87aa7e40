"""Training throughput of the fused loop (rollout + distributional PPO update) on the market env.

For each policy (mlp, gru, lstm: the recurrent core of 64 units after the 2 x 64 encoder, separate
actor and critic cores) and each n_envs: one compiled ``train_chunk`` (compile and a warm-up call excluded) is timed over
``updates`` updates; env-steps/s = n_envs * n_steps * updates / seconds (best of ``repeats``; the
machine may be shared). The two phases are also timed alone (jit of the rollout, jit of the PPO
update on a batch of the same size) to say which one dominates.

Update GFLOP/s: XLA's cost analysis counts a while loop's body once, so the flops of one update
are taken from a loop-free program, one SGD minibatch step (forward, backward, clip, Adam),
times n_epochs * n_minibatches, and divided by the measured time of the PPO update phase. The
matmul peak is the best time of a 2048 x 2048 float32 ``jnp.dot`` (2 n^3 flops).

``--population P ...``: instead of lone trainers, seed populations of P members of n_envs envs each
(the mlp policy) trained as ONE program (``tbjax.learner.population``: vmapped on an accelerator,
one member at a time on a CPU); env-steps/s = P * n_envs * n_steps * updates / seconds of one
chunk (best of ``repeats``), ``compile_s`` = the first chunk minus a steady one.

The JSON is rewritten after every measured row, so a run stopped early keeps the rows it finished.

    python benchmarks/train_throughput.py          # 4 symbols x 20,000 bars x 16 features, window 32
    python benchmarks/train_throughput.py --quick  # seconds
    python benchmarks/train_throughput.py --policies mlp --n-envs 1024
    python benchmarks/train_throughput.py --population 16 64 --n-envs 256 --out population.json
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import jax.numpy as jnp

from benchmarks.record import machine_info, write_json
from env_throughput import synthetic_market  # same synthetic MarketData as the env benchmark
from tbjax.agent import ppo
from tbjax.data.market import scaled_once
from tbjax.env import market
from tbjax.env.protocol import MarketEnv
from tbjax.learner.population import default_member_batch, member_keys, population_program
from tbjax.learner.rollout import rollout as learner_rollout
from tbjax.learner.trainer import TrainerSpec, make_trainer
from tbjax.learner.update import ppo_batch
from tbjax.run.assembly import make_env_params, make_hparams, make_spec

RESULTS = Path(__file__).parent / "results" / "train_throughput.json"
RNN_SIZE = 64


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, b))
    return 2.0 * n**3 / best_time(lambda: dot(a, b), repeats) / 1e9


def flops_of(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", float("nan")))


def trainer_spec(policy: str, n_envs: int, args, data) -> TrainerSpec:
    return make_spec(n_envs=n_envs, n_steps=args.n_steps, n_epochs=4, n_minibatches=4,
                     updates_per_chunk=args.updates, hidden_sizes=(64, 64), num_quantiles=32,
                     holdout_size=1024, n_groups=data.n_symbols, lr_schedule="constant",
                     policy=policy, rnn_size=RNN_SIZE)


def measure_population(n_members: int, n_envs: int, args, data, env_params) -> dict:
    """Chunks of a seed population of ``n_members`` members x ``n_envs`` envs, timed (module docstring)."""
    trainer = make_trainer(trainer_spec("mlp", n_envs, args, data), MarketEnv(), env_params)
    program = population_program(trainer, n_members)
    hps = program.members([make_hparams(env_params)] * n_members)
    alive = [True] * n_members
    carry = jax.block_until_ready(program.start(program.members(list(member_keys(0, n_members))), hps, data))
    t0 = time.perf_counter()
    carry, _ = jax.block_until_ready(program.advance(carry, hps, alive, data))  # compile + warm-up
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        carry, _ = jax.block_until_ready(program.advance(carry, hps, alive, data))
        times.append(time.perf_counter() - t0)
    per_update = min(times) / args.updates
    return {"policy": "mlp", "members": n_members, "n_envs": n_envs, "total_envs": n_members * n_envs,
            "member_batch": default_member_batch(n_members) if n_members > 1 else 1,
            "steps_per_s": n_members * n_envs * args.n_steps / per_update, "seconds_per_update": per_update,
            "compile_s": max(first_s - min(times), 0.0)}


def measure(policy: str, n_envs: int, args, data, env_params) -> dict:
    spec = trainer_spec(policy, n_envs, args, data)
    trainer = make_trainer(spec, MarketEnv(), env_params)
    hp = make_hparams(env_params)
    carry = trainer.init(jax.random.PRNGKey(0), hp, data)
    carry, _ = trainer.train_chunk(carry, hp, data)  # compile + warm-up
    jax.block_until_ready(carry)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        carry, metrics = trainer.train_chunk(carry, hp, data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    per_update = min(times) / args.updates

    # Phase timings: the rollout alone and the PPO update alone on a batch of the same size.
    rollout = jax.jit(functools.partial(learner_rollout, trainer.context))
    roll_args = (carry.params, carry.obs_stats, carry.popart, carry.env_state, carry.last_obs,
                 carry.rng, hp, scaled_once(data), carry.hidden)  # scaled once, as train_chunk does
    out = rollout(*roll_args)
    jax.block_until_ready(out)
    rollout_s = best_time(lambda: rollout(*roll_args), args.repeats)
    ctx = trainer.context
    batch = ppo_batch(ctx, out[0], out[1], out[2], carry.obs_stats, carry.popart, carry.hidden)
    kw = dict(apply_fn=ctx.replay if ctx.recurrent else ctx.apply, action_mode=trainer.action_mode, huber_kappa=1.0,
              n_epochs=spec.n_epochs, n_minibatches=spec.n_minibatches)
    update = jax.jit(lambda p, o, b, k: ppo.ppo_update(p, o, b, k, hp, hp.learning_rate, **kw))
    jax.block_until_ready(update(carry.params, carry.opt_state, batch, carry.rng))
    update_s = best_time(lambda: update(carry.params, carry.opt_state, batch, carry.rng), args.repeats)

    n_samples = batch.obs.shape[0] if batch.hidden is None else batch.hidden.shape[0]
    mb = ppo.minibatch(batch, jnp.arange(n_samples // spec.n_minibatches))
    one_step = dict(kw, n_epochs=1, n_minibatches=1)
    step = jax.jit(lambda p, o, b, k: ppo.ppo_update(p, o, b, k, hp, hp.learning_rate, **one_step))
    step_flops = flops_of(step.lower(carry.params, carry.opt_state, mb, carry.rng).compile())
    update_flops = step_flops * spec.n_epochs * spec.n_minibatches
    return {
        "policy": policy,
        "n_envs": n_envs,
        "steps_per_s": n_envs * spec.n_steps / per_update,
        "update_gflops": update_flops / update_s / 1e9,
        "seconds_per_update": per_update,
        "rollout_s": rollout_s,
        "ppo_update_s": update_s,
        "update_gflop": update_flops / 1e9,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny run (seconds)")
    p.add_argument("--n-envs", type=int, nargs="*", default=None)
    p.add_argument("--policies", default="mlp,gru,lstm", help="comma-separated: mlp, gru, lstm")
    p.add_argument("--population", type=int, nargs="*", default=None,
                   help="member counts: time seed populations (mlp, n_envs per member) instead of lone trainers")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        shape, n_envs, args.n_steps, args.updates, args.repeats = (2, 2000, 8), [64], 16, 1, 1
        window, episode_len = 8, 64
    else:
        shape, n_envs, args.n_steps, args.updates, args.repeats = (4, 20000, 16), [1024, 4096], 64, 2, 3
        window, episode_len = 32, 256
    n_envs = args.n_envs or n_envs
    data = synthetic_market(*shape, seed=0)
    env_params = make_env_params(window_size=window, episode_len=episode_len)
    market.check_data(env_params, data)

    peak = matmul_peak_gflops(1024 if args.quick else 2048)
    device = f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind} x{jax.device_count()}"
    results = []
    report = {"device": device, "quick": args.quick, "machine": machine_info(),
              "config": {"symbols_bars_features": list(shape), "window": window, "n_steps": args.n_steps,
                         "n_epochs": 4, "n_minibatches": 4, "hidden_sizes": [64, 64], "num_quantiles": 32,
                         "rnn_size": RNN_SIZE, "recurrent_cores": "separate actor and critic",
                         **({"population": list(args.population)} if args.population else {})},
              "results": results}
    print(f"device {device}; matmul peak {peak:.1f} GFLOP/s")
    if args.population:
        print(f"{'members':>7} {'n_envs':>7} {'total envs':>10} {'env-steps/s':>12} {'s/update':>9} {'compile s':>9}")
        for size in args.population:
            for n in n_envs:
                r = measure_population(size, n, args, data, env_params)
                results.append(r)
                write_json(args.out, report)  # after every row: a run stopped early keeps the rows it finished
                print(f"{size:>7} {n:>7} {r['total_envs']:>10} {r['steps_per_s']:>12,.0f} "
                      f"{r['seconds_per_update']:>9.3f} {r['compile_s']:>9.1f}", flush=True)
    else:
        print(f"{'policy':>6} {'n_envs':>7} {'env-steps/s':>12} {'s/update':>9} {'rollout s':>10} {'update s':>9} "
              f"{'GFLOP/upd':>10} {'GFLOP/s':>8} {'% peak':>7}")
        for policy in args.policies.split(","):
            for n in n_envs:
                r = measure(policy, n, args, data, env_params)
                r["matmul_peak_gflops"] = peak
                mlp = next((m for m in results if m["policy"] == "mlp" and m["n_envs"] == n), None)
                r["vs_mlp"] = r["steps_per_s"] / mlp["steps_per_s"] if mlp else None
                results.append(r)
                write_json(args.out, report)
                print(f"{policy:>6} {n:>7} {r['steps_per_s']:>12,.0f} {r['seconds_per_update']:>9.3f} "
                      f"{r['rollout_s']:>10.3f} {r['ppo_update_s']:>9.3f} {r['update_gflop']:>10.2f} "
                      f"{r['update_gflops']:>8.1f} {100 * r['update_gflops'] / peak:>6.1f}%", flush=True)
    write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
