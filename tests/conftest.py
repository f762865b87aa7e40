"""Shared test setup: the tests mirror the package (tests/data, tests/env, tests/agent, ...), and
the small markets and envs with known answers (env_fixtures.py, known_envs.py) live here at the
root, importable from every folder."""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    # The CLIs keep compiled programs in ~/.cache/tbjax/jax (tbjax.run.compile_cache); a test
    # session keeps them in one temporary folder, shared by its xdist workers (they inherit it).
    _cache = tempfile.mkdtemp(prefix="tbjax-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, True)

sys.path.insert(0, str(Path(__file__).resolve().parent))


def memory_map_ceiling() -> int:
    """Linux's ceiling on one process's memory maps (``vm.max_map_count``; 65,530 by default)."""
    try:
        with open("/proc/sys/vm/max_map_count") as ceiling:
            return int(ceiling.read())
    except (OSError, ValueError):
        return 65530


def memory_maps() -> int | None:
    """How many memory maps this process holds (Linux); None where /proc/self/maps is absent."""
    try:
        with open("/proc/self/maps", "rb") as maps:
            return sum(1 for _ in maps)
    except OSError:
        return None


@pytest.fixture(scope="module", autouse=True)
def release_compiled_programs():
    """After a test module, drop JAX's in-process compiled programs once they hold many memory maps.

    XLA's CPU backend keeps every compiled program's machine code in its own small memory maps
    (about 3 per program), and JAX keeps every program it compiled for the life of the process. An
    xdist worker compiles thousands of programs in one run and reached Linux's ceiling on maps per
    process (:func:`memory_map_ceiling`): past it the next mmap fails and XLA dies in a compile or a
    serialisation (seen in CI as a segfault or an abort, always in a late, large walk-forward program).
    ``jax.clear_caches()`` frees those maps; later modules load what they need again from the
    session's persistent compilation cache. Clearing only past a third of the ceiling keeps the
    reloads few.
    """
    yield
    held = memory_maps()
    if held is not None and held > memory_map_ceiling() // 3:
        import jax

        jax.clear_caches()
