"""tbjax: a risk-aware trading-agent trainer written end to end in JAX."""

from tbjax.xla_flags import apply_xla_workarounds

__version__ = "0.1.0"

apply_xla_workarounds()  # before any JAX backend starts (tbjax/xla_flags.py)


def __getattr__(name):  # tbjax.load_policy, imported on first use so `import tbjax` stays free of JAX
    if name == "load_policy":
        from tbjax.api import load_policy
        return load_policy
    raise AttributeError(f"module 'tbjax' has no attribute {name!r}")
