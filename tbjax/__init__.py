"""tbjax: a risk-aware trading-agent trainer written end to end in JAX."""

__version__ = "0.1.0"


def __getattr__(name):  # tbjax.load_policy, imported on first use so `import tbjax` stays free of JAX
    if name == "load_policy":
        from tbjax.policy import load_policy
        return load_policy
    raise AttributeError(f"module 'tbjax' has no attribute {name!r}")
