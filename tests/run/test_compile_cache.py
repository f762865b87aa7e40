"""Where each command keeps its compiled programs (tbjax.run.compile_cache), and that a second
process compiling the same program loads it instead of adding an entry."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from tbjax.run.compile_cache import MIN_COMPILE_SECONDS, use_compilation_cache

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def restore_jax_config():
    old = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    yield
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


def test_the_folder_is_chosen_in_the_documented_order(tmp_path, monkeypatch, restore_jax_config):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
    monkeypatch.delenv("TBJAX_COMPILATION_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert use_compilation_cache() == str(tmp_path / "xdg" / "tbjax" / "jax")  # 3. the user's cache folder
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xdg" / "tbjax" / "jax")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == MIN_COMPILE_SECONDS
    assert use_compilation_cache(tmp_path / "run" / "jax_cache") == str(tmp_path / "run" / "jax_cache")  # HPO's
    monkeypatch.setenv("TBJAX_COMPILATION_CACHE", "off")  # 2. off
    assert use_compilation_cache() is None
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "shared"))  # 1. JAX's own variable wins
    assert use_compilation_cache(tmp_path / "run" / "jax_cache") == str(tmp_path / "shared")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "shared")


PROGRAM = """
import sys
from tbjax.run.compile_cache import use_compilation_cache
use_compilation_cache()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum() * {k})
print(float(f(jnp.ones((64, 64)))))
"""


def _entries(folder: Path) -> set[str]:
    return {p.name for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def test_a_second_process_loads_the_program_and_a_changed_program_gets_its_own_entry(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.pop("TBJAX_COMPILATION_CACHE", None)
    folder = tmp_path / "tbjax" / "jax"

    def run(k: int) -> float:
        out = subprocess.run([sys.executable, "-c", PROGRAM.format(k=k)], env=env, capture_output=True, text=True,
                             check=True)
        return float(out.stdout.strip())

    assert run(1) == pytest.approx(64 * 64 * float(jax.numpy.tanh(64.0)))
    first = _entries(folder)
    assert first  # the program was written
    assert run(1) == pytest.approx(64 * 64 * float(jax.numpy.tanh(64.0)))
    assert _entries(folder) == first  # loaded, not compiled again: same key, no new entry
    assert run(2) == pytest.approx(2 * 64 * 64 * float(jax.numpy.tanh(64.0)))  # a code change...
    assert len(_entries(folder) - first) >= 1  # ...is a different program: it never loads the old one


def test_turning_the_cache_on_does_not_import_jax(tmp_path):
    """Before JAX is imported, only its environment variables are set (a command that stops on bad
    input never pays JAX's import, nor its second OS thread); JAX imported afterwards reads them."""
    code = ("import os, sys\nfrom tbjax.run.compile_cache import use_compilation_cache\n"
            "chosen = use_compilation_cache()\n"
            "print('jax' in sys.modules, len(os.listdir('/proc/self/task')), chosen == os.environ['JAX_COMPILATION_CACHE_DIR'])\n"
            "import jax\nprint(jax.config.jax_compilation_cache_dir == chosen)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "1", "True", "True"]
