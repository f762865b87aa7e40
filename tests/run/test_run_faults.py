"""Run directory lifecycle under faults: every bad input or fault is one message, exit 2 (130 for an
interrupt before training), no traceback, no half-written file, and a run directory that the next
command (the printed one) can use.

One module-scoped uninterrupted run is the reference; the other runs are copies of it or tiny runs
with the same shapes, so the compiled trainer is reused. Faults are injected where the OS would
raise them (a file write, orbax's save), so the tests run the same as a user and need no root.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orbax.checkpoint as ocp
import pyarrow.feather as feather
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))  # test_train_cli, whatever the collection order
from test_train_cli import TINY, run_train  # noqa: E402
from tbjax import atomic
from tbjax.cli import evaluate as evaluate_cli
from tbjax.cli import train as train_cli

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted tiny run (2 chunks, validation after each: latest holds 2 steps, best 1)."""
    run_dir = tmp_path_factory.mktemp("faults") / "reference"
    assert run_train(run_dir) == 0
    return run_dir


def copy_run(reference: Path, dest: Path) -> Path:
    shutil.copytree(reference, dest)
    return dest


def stderr_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    return [line for line in err.splitlines() if line.strip()]


def one_error(capsys) -> str:
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def leftovers(run_dir: Path) -> list[str]:
    """Temporary files and unfinished orbax saves anywhere under ``run_dir``."""
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                  if p.name.endswith(".tmp") or "orbax-checkpoint-tmp" in p.name)


