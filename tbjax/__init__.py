"""tbjax: a risk-aware trading-agent trainer written end to end in JAX."""

__version__ = "0.1.0"
