"""Shared setup of the benchmarks, one module per idea; ``from benchmarks import common`` reaches all:

* ``benchmarks/planted.py``: the planted-signal market both learners train on, its env and its
  oracle (``planted_market``, ``env_params``, ``oracle_sharpe``, ``train_fit_oracle``, ``val_score``);
* ``benchmarks/learners.py``: the settings both learners share (``PPO_SETTINGS``, ``HIDDEN``,
  ``LONG_SHORT``) and the tbjax side's builders (``tbjax_trainer``, ``tbjax_hparams``,
  ``seed_population``, ``add_workload_args``);
* ``benchmarks/record.py``: what a result records and how it is written (``machine_info``,
  ``versions``, ``code_commit``, ``write_json``, ``finish`` — the end of every ``main()`` —,
  ``print_table``, ``track_compiles`` / ``compile_seconds``).
"""

from __future__ import annotations

from benchmarks.learners import (  # noqa: F401
    DEFAULT_ENV,
    DEFAULT_PPO,
    DEFAULT_TRAIN,
    HIDDEN,
    LONG_SHORT,
    PPO_SETTINGS,
    add_workload_args,
    seed_population,
    tbjax_hparams,
    tbjax_trainer,
)
from benchmarks.planted import (  # noqa: F401
    HOUR_MS,
    HOURLY_BARS_PER_YEAR,
    SIGNAL_COLUMN,
    PlantedMarket,
    best_third,
    decision_bars,
    env_params,
    held,
    oracle_inputs,
    oracle_sharpe,
    per_bar_sharpe,
    planted_market,
    train_fit_oracle,
    val_score,
)
from benchmarks.record import (  # noqa: F401
    COMPILE_EVENTS,
    REPO_ROOT,
    RESULTS_DIR,
    code_commit,
    compile_seconds,
    cpu_model,
    device_string,
    finish,
    machine_info,
    print_table,
    repo_relative,
    track_compiles,
    versions,
    write_json,
)