def same_results(run_dir: Path, reference: Path) -> None:
    assert (run_dir / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    for split in ("val", "test"):
        a = json.loads((run_dir / "eval" / f"{split}.json").read_text())
        b = json.loads((reference / "eval" / f"{split}.json").read_text())
        assert a["pooled"] == b["pooled"] and a["objective"] == b["objective"]


def newest_step(run_dir: Path, kind: str = "latest") -> Path:
    return max((p for p in (run_dir / "checkpoints" / kind).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def truncate_a_data_file(step_dir: Path) -> None:
    data = max((f for f in (step_dir / "carry").rglob("*") if f.is_file() and f.parent.name == "d"),
               key=lambda f: f.stat().st_size)
    data.write_bytes(data.read_bytes()[:10])


# ---------------------------------------------------------------------- 1. resume


def test_printed_continue_command_continues_the_run_verbatim(reference, tmp_path, capsys):
    run_dir = tmp_path / "interrupted"
    assert run_train(run_dir, "--max-chunks", "1") == 0
    (line,) = [ln for ln in stderr_lines(capsys) if "continue with:" in ln]
    command = shlex.split(line.split("continue with:", 1)[1])
    assert command[:3] == ["python", "-m", "tbjax.train"] and "--resume" in command
    assert "--config" not in command and "--set" not in command  # the run's config.yaml holds it all
    config_before = (run_dir / "config.yaml").read_bytes()
    assert train_cli.main(command[3:]) == 0
    assert (run_dir / "config.yaml").read_bytes() == config_before
    same_results(run_dir, reference)
    assert json.loads((run_dir / "run_info.json").read_text())["cwd"] == os.getcwd()


def test_resume_refuses_conflicting_settings_and_changes_nothing(reference, tmp_path, capsys):
    run_dir = copy_run(reference, tmp_path / "run")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert train_cli.main(["--run-dir", str(run_dir), "--resume", "--set", "ppo.n_envs=16"]) == 2
    err = one_error(capsys)
    assert "ppo.n_envs (run 8, given 16)" in err and "train.total_env_steps" in err and "--resume" in err
    assert train_cli.main(["--run-dir", str(run_dir), "--resume", "--config", "configs/base.yaml"]) == 2
    assert "drop --config" in one_error(capsys)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    # A fresh start into it is refused too, and says how to continue instead.
    assert run_train(run_dir) == 2
    assert f"--run-dir {run_dir} --resume" in one_error(capsys)


def test_resume_accepts_a_resumable_key_and_records_it(reference, tmp_path, capsys):
    run_dir = copy_run(reference, tmp_path / "run")
    assert train_cli.main(["--run-dir", str(run_dir), "--resume", "--quiet", "--set", "output.tensorboard=false"]) == 0
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["output"]["tensorboard"] is False
    resumes = json.loads((run_dir / "run_info.json").read_text())["resumes"]
    assert resumes == [{"at_update": 4, "changed": {"output.tensorboard": [True, False]}}]
    same_results(run_dir, reference)  # the run was complete: only the final evaluation ran again


# ---------------------------------------------------------------------- 2. damaged checkpoints


def test_damaged_newest_checkpoint_falls_back_with_one_warning(reference, tmp_path, capsys):
    run_dir = copy_run(reference, tmp_path / "run")
    truncate_a_data_file(newest_step(run_dir))
    assert evaluate_cli.main(["--run-dir", str(run_dir), "--checkpoint", "latest", "--split", "val", "--no-write"]) == 0
    (warning,) = stderr_lines(capsys)
    assert warning.startswith("warning: skipped unreadable checkpoint") and "is truncated" in warning
    assert train_cli.main(["--run-dir", str(run_dir), "--resume", "--quiet"]) == 0
    (warning,) = stderr_lines(capsys)
    assert warning.startswith("warning: skipped unreadable checkpoint") and "(update 2)" in warning
    same_results(run_dir, reference)  # retrained update 2 → 4 from the older step


def test_no_usable_checkpoint_is_one_message_without_traceback(reference, tmp_path, capsys):
    run_dir = copy_run(reference, tmp_path / "run")
    steps = sorted((run_dir / "checkpoints" / "latest").iterdir())
    truncate_a_data_file(steps[0])  # caught by the file list
    (steps[1] / "tbjax_files.json").unlink()  # an older tbjax's step: orbax's own read fails
    truncate_a_data_file(steps[1])
    proc = subprocess.run([sys.executable, "-m", "tbjax.train", "--run-dir", str(run_dir), "--resume"],
                          capture_output=True, text=True, env=ENV, timeout=300, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "is corrupt" in lines[0] and "python -m tbjax.evaluate" in lines[0]  # best still evaluates
    # A fresh start would delete the usable best checkpoint: refused, saying exactly what is there.
    assert run_train(run_dir) == 2
    err = one_error(capsys)
    best_update = json.loads((next((run_dir / "checkpoints" / "best").iterdir()) / "meta" / "metadata").read_text())["update"]
    assert f"usable best checkpoint (update {best_update}) but no usable latest one" in err and "latest/1:" in err


# ---------------------------------------------------------------------- 3. disk full


def _disk_full() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_during_dataset_export_leaves_nothing(tmp_path, capsys, monkeypatch):
    real = feather.write_feather
    calls = []

    def write_feather(table, dest, *args, **kwargs):
        calls.append(dest)
        if len(calls) == 2:
            Path(dest).write_bytes(b"ARROW1 half a table")
            raise _disk_full()
        return real(table, dest, *args, **kwargs)

    monkeypatch.setattr(feather, "write_feather", write_feather)
    run_dir = tmp_path / "run"
    assert run_train(run_dir) == 2
    err = one_error(capsys)
    assert "the disk is full" in err and str(run_dir / "dataset") in err and ".tmp" not in err
    assert not run_dir.exists()  # nothing written: the next command is a plain fresh start
    assert run_train(run_dir, "--resume") == 2
    assert "start without --resume" in one_error(capsys)


def test_atomic_folder_replaces_whole_or_keeps_the_old_one(tmp_path):
    """An HPO trial's folder and the dataset export are several files: a failure (or kill) while
    writing leaves the previous folder untouched and no visible partial one."""
    target = tmp_path / "trials" / "3"
    target.mkdir(parents=True)
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_folder(target) as staging:
            (staging / "config.yaml").write_text("half")
            raise RuntimeError("killed while saving")
    assert sorted(p.name for p in target.parent.iterdir()) == ["3"] and (target / "old.txt").read_text() == "old"
    with atomic.atomic_folder(target) as staging:
        (staging / "config.yaml").write_text("new")
        assert staging.parent == target.parent and staging.name.startswith(".3.")
    assert sorted(p.name for p in target.iterdir()) == ["config.yaml"] and (target / "config.yaml").read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["3"]


def test_disk_full_writing_metrics_then_continue_as_told(reference, tmp_path, capsys, monkeypatch):
    writes = []

    class FullDisk:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, payload):
            self.fh.write(payload[: len(payload) // 2])
            raise _disk_full()

    def fake_open(path, mode="r", *args, **kwargs):
        fh = open(path, mode, *args, **kwargs)
        if Path(path).name.startswith(".metrics.jsonl.") or Path(path).name == "metrics.jsonl":
            writes.append(path)
            if len(writes) == 2:  # the second chunk's line; the first chunk saved a checkpoint
                return FullDisk(fh)
        return fh

    monkeypatch.setattr(atomic, "open", fake_open, raising=False)
    run_dir = tmp_path / "run"
    assert run_train(run_dir) == 2
    err = one_error(capsys)
    assert "metrics.jsonl' failed: the disk is full" in err and "newest complete checkpoint is update 2" in err
    assert leftovers(run_dir) == []
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
    monkeypatch.undo()
    command = shlex.split(err.split("continue with:", 1)[1])
    assert train_cli.main(command[3:]) == 0
    same_results(run_dir, reference)


def _late_orbax_cleanup(monkeypatch) -> None:
    """A loaded machine, made certain: orbax's background clean-up of tmp folders (a thread that
    ``CheckpointManager(cleanup_tmp_directories=True)`` starts) lists the folder only once the save
    has begun writing its tmp folder."""
    import asyncio

    from orbax.checkpoint._src.path import temporary_paths

    real_listing = temporary_paths.all_temporary_paths

    async def late_listing(directory, *args, **kwargs):
        for _ in range(40):
            if any("orbax-checkpoint-tmp" in p.name for p in Path(str(directory)).iterdir()):
                break
            await asyncio.sleep(0.05)
        return await real_listing(directory, *args, **kwargs)

    monkeypatch.setattr(temporary_paths, "all_temporary_paths", late_listing)


def test_disk_full_saving_the_first_checkpoint_then_start_again(reference, tmp_path, capsys, monkeypatch):
    """Issue 27, item 12: this failed once under load with a message other than disk-full. The cause,
    reproduced here: orbax's tmp-folder clean-up thread, started by the checkpoint writer's constructor
    and awaited only by orbax's own save, deleted the save's tmp folder while it was written, and the
    user read "No such file or directory". tbjax now removes old tmp folders itself before the writer
    exists (tbjax.run.checkpoint); the clean-up is scheduled late here, as a loaded machine may."""
    real = ocp.CheckpointManager.save
    calls = []

    def save(self, step, *args, **kwargs):
        calls.append(step)
        if len(calls) == 1:  # what orbax leaves and raises when the disk fills mid-save
            partial = Path(self.directory) / f"{step}.orbax-checkpoint-tmp" / "carry.orbax-checkpoint-tmp"
            partial.mkdir(parents=True)
            time.sleep(0.5)  # writing takes a while on a loaded machine
            (partial / "manifest.ocdbt").write_bytes(b"\0" * 7)
            raise ValueError(f"RESOURCE_EXHAUSTED: Error writing in OCDBT database at local file \"{partial}\": "
                             "No space left on device [os_error_code='28']")
        return real(self, step, *args, **kwargs)

    _late_orbax_cleanup(monkeypatch)
    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    run_dir = tmp_path / "run"
    assert run_train(run_dir) == 2
    err = one_error(capsys)
    assert "saving checkpoint" in err and "the disk is full" in err and "run the same command again" in err, err
    assert leftovers(run_dir) == []
    monkeypatch.undo()
    assert run_train(run_dir) == 0  # a fresh start is not refused: no usable checkpoint was there
    same_results(run_dir, reference)


# ---------------------------------------------------------------------- 4. read-only run directory


def _block_writes(run_dir: Path, monkeypatch) -> None:
    """Make ``run_dir`` unwritable: chmod where that binds (not root), else fail the OS calls that
    create files or folders inside it with EACCES, as a read-only mount would."""
    dirs = [run_dir] + [p for p in run_dir.rglob("*") if p.is_dir()]
    for d in dirs:
        d.chmod(0o555)
    try:
        (run_dir / ".probe").write_text("x")
    except PermissionError:
        return
    (run_dir / ".probe").unlink()
    for d in dirs:
        d.chmod(0o755)
    import tempfile

    real_mkstemp, real_mkdir = tempfile.mkstemp, os.mkdir
    inside = str(run_dir)

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and str(dir).startswith(inside):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    def mkdir(path, *args, **kwargs):
        if str(path).startswith(inside):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "mkdir", mkdir)


def test_evaluate_on_a_read_only_run_prints_metrics_and_says_they_were_not_saved(reference, tmp_path, capsys,
                                                                                 monkeypatch):
    run_dir = copy_run(reference, tmp_path / "run")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    _block_writes(run_dir, monkeypatch)
    try:
        assert evaluate_cli.main(["--run-dir", str(run_dir), "--split", "val"]) == 2
        out, err = capsys.readouterr()
        assert "val: sharpe" in out and "Traceback" not in err
        (line,) = err.strip().splitlines()
        assert "permission denied" in line and "not saved" in line and "--no-write" in line
        assert evaluate_cli.main(["--run-dir", str(run_dir), "--split", "val", "--no-write"]) == 0
        out, err = capsys.readouterr()
        assert "val: sharpe" in out and err == ""
    finally:
        for d in [run_dir] + [p for p in run_dir.rglob("*") if p.is_dir()]:
            d.chmod(0o755)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


# ---------------------------------------------------------------------- 5. interrupts before training

# Runs train.main with a marker file written when the phase starts (then the phase proceeds, slowly
# for data loading, at its own pace for the XLA compile of the first chunk), so the test's SIGINT
# lands inside that phase. The slow load sleeps in short slices, as real loading returns to Python
# between C calls: JAX (imported by then) runs a second OS thread, the kernel may deliver the
# process's SIGINT to it, and CPython then runs the handler when the main thread next executes
# bytecode, which one long sleep(120) delays by 120 s (it did once, under a full parallel suite).
IN_PHASE = """
import pathlib, sys, time
import tbjax.run.experiment as experiment
from tbjax.run import session
from tbjax.cli import train
marker, phase = pathlib.Path(sys.argv[1]), sys.argv[2]
real_load, real_compile = experiment.load_processed, session.TrainingSession.compile
def load(cfg):
    if phase == "load":
        marker.write_text(phase)
        for _ in range(1200):
            time.sleep(0.1)
    return real_load(cfg)
def compile(self, carry):
    marker.write_text(phase)
    return real_compile(self, carry)
experiment.load_processed, session.TrainingSession.compile = load, compile
sys.exit(train.main(sys.argv[3:]))
"""


@pytest.mark.parametrize("phase", ["load", "compile"])
def test_sigint_before_training_exits_130_and_writes_nothing(tmp_path, phase):
    run_dir, marker = tmp_path / "run", tmp_path / "in-phase"
    argv = [sys.executable, "-c", IN_PHASE, str(marker), phase, "--config", "configs/base.yaml",
            "--run-dir", str(run_dir)]
    for s in TINY:
        argv += ["--set", s]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO)
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert err.strip() == "interrupted before training started; nothing was written"
    assert not run_dir.exists()


def test_interrupt_during_run_dir_setup_undoes_it(tmp_path, capsys, monkeypatch):
    from tbjax.run.session import TrainingSession

    real = TrainingSession._export_dataset

    def export_then_sigint(self):
        real(self)
        os.kill(os.getpid(), signal.SIGINT)  # deferred until the setup is complete, then undone

    monkeypatch.setattr(TrainingSession, "_export_dataset", export_then_sigint)
    run_dir = tmp_path / "run"
    assert run_train(run_dir) == 130
    assert stderr_lines(capsys) == ["interrupted before training started; nothing was written"]
    assert not run_dir.exists()


# ---------------------------------------------------------------------- 6. messages that mislead


def test_evaluate_from_another_folder_finds_the_runs_data(reference, tmp_path, capsys, monkeypatch):
    run_dir = copy_run(reference, tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert evaluate_cli.main(["--run-dir", str(run_dir), "--split", "val", "--no-write"]) == 0
    assert "val: sharpe" in capsys.readouterr().out
    # Neither the training folder nor this one holds the data: both are named, and the fix.
    info = json.loads((run_dir / "run_info.json").read_text())
    (run_dir / "run_info.json").write_text(json.dumps({**info, "cwd": str(tmp_path / "gone")}))
    assert evaluate_cli.main(["--run-dir", str(run_dir), "--no-write"]) == 2
    err = one_error(capsys)
    assert "data.processed_dir 'data/sample/processed'" in err and str(tmp_path / "gone") in err
    assert str(elsewhere) in err and "config.yaml" in err and "prepare" not in err


def test_evaluate_refuses_data_other_than_the_runs(reference, tmp_path, capsys):
    run_dir = copy_run(reference, tmp_path / "run")
    processed = tmp_path / "processed"
    shutil.copytree(REPO / "data" / "sample" / "processed", processed)
    table = feather.read_table(processed / "IBM.feather")
    feather.write_feather(table.slice(0, table.num_rows - 1), processed / "IBM.feather")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["data"]["processed_dir"] = str(processed)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert evaluate_cli.main(["--run-dir", str(run_dir), "--no-write"]) == 2
    err = one_error(capsys)
    assert "is not the data run" in err and "IBM (changed)" in err


def test_no_best_checkpoint_advice_fits_evaluate(reference, tmp_path, capsys):
    run_dir = copy_run(reference, tmp_path / "run")
    shutil.rmtree(run_dir / "checkpoints" / "best")
    assert evaluate_cli.main(["--run-dir", str(run_dir), "--no-write"]) == 2
    err = one_error(capsys)
    assert "no finished 'best' checkpoint" in err and "--checkpoint latest" in err and "without --resume" not in err


def test_train_and_check_apply_one_warmup_rule(tmp_path, capsys):
    from tbjax.cli import check
    from tbjax.run.warmup import warmup_rule

    processed = tmp_path / "processed"
    shutil.copytree(REPO / "data" / "sample" / "processed", processed)
    manifest = json.loads((processed / "manifest.json").read_text())
    (processed / "manifest.json").write_text(json.dumps({**manifest, "warmup_bars": 40}))
    _, detail = warmup_rule(32, 40)
    assert run_train(tmp_path / "run", "--set", f"data.processed_dir={processed}") == 2
    assert one_error(capsys) == f"error: {detail}"
    assert check.main(["--set", f"data.processed_dir={processed}"]) == 2
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if " warm-up " in ln]
    assert line.startswith("✗") and detail in line
    # A window longer than the prepared warm-up is fine for both (the env fills it from processed rows).
    assert warmup_rule(64, 52)[0] and warmup_rule(64, None)[0]
    assert re.search(r"re-run python -m tbjax\.prepare", detail)
