"""The heartbeat settings of HPO workers, importable without Optuna (the CLI's flag defaults)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LivenessSettings:
    """Optuna's heartbeat settings: ``python -m tbjax.hpo --heartbeat-interval/--grace-period/--max-retries``.

    Whole seconds (Optuna's RDBStorage takes ints). The grace period must outlast any pause that
    stops even the beat thread (a suspended or swapped-out machine): 10 min by default.
    """

    interval: int = 30
    grace: int = 600
    max_retry: int = 2  # a trial that keeps killing its worker (e.g. the OOM killer) is retried this often
