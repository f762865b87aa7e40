"""Multi-host start-up and the "only process 0 writes artifacts" rule.

On one machine JAX needs nothing. On several hosts (a SLURM allocation, a TPU pod slice, an MPI
launch, or any launcher that exports a coordinator address) every process must call
``jax.distributed.initialize()`` before touching a device, and then all processes run the SAME
program: the trainer's mesh spans every device of every host and the env axis is sharded over
it. Each process would otherwise write the same run directory, checkpoints and reports, so file
output is guarded by :func:`is_primary` (``jax.process_index() == 0``).

Detection order (the first match wins); see the JAX guide "Multi-process environments"
(jax.readthedocs.io/en/latest/multi_process.html) for what JAX reads in each case:

1. explicit   JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID (+ optional
              JAX_LOCAL_DEVICE_IDS, comma-separated): passed to initialize() as arguments.
2. slurm      SLURM_JOB_ID with SLURM_NTASKS > 1: initialize() with no arguments (JAX reads the
              SLURM variables itself).
3. tpu        TPU_WORKER_HOSTNAMES naming more than one host, or MEGASCALE_COORDINATOR_ADDRESS
              (multi-slice): initialize() with no arguments (JAX asks the TPU metadata).
4. mpi        OMPI_COMM_WORLD_SIZE > 1 (Open MPI's mpirun): initialize() with no arguments.

A single-process setting (e.g. SLURM_NTASKS=1, one TPU host, JAX_NUM_PROCESSES=1) initialises
nothing. Set TBJAX_DISTRIBUTED=0 to skip detection altogether.

CPU processes (tests, or hosts without accelerators) need JAX's CPU collectives:
JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo. Checkpoints: every process gathers the carry
(:func:`host_copy`), process 0 saves it; the final evaluation runs on process 0 alone, from its
own copy of the best checkpoint (docs/SCALE_OUT.md has the launch lines).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Mapping

import jax

from tbjax.errors import InputError

EXPLICIT_KEYS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


@dataclass(frozen=True)
class DistributedSetup:
    """What :func:`maybe_initialize_distributed` found and did."""

    initialized: bool           # True when jax.distributed.initialize() was called by us
    source: str                 # "explicit", "slurm", "tpu", "mpi", "already" or "single"
    kwargs: dict = field(default_factory=dict)  # the arguments passed to initialize()
    reason: str = ""            # one line for logs


def _int_var(env: Mapping[str, str], key: str) -> int:
    value = env.get(key, "")
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {key}={value!r} must be an integer; "
                         f"fix it in the job script or unset it") from None


def detect_cluster(env: Mapping[str, str] | None = None) -> tuple[str, dict, str]:
    """(source, initialize kwargs, reason) from environment variables; source "single" = none.

    Pure function of ``env`` (default ``os.environ``) so the plumbing is testable without a cluster.
    """
    env = os.environ if env is None else env
    if env.get("TBJAX_DISTRIBUTED", "").strip() == "0":
        return "single", {}, "TBJAX_DISTRIBUTED=0: multi-host detection disabled"
    present = [k for k in EXPLICIT_KEYS if env.get(k)]
    if present:
        missing = [k for k in EXPLICIT_KEYS if not env.get(k)]
        if missing:
            raise InputError(f"{', '.join(present)} set but {', '.join(missing)} missing: set all of "
                             f"{', '.join(EXPLICIT_KEYS)} for a multi-host run, or none of them")
        n, pid = _int_var(env, "JAX_NUM_PROCESSES"), _int_var(env, "JAX_PROCESS_ID")
        if n < 1 or not 0 <= pid < n:
            raise InputError(f"JAX_PROCESS_ID={pid} must lie in [0, JAX_NUM_PROCESSES={n}) and "
                             "JAX_NUM_PROCESSES must be >= 1")
        if n == 1:
            return "single", {}, "JAX_NUM_PROCESSES=1: one process, nothing to initialise"
        kwargs = {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"], "num_processes": n,
                  "process_id": pid}
        if env.get("JAX_LOCAL_DEVICE_IDS"):
            try:
                kwargs["local_device_ids"] = [int(v) for v in env["JAX_LOCAL_DEVICE_IDS"].split(",")]
            except ValueError:
                raise InputError(f"JAX_LOCAL_DEVICE_IDS={env['JAX_LOCAL_DEVICE_IDS']!r} must be "
                                 "comma-separated integers, e.g. 0,1,2,3") from None
        return "explicit", kwargs, f"process {pid} of {n}, coordinator {kwargs['coordinator_address']}"
    if env.get("SLURM_JOB_ID") and env.get("SLURM_NTASKS"):
        n = _int_var(env, "SLURM_NTASKS")
        if n > 1:
            return "slurm", {}, f"SLURM job {env['SLURM_JOB_ID']} with {n} tasks"
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu", {}, f"TPU pod with {max(len(hosts), 1)} worker host(s) per slice"
    if env.get("OMPI_COMM_WORLD_SIZE") and _int_var(env, "OMPI_COMM_WORLD_SIZE") > 1:
        return "mpi", {}, f"Open MPI launch of {env['OMPI_COMM_WORLD_SIZE']} processes"
    return "single", {}, "no multi-host environment variables: single process"


def maybe_initialize_distributed(env: Mapping[str, str] | None = None,
                                 initialize: Callable[..., None] | None = None) -> DistributedSetup:
    """Call ``jax.distributed.initialize`` when a multi-host launch is detected (module docstring).

    Must run before anything touches a JAX device. Safe to call twice: a second call sees JAX
    already initialised and does nothing. ``initialize`` is injectable for tests.
    """
    source, kwargs, reason = detect_cluster(env)
    if source == "single":
        return DistributedSetup(False, source, {}, reason)
    if jax.distributed.is_initialized():
        return DistributedSetup(False, "already", {}, "jax.distributed is already initialised")
    (initialize or jax.distributed.initialize)(**kwargs)
    return DistributedSetup(True, source, dict(kwargs), reason)


def is_primary() -> bool:
    """True on the process that writes run directories, checkpoints and reports (process 0)."""
    return jax.process_index() == 0


def host_copy(carry):
    """The carry as host arrays with GLOBAL values when several processes train together, else
    ``carry`` unchanged. A collective: every process must call it at the same point (the
    checkpoint schedule is the same on all). Process 0 then saves what it holds alone, so orbax
    needs neither other processes nor a shared file system (:mod:`tbjax.run.checkpoint`)."""
    if jax.process_count() == 1:
        return carry
    from jax.experimental import multihost_utils

    from tbjax.run.checkpoint.carry import storable

    return multihost_utils.process_allgather(storable(carry), tiled=True)


def process_summary() -> dict:
    """Process and device counts, for logs and benchmark records."""
    return {"process_index": jax.process_index(), "process_count": jax.process_count(),
            "local_devices": jax.local_device_count(), "global_devices": jax.device_count()}
