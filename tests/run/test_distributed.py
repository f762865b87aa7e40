"""tbjax.distributed: cluster detection and the arguments handed to jax.distributed.initialize.

No cluster here: the environment is a plain dict and initialize is a recorder, so each test checks
exactly which call a launch would make (or that none is made).
"""

import jax
import pytest

from tbjax.run import distributed
from tbjax.errors import InputError


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    return Recorder()


def test_single_process_initialises_nothing(fresh):
    setup = distributed.maybe_initialize_distributed(env={"HOME": "/root"}, initialize=fresh)
    assert (setup.initialized, setup.source, fresh.calls) == (False, "single", [])
    assert distributed.is_primary() is True
    summary = distributed.process_summary()
    assert summary["process_index"] == 0 and summary["process_count"] == 1
    assert summary["global_devices"] == jax.device_count()


def test_explicit_variables_are_passed_through(fresh):
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2",
           "JAX_LOCAL_DEVICE_IDS": "0,1"}
    setup = distributed.maybe_initialize_distributed(env=env, initialize=fresh)
    expected = {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2,
                "local_device_ids": [0, 1]}
    assert fresh.calls == [expected]
    assert setup.initialized and setup.source == "explicit" and setup.kwargs == expected


def test_explicit_single_process_is_a_no_op(fresh):
    env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}
    assert not distributed.maybe_initialize_distributed(env=env, initialize=fresh).initialized
    assert fresh.calls == []


@pytest.mark.parametrize("env, message", [
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"}, "JAX_PROCESS_ID missing"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"}, "must be an integer"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, "must lie in [0"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0",
      "JAX_LOCAL_DEVICE_IDS": "0;1"}, "comma-separated"),
])
def test_bad_explicit_variables_name_the_variable(fresh, env, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[")):
        distributed.maybe_initialize_distributed(env=env, initialize=fresh)
    assert fresh.calls == []


@pytest.mark.parametrize("env, source, calls", [
    ({"SLURM_JOB_ID": "77", "SLURM_NTASKS": "8"}, "slurm", 1),
    ({"SLURM_JOB_ID": "77", "SLURM_NTASKS": "1"}, "single", 0),
    ({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}, "tpu", 1),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, "single", 0),
    ({"MEGASCALE_COORDINATOR_ADDRESS": "m:8080"}, "tpu", 1),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, "mpi", 1),
    ({"SLURM_JOB_ID": "77", "SLURM_NTASKS": "8", "TBJAX_DISTRIBUTED": "0"}, "single", 0),
])
def test_auto_detected_clusters_call_initialize_without_arguments(fresh, env, source, calls):
    setup = distributed.maybe_initialize_distributed(env=env, initialize=fresh)
    assert setup.source == source
    assert fresh.calls == [{}] * calls  # JAX reads the cluster's own variables itself


def test_explicit_variables_win_over_slurm(fresh):
    env = {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "8", "JAX_COORDINATOR_ADDRESS": "c:9",
           "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    distributed.maybe_initialize_distributed(env=env, initialize=fresh)
    assert fresh.calls == [{"coordinator_address": "c:9", "num_processes": 2, "process_id": 1}]


def test_second_call_after_initialisation_does_nothing(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    setup = distributed.maybe_initialize_distributed(env={"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4"},
                                                     initialize=rec)
    assert (setup.initialized, setup.source, rec.calls) == (False, "already", [])


def test_only_process_zero_is_primary(monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 3)
    assert distributed.is_primary() is False
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    assert distributed.is_primary() is True
