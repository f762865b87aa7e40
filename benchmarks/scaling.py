"""Training throughput against the number of devices, and the scaling efficiency.

The trainer shards the env axis over a 1-D mesh ("env") and replicates parameters, so adding
devices adds envs (weak scaling): each device keeps ``--envs-per-device`` envs and the fused
rollout + update runs on all of them at once. Figures per device count N (1, 2, 4, 8 where
available): env-steps/s of full training (compile excluded) and

    efficiency(N) = steps_per_s(N) / (N * steps_per_s(1))     (1.0 = perfect weak scaling)

Each N runs in its own subprocess. On CPU the devices are FAKE
(``XLA_FLAGS=--xla_force_host_platform_device_count=N`` set before JAX starts): they share the same
cores, so the CPU figures only show that the sharded program compiles and trains on N devices
(a correctness run, labelled so in the JSON), not a speed claim. On GPU/TPU hosts each N uses the
first N real devices.

    python benchmarks/scaling.py [--quick]   → benchmarks/results/scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

DEVICE_COUNTS = (1, 2, 4, 8)
RESULT_PREFIX = "SCALING_RESULT "


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tiny", action="store_true", help="smallest settings, for tests")
    p.add_argument("--devices", default=None, help="comma-separated device counts (default 1,2,4,8)")
    p.add_argument("--envs-per-device", type=int, default=512)
    p.add_argument("--n-steps", type=int, default=64)
    p.add_argument("--updates", type=int, default=6, help="timed updates per device count")
    common.add_workload_args(p, ppo_shape=False)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(common.RESULTS_DIR / "scaling.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.devices = args.devices or "1,2"
        args.envs_per_device, args.updates, args.bars = 256, 2, 6_000
    if args.tiny:
        args.devices = args.devices or "1,2"
        args.envs_per_device, args.n_steps, args.updates = 32, 16, 1
        args.symbols, args.bars, args.window = 2, 1_500, 8
    return args


def worker(args) -> dict:
    """Train on the first ``args.worker`` devices and return the timing (runs in a subprocess)."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    from tbjax.learner.trainer import make_mesh

    n = args.worker
    if jax.device_count() < n:
        raise SystemExit(f"only {jax.device_count()} devices visible, {n} requested")
    mesh = make_mesh(jax.devices()[:n])
    pm = common.planted_market(args.symbols, args.bars, window_size=args.window)
    params = common.env_params(pm, episode_len=64 if args.tiny else 256)
    n_envs = args.envs_per_device * n
    trainer = common.tbjax_trainer(n_envs, args.n_steps, 4, 4, 1, n_groups=len(pm.symbols), mesh=mesh,
                                   window_size=pm.window_size)
    replicated = NamedSharding(mesh, PartitionSpec())
    market, hp = jax.device_put((pm.market, common.tbjax_hparams(params)), replicated)
    key = jax.device_put(jax.random.PRNGKey(0), replicated)
    t0 = time.perf_counter()
    carry = jax.block_until_ready(trainer.init(key, hp, market))
    carry, metrics = jax.block_until_ready(trainer.train_chunk(carry, hp, market))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.updates):
        carry, metrics = trainer.train_chunk(carry, hp, market)
    jax.block_until_ready((carry, metrics))
    seconds = time.perf_counter() - t0
    finite = all(bool(np.all(np.isfinite(np.asarray(metrics[k])))) for k in ("loss/policy", "loss/value"))
    shards = len(carry.last_obs.sharding.device_set)
    return {"devices": n, "n_envs": n_envs, "steps_per_s": args.updates * n_envs * args.n_steps / seconds,
            "seconds": seconds, "compile_and_first_update_s": compile_s, "finite_losses": finite,
            "env_axis_shards": shards, "device_kind": common.device_string()}


def run_count(n: int, args, backend: str) -> dict:
    """One device count in a fresh interpreter (XLA_FLAGS must be set before JAX starts)."""
    env = dict(os.environ)
    if backend == "cpu":
        flag = f"--xla_force_host_platform_device_count={n}"
        env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                    if "device_count" not in f) + " " + flag
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(n),
           "--envs-per-device", str(args.envs_per_device), "--n-steps", str(args.n_steps),
           "--updates", str(args.updates), "--symbols", str(args.symbols), "--bars", str(args.bars),
           "--window", str(args.window)] + (["--tiny"] if args.tiny else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"devices": n, "error": f"exit {proc.returncode}: {' | '.join(tail)}"}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        print(RESULT_PREFIX + json.dumps(worker(args)), flush=True)
        return 0
    import jax

    backend = jax.default_backend()
    wanted = [int(v) for v in (args.devices or ",".join(map(str, DEVICE_COUNTS))).split(",")]
    counts = wanted if backend == "cpu" else [n for n in wanted if n <= jax.device_count()]
    rows = []
    for n in counts:
        row = run_count(n, args, backend)
        print(f"  {n} device(s): " + (f"{row['steps_per_s']:,.0f} steps/s" if "steps_per_s" in row
                                      else row["error"]), flush=True)
        rows.append(row)
    base = next((r for r in rows if r.get("devices") == 1 and "steps_per_s" in r), None)
    for r in rows:
        if base and "steps_per_s" in r:
            r["efficiency"] = r["steps_per_s"] / (r["devices"] * base["steps_per_s"])
    common.print_table([r for r in rows if "steps_per_s" in r],
                       ["devices", "n_envs", "steps_per_s", "efficiency", "env_axis_shards", "finite_losses"])
    fake = backend == "cpu"
    result = {
        "device": common.device_string(), "backend": backend,
        "kind": "correctness run on fake CPU devices (shared cores), not a speed claim" if fake
                else "weak scaling on real devices",
        "scaling": "weak: envs_per_device fixed, n_envs = envs_per_device x devices",
        "efficiency_definition": "steps_per_s(N) / (N * steps_per_s(1))",
        "results": rows,
        "settings": {"envs_per_device": args.envs_per_device, "n_steps": args.n_steps, "n_epochs": 4,
                     "n_minibatches": 4, "updates": args.updates, "symbols": args.symbols, "bars": args.bars,
                     "window": args.window},
    }
    return common.finish(args.out, result, status=0 if all("steps_per_s" in r for r in rows) else 1)


if __name__ == "__main__":
    sys.exit(main())
