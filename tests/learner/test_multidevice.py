"""The env axis sharded over 4 (forced host) devices gives the same training as 1 device.

Runs in a subprocess because XLA_FLAGS=--xla_force_host_platform_device_count=4 must be set
before JAX creates its CPU backend.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from known_envs import PhaseCycleEnv, make_known_params
from tbjax.learner.trainer import TrainerSpec, make_hparams, make_mesh, make_trainer

assert len(jax.devices()) == 4, jax.devices()
spec = TrainerSpec(n_envs=16, n_steps=8, n_epochs=2, n_minibatches=2, updates_per_chunk=3,
                   hidden_sizes=(16,), num_quantiles=8, holdout_size=32, lr_schedule="constant")
hp = make_hparams(make_known_params(), gamma=0.9, popart_beta=0.05, learning_rate=1e-3)
out = {}
for n_dev in (4, 1):
    trainer = make_trainer(spec, PhaseCycleEnv(4, 7), make_known_params(), mesh=make_mesh(jax.devices()[:n_dev]))
    carry = trainer.init(jax.random.PRNGKey(0), hp, None)
    carry, metrics = trainer.train_chunk(carry, hp, None)
    carry, metrics = trainer.train_chunk(carry, hp, None)
    out[n_dev] = {
        "metrics": {k: np.asarray(v, np.float64).tolist() for k, v in metrics.items()},
        "obs_devices": len(carry.last_obs.sharding.device_set),
        "obs_shard_rows": [s.data.shape[0] for s in carry.last_obs.addressable_shards],
        "params_replicated": all(x.sharding.is_fully_replicated
                                 for x in jax.tree_util.tree_leaves(carry.params)),
    }
print("RESULT" + json.dumps(out))
"""


def test_four_devices_match_one_device():
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    out = json.loads(line[len("RESULT"):])
    four, one = out["4"], out["1"]
    assert four["obs_devices"] == 4 and four["obs_shard_rows"] == [4, 4, 4, 4]
    assert one["obs_devices"] == 1
    assert four["params_replicated"]
    for key, value in one["metrics"].items():
        np.testing.assert_allclose(four["metrics"][key], value, rtol=1e-4, atol=1e-5, err_msg=key)
