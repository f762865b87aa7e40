"""``kill -9`` of ``python -m tbjax.train`` at several points of a checkpoint save, then ``--resume``:
the run restores the last complete checkpoint and ends with the same metrics.jsonl and final
evaluation as the uninterrupted run (same seed).

The killed runs are real ``tbjax.train`` processes started through ``tbjax.cli.train.main``; a few
lines before it arm one SIGKILL of the process itself at the chosen point of the second
"latest" save (the first one stays complete):

* ``orbax-item``: inside orbax's save, the carry's arrays written, its meta item not;
* ``orbax-commit``: inside orbax's save, both items written, the step not yet renamed into place;
* ``file-list``: orbax's step committed, tbjax's own file list (tbjax.run.checkpoint.files.FILE_LIST) not written;
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))  # test_train_cli, whatever the collection order
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_run_faults import leftovers, same_results  # noqa: E402
from test_train_cli import TINY, run_train  # noqa: E402

from tbjax.cli import train as train_cli

REPO = Path(__file__).resolve().parents[2]

ORBAX = """
    from orbax.checkpoint._src.path import atomicity
    real = atomicity.AtomicRenameTemporaryPath.finalize
    async def finalize(self):  # orbax renames each item's folder, then the step's, into place
        final = str(self._final_path)
        if final.endswith({tail!r}):
            die()
        return await real(self)
    atomicity.AtomicRenameTemporaryPath.finalize = finalize
"""
ARM = {
    "orbax-item": ORBAX.format(tail="latest/2.orbax-checkpoint-tmp/carry"),
    "orbax-commit": ORBAX.format(tail="latest/2"),
    "file-list": """
        from tbjax.run.checkpoint import save as checkpoint
        real = checkpoint.write_atomic
        def write_atomic(path, *a, **k):
            if path.name == checkpoint.FILE_LIST and str(path.parent).endswith("latest/2"):
                die()
            return real(path, *a, **k)
        checkpoint.write_atomic = write_atomic
    """,
}

HARNESS = """
import os, signal, sys
def die():
    os.kill(os.getpid(), signal.SIGKILL)
{arm}
from tbjax.cli import train
sys.exit(train.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("kill") / "reference"
    assert run_train(run_dir) == 0
    return run_dir


@pytest.mark.parametrize("point", list(ARM))
def test_kill_during_a_save_then_resume_equals_the_uninterrupted_run(reference, tmp_path, point):
    run_dir = tmp_path / "killed"
    argv = ["--config", "configs/base.yaml", "--run-dir", str(run_dir), "--quiet"]
    for s in TINY:
        argv += ["--set", s]
    code = HARNESS.format(arm=textwrap.dedent(ARM[point]))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path.parent / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints" / "latest").iterdir() if p.name.isdigit())
    assert steps[0] == 1  # the first save is complete; the second was cut at ``point``

    assert train_cli.main(["--resume", "--run-dir", str(run_dir), "--quiet"]) == 0
    same_results(run_dir, reference)
    assert leftovers(run_dir) == []
