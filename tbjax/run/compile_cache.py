"""JAX's persistent compilation cache for every command: a second run loads its programs from disk.

Compiling the fused rollout + update program is a large share of a short run (about 9 s of the
default run on a 2-core CPU; see benchmarks/second_run.py). JAX can keep each compiled executable
on disk and load it on the next call of the same program, in this or another process.

Why a code change never loads a stale program: JAX keys each cache entry by a hash of the
program itself (the lowered StableHLO module, so every traced shape, dtype, constant and op), the
compile options, the XLA flags, the backend and device kind, and the jax/jaxlib versions (JAX
documentation, "Persistent compilation cache"). A change to traced code changes the module and so
the key; a change to host-only code changes no program. Nothing tbjax computes enters the key,
so nothing can be forgotten in it.

Where the cache lives, in order:

1. ``JAX_COMPILATION_CACHE_DIR`` when set (JAX's own variable; e.g. a folder shared by machines);
2. ``TBJAX_COMPILATION_CACHE=off`` turns it off;
3. the command's own default: ``<run-dir>/jax_cache`` for HPO (workers of one study share it),
   else ``$XDG_CACHE_HOME/tbjax/jax`` (``~/.cache/tbjax/jax``).

A cache that cannot be written (read-only home, full disk) only costs the speed: JAX warns and
compiles as before.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

OFF_VALUES = ("0", "off", "false", "no")
# Programs that compile faster than this are not worth a disk entry (JAX's default is 1 s, which
# skips the evaluation walks; each is 0.3-0.8 s on a 2-core CPU and runs once per split).
MIN_COMPILE_SECONDS = 0.2
_ours: str | None = None  # the value this module put into JAX_COMPILATION_CACHE_DIR (not the user's)


def default_cache_dir() -> Path:
    """The per-user cache folder (XDG base directory convention)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tbjax" / "jax"


def use_compilation_cache(folder: str | Path | None = None) -> str | None:
    """Turn JAX's persistent cache on for this process; the folder used, or None when off.

    Call before the first compilation (each CLI does, first thing after parsing its arguments).
    When JAX is not imported yet, only its environment variables are set (JAX reads them at
    import), so a command that stops on bad input before any JAX work never pays JAX's import.
    """
    global _ours
    explicit = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if explicit is not None and explicit == _ours:  # set by an earlier call of this process, not by the user
        explicit = None
    if not explicit and os.environ.get("TBJAX_COMPILATION_CACHE", "").strip().lower() in OFF_VALUES:
        if _ours is not None:
            os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
            _ours = None
        return None
    chosen = explicit or str(Path(folder).resolve() if folder is not None else default_cache_dir())
    os.environ["JAX_COMPILATION_CACHE_DIR"] = chosen
    _ours = None if explicit else chosen
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", str(MIN_COMPILE_SECONDS))
    if "jax" in sys.modules:  # already imported (a notebook, a test): its config holds the values
        import jax

        jax.config.update("jax_compilation_cache_dir", chosen)
        jax.config.update("jax_persistent_cache_min_compile_time_secs",
                          float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
    return chosen
