"""A training run's metrics: one ``metrics.jsonl`` row per chunk, and TensorBoard.

Each chunk's per-update arrays become one row (:func:`reduce_chunk_metrics`: means, sums for
counts, the last value for state). The row is appended (fsync'd) BEFORE the chunk's checkpoint is
saved, so a crash between the two leaves a line that ``--resume`` trims, never a checkpoint
without its line: a resumed run's first write rewrites the file atomically with only the lines up
to the restored checkpoint (:meth:`MetricsLog.resume_at`). TensorBoard is flushed with every row,
so a full disk surfaces at that row as one error, not later in a writer thread.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np

from tbjax.atomic import append_line, write_atomic
from tbjax.evaluation.metrics import json_safe
from tbjax.run.rundir import read_metrics_lines, run_write

SUM_KEYS = ("episode/count",)
LAST_KEYS = ("nan_guard_count", "lr", "popart/mu", "popart/sigma", "popart/holdout_ev", "ev/ema")


def reduce_chunk_metrics(metrics: dict) -> dict[str, float]:
    """Per-update arrays of one chunk → one number each (mean; sums for counts; last for state)."""
    out = {}
    for key, value in metrics.items():
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
        if key in SUM_KEYS:
            out[key] = float(arr.sum())
        elif key in LAST_KEYS:
            out[key] = float(arr[-1])
        else:
            finite = arr[np.isfinite(arr)]
            out[key] = float(finite.mean()) if finite.size else float("nan")
    return out


class MetricsLog:
    """metrics.jsonl and the TensorBoard writer of one run directory (nothing when ``write`` is False)."""

    def __init__(self, run_dir: Path, write: bool, tensorboard: bool, batch_size: int):
        self.path, self.tb_dir = Path(run_dir) / "metrics.jsonl", Path(run_dir) / "tb"
        self.write, self.tensorboard, self.batch_size = write, tensorboard, batch_size
        self.tb = None
        self._kept: list[str] = []  # lines the first write keeps (a resumed run's, up to its checkpoint)
        self._synced = False  # the file on disk holds exactly what this invocation wrote after _kept

    def resume_at(self, update: int | None) -> None:
        """Training continues after ``update`` (None: from scratch): the file on disk may still hold
        lines past it, so the first row rewrites it with the lines up to ``update``."""
        self._kept = [] if update is None else read_metrics_lines(self.path, update)
        self._synced = False

    def open(self, resumed_at: int) -> None:
        """Start the TensorBoard writer; on resume, drop events logged after the checkpoint (their
        chunks are trained again)."""
        if not (self.write and self.tensorboard):
            return
        from tensorboardX import SummaryWriter

        purge = resumed_at * self.batch_size + 1 if resumed_at else None
        with run_write(self.tb_dir):
            self.tb = SummaryWriter(str(self.tb_dir), purge_step=purge)

    def append(self, row: dict) -> None:
        """Append the chunk's row to metrics.jsonl (the first time: the trimmed file rewritten
        atomically), TensorBoard flushed."""
        if not self.write:
            return
        line = json.dumps(json_safe(row), sort_keys=True)
        with run_write(self.path):
            if self._synced:
                append_line(self.path, line)
            else:
                write_atomic(self.path, "".join(kept + "\n" for kept in self._kept + [line]))
                self._synced, self._kept = True, []
        if self.tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and math.isfinite(value) and key not in ("update", "env_steps"):
                    self.tb.add_scalar(key, value, row["env_steps"])
            with run_write(self.tb_dir):
                self.tb.flush()

    def close(self) -> None:
        tb, self.tb = self.tb, None
        if tb is not None:
            with contextlib.suppress(OSError):
                tb.close()
