"""Regression: the trial-vmapped trainer with 2×64 hidden layers must run, not deadlock.

jaxlib 0.10.2's XLA:CPU concurrency-optimised scheduler deadlocked on this program (every thread
asleep, forever); tbjax.xla_flags turns that scheduler off. Run in a subprocess with a timeout so
a regression fails instead of hanging the suite.
"""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from tbjax.config import load_config
    from tbjax.run.assembly import env_params_from_config, hparams_from_config, spec_from_config, trainer_for
    from tbjax.run.experiment import build_experiment
    from tbjax.hpo.program import program_for, stack_trees
    cfg = load_config("configs/base.yaml", ["ppo.n_envs=16", "ppo.n_steps=16", "ppo.n_epochs=2", "ppo.n_minibatches=4",
                      "ppo.hidden_sizes=[64, 64]", "ppo.num_quantiles=16", "env.episode_len=64",
                      "train.updates_per_chunk=2", "train.total_env_steps=1024"])
    exp = build_experiment(cfg, with_regimes=False)
    trainer = trainer_for(spec_from_config(cfg, len(exp.symbols)), env_params_from_config(cfg, 0))
    hp = hparams_from_config(cfg, env_params_from_config(cfg, 0))
    prog = program_for(trainer, 2)
    hps = stack_trees([hp, hp.replace(learning_rate=jnp.float32(1e-4))])
    carry = prog.init(jnp.stack([jax.random.PRNGKey(0)] * 2), hps, exp.market)
    carry, metrics = prog.chunk(carry, hps, jnp.ones(2, bool), exp.market)
    assert np.isfinite(np.asarray(metrics["loss/value"])).all()
    print("ok")
""")


def test_vmapped_trainer_with_64_wide_layers_does_not_deadlock():
    env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")
