"""XLA settings tbjax needs, applied before JAX creates its CPU backend.

Layer 0 (docs/DESIGN.md, "Layers"): the package root applies it on ``import tbjax``, which every
``import tbjax.<anything>`` runs first, so the root may import nothing above layer 0. It imports
only ``os`` and never JAX: XLA reads ``XLA_FLAGS`` when the first backend starts, later than this.

XLA:CPU's concurrency-optimised scheduler (jaxlib 0.10.2) deadlocks while executing the
trial-vmapped ``train_chunk`` with two 64-wide hidden layers: every thread waits and the
process sleeps forever (found by the HPO throughput benchmark; the unbatched program and
smaller networks run fine). Turning that scheduler off fixes it at no measurable cost. The flag
only concerns the CPU backend, so GPU/TPU runs are unaffected. A user who sets the flag
explicitly in ``XLA_FLAGS`` keeps their value.
"""

from __future__ import annotations

import os

CPU_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def apply_xla_workarounds() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {CPU_SCHEDULER_FLAG}".strip()
