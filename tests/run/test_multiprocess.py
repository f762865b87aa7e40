"""Two JAX processes on this machine train as two hosts would: ``jax.distributed.initialize`` from
the environment variables of tbjax.run.distributed (coordinator on a free local port, JAX's gloo
CPU collectives), 2 fake CPU devices each, the env axis sharded over all 4 global devices, started
with the plain ``python -m tbjax.train`` command.

Checked: both processes report the same metrics; only process 0 writes its run directory (each
process is given its own, as on hosts without a shared disk); the result equals one process with 4
fake devices (every metrics.jsonl number and the final evaluation, to float tolerance).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tiny_run_config import tiny_body, tiny_market

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprocess")
    body = tiny_body(tiny_market(root), total_env_steps=512)  # 4 updates, 2 evaluations
    (root / "tiny.yaml").write_text(yaml.safe_dump(body))
    return root / "tiny.yaml"


def _train(config: Path, run_dir: Path, devices: int, **env) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **env}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # every process compiles for itself
    env["TBJAX_COMPILATION_CACHE"] = "off"
    return subprocess.Popen([sys.executable, "-m", "tbjax.train", "--config", str(config), "--run-dir", str(run_dir),
                             "--quiet"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(procs) -> list[str]:
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=420)
            assert p.returncode == 0, err[-3000:]
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return outs


def _numbers(run_dir: Path) -> tuple[list[dict], dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = {s: json.loads((run_dir / "eval" / f"{s}.json").read_text()) for s in ("val", "test")}
    return rows, evals


def test_two_processes_train_like_one_with_as_many_devices(config, tmp_path):
    cluster = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{_free_port()}", "JAX_NUM_PROCESSES": "2",
               "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
    pair = [_train(config, tmp_path / f"run{k}", 2, JAX_PROCESS_ID=str(k), **cluster) for k in (0, 1)]
    single = _train(config, tmp_path / "single", 4)
    out0, out1, _ = _finish(pair + [single])

    reported = [re.findall(r"update \d+/\d+ +val sortino \S+ +objective \S+", out) for out in (out0, out1)]
    assert len(reported[0]) == 2 and reported[0] == reported[1]  # both processes see the same numbers
    assert "[process 1] update" in out1
    assert not (tmp_path / "run1").exists()  # process 1 writes nothing
    assert (tmp_path / "run0" / "report.md").is_file() and (tmp_path / "run0" / "checkpoints" / "best").is_dir()

    rows, evals = _numbers(tmp_path / "run0")
    rows1, evals1 = _numbers(tmp_path / "single")
    assert [r["update"] for r in rows] == [r["update"] for r in rows1] == [2, 4]
    for a, b in zip(rows, rows1):
        assert a.keys() == b.keys()
        for key, value in a.items():
            if isinstance(value, float):
                assert value == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    for split in ("val", "test"):
        a, b = evals[split]["pooled"], evals1[split]["pooled"]
        assert a.keys() == b.keys()
        for key in a:  # an undefined metric (a flat policy's Sortino) is null on both sides
            assert (a[key] is None and b[key] is None) or a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
        assert evals[split]["objective"] == pytest.approx(evals1[split]["objective"], rel=1e-4, abs=1e-6)
