"""The suite's guard against the per-process memory-map ceiling (tests/conftest.py,
``release_compiled_programs``) rests on two facts checked here: each program XLA's CPU backend
compiles holds memory maps for the life of the process, and ``jax.clear_caches()`` gives them back."""

import jax
import jax.numpy as jnp
from conftest import memory_maps


def test_compiled_programs_hold_memory_maps_until_jax_clears_its_caches():
    jax.jit(jnp.tanh)(jnp.ones(3)).block_until_ready()  # JAX's one-off start-up maps come first
    before = memory_maps()
    assert before is not None, "the suite runs on Linux, where /proc/self/maps exists"
    programs = [jax.jit(lambda x, k=k: jnp.sin(x) * k + jnp.cos(x) ** 2) for k in range(60)]
    for program in programs:
        program(jnp.ones(3)).block_until_ready()
    compiled = memory_maps()
    assert compiled - before >= 60, "at least one map per compiled program"
    jax.clear_caches()
    released = memory_maps()
    assert compiled - released >= 0.8 * (compiled - before)
