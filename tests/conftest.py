"""Shared test setup: the tests mirror the package (tests/data, tests/env, tests/agent, ...), and
the small markets and envs with known answers (env_fixtures.py, known_envs.py) live here at the
root, importable from every folder."""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    # The CLIs keep compiled programs in ~/.cache/tbjax/jax (tbjax.run.compile_cache); a test
    # session keeps them in one temporary folder, shared by its xdist workers (they inherit it).
    _cache = tempfile.mkdtemp(prefix="tbjax-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, True)

sys.path.insert(0, str(Path(__file__).resolve().parent))
