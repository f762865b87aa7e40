"""The env axis sharded over 4 (forced host) devices gives the same training as 1 device, for the
MLP and for a GRU (whose hidden state is sharded with the envs and replayed per minibatch).

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
from tbjax.learner.trainer import make_mesh, make_trainer
from tbjax.run.assembly import make_hparams, make_spec

assert len(jax.devices()) == 4, jax.devices()
hp = make_hparams(make_known_params(), gamma=0.9, popart_beta=0.05, learning_rate=1e-3)
out = {}
for policy in ("mlp", "gru"):
    spec = make_spec(n_envs=16, n_steps=8, n_epochs=2, n_minibatches=2, updates_per_chunk=3,
                     hidden_sizes=(16,), num_quantiles=8, holdout_size=32, lr_schedule="constant",
                     policy=policy, rnn_size=8)
    for n_dev in (4, 1):
        trainer = make_trainer(spec, PhaseCycleEnv(4, 7), make_known_params(), mesh=make_mesh(jax.devices()[:n_dev]))
        carry = trainer.init(jax.random.PRNGKey(0), hp, None)
        carry, metrics = trainer.train_chunk(carry, hp, None)
        carry, metrics = trainer.train_chunk(carry, hp, None)
        sharded = carry.last_obs if policy == "mlp" else carry.hidden
        out[f"{policy}{n_dev}"] = {
            "metrics": {k: np.asarray(v, np.float64).tolist() for k, v in metrics.items()},
            "hidden": None if carry.hidden is None else np.asarray(carry.hidden, np.float64).tolist(),
            "env_devices": len(sharded.sharding.device_set),
            "env_shard_rows": [s.data.shape[0] for s in sharded.addressable_shards],
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
    for policy in ("mlp", "gru"):
        four, one = out[f"{policy}4"], out[f"{policy}1"]
        assert four["env_devices"] == 4 and four["env_shard_rows"] == [4, 4, 4, 4], policy
        assert one["env_devices"] == 1
        assert four["params_replicated"]
        for key, value in one["metrics"].items():
            np.testing.assert_allclose(four["metrics"][key], value, rtol=1e-4, atol=1e-5, err_msg=f"{policy} {key}")
    gru4, gru1 = np.asarray(out["gru4"]["hidden"]), np.asarray(out["gru1"]["hidden"])
    assert gru1.shape == (16, 2 * 8) and np.abs(gru1).max() > 0.01
    np.testing.assert_allclose(gru4, gru1, rtol=1e-4, atol=1e-5)
