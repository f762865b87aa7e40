"""The one chunk loop (tbjax.run.chunks): schedule, NaN guard per member, alive mask, early stops.

The loop runs here on fake chunks (NumPy metrics, no compile), one member unstacked (a training
run) and B members stacked (an HPO group), so the tests are fast and pin the loop itself; the
real callers are checked end to end in tests/hpo/test_hpo_trust.py (train and HPO evaluate at the
same updates with the same values) and below (a resumed run evaluates where the uninterrupted one
did).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tbjax.learner.carry import NonFiniteUpdateError
from tbjax.run.chunks import ChunkHooks, ChunkSchedule, run_chunks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))
from test_train_cli import run_train  # noqa: E402

UPC = 2


def test_schedule_rounds_eval_every_up_to_whole_chunks_and_evaluates_the_last():
    s = ChunkSchedule(updates_per_chunk=2, total_updates=12, eval_every=5)  # 5 updates → every 3rd chunk
    assert s.eval_chunks == 3
    assert s.chunk_ends() == [2, 4, 6, 8, 10, 12]
    assert s.eval_updates() == [6, 12]
    assert ChunkSchedule(2, 14, 5).eval_updates() == [6, 12, 14]  # the last chunk always evaluates
    assert ChunkSchedule(4, 12, 1).eval_updates() == [4, 8, 12]  # eval_every below a chunk: every chunk
    # counted from update 0: a run resumed after any chunk evaluates where the uninterrupted one does
    for start in s.chunk_ends()[:-1]:
        assert s.eval_updates(start) == [u for u in s.eval_updates() if u > start]
    assert s.eval_updates(12) == [] and s.eval_updates(14) == []  # nothing left (or a shortened run)


def _metrics(update: int, lr: float, bad_at: int | None = None) -> dict:
    """One member's chunk metrics, one entry per update; ``bad_at``: an update the guard skipped."""
    skipped = np.array([1.0 if bad_at == update + k else 0.0 for k in range(UPC)])
    loss = np.where(skipped > 0, np.nan, 0.5)
    return {"lr": np.full(UPC, lr), "nan_guard_skipped": skipped, "nan_guard_count": np.cumsum(skipped),
            "loss/policy": loss, "loss/value": loss, "loss/entropy": loss, "grad_norm": loss,
            "approx_kl": loss, "reward_mean": loss}


class FakeProgram:
    """Stands in for a compiled chunk: a member's carry is its update count (and it moves only
    while alive); member ``i``'s learning rate is ``lrs[i]``; ``bad`` = {member: update} diverges."""

    def __init__(self, lrs: list[float], stacked: bool, bad: dict | None = None):
        self.lrs, self.stacked, self.bad, self.masks = lrs, stacked, bad or {}, []

    def init(self):
        return np.zeros(len(self.lrs)) if self.stacked else 0.0

    def advance(self, carry, alive):
        self.masks.append(list(alive))
        if not self.stacked:
            return carry + UPC, _metrics(int(carry), self.lrs[0], self.bad.get(0))
        per = [_metrics(int(c), lr, self.bad.get(i)) for i, (c, lr) in enumerate(zip(carry, self.lrs))]
        stacked = {k: np.stack([m[k] for m in per]) for k in per[0]}
        return np.where(alive, carry + UPC, carry), stacked


class Recorder(ChunkHooks):
    """The hooks of an HPO group, reduced to a log: a diverged member dies; ``prune`` = {member: update}."""

    def __init__(self, size: int, prune: dict | None = None, stop_after: int | None = None):
        self.live, self.prune, self.stop_after, self.log = [True] * size, prune or {}, stop_after, []

    def alive(self):
        return self.live

    def stop(self):
        return self.stop_after is not None and sum(e[0] == "done" for e in self.log) >= self.stop_after

    def record(self, i, metrics, chunk):
        self.log.append(("record", i, chunk.update, float(metrics["lr"][-1])))

    def diverged(self, i, error, chunk):
        self.log.append(("diverged", i, error.update))
        self.live[i] = False

    def evaluate(self, i, carry, chunk):
        self.log.append(("evaluate", i, chunk.update, float(carry)))
        if self.prune.get(i) == chunk.update:
            self.live[i] = False

    def chunk_done(self, carry, chunk):
        self.log.append(("done", chunk.update, chunk.last))


def _member_log(log: list, i: int) -> list:
    return [e for e in log if e[0] != "done" and e[1] == i]


def test_one_member_and_a_batch_go_through_the_same_steps():
    schedule = ChunkSchedule(UPC, 8, 3)  # evaluations at 4 and 8
    single = FakeProgram([1e-3], stacked=False)
    hooks = Recorder(1)
    carry, update = run_chunks(single.advance, single.init(), schedule, hooks)
    assert (carry, update) == (8, 8)
    assert [e for e in hooks.log if e[0] == "evaluate"] == [("evaluate", 0, 4, 4.0), ("evaluate", 0, 8, 8.0)]
    assert [e for e in hooks.log if e[0] == "done"] == [("done", u, u == 8) for u in (2, 4, 6, 8)]

    batch = FakeProgram([3e-4, 1e-3, 5e-4], stacked=True)
    grouped = Recorder(3)
    run_chunks(batch.advance, batch.init(), schedule, grouped, n_members=3)
    # member 1 of 3 (the same learning rate) is recorded and evaluated exactly as the single run
    assert _member_log(grouped.log, 1) == [(e[0], 1, *e[2:]) for e in _member_log(hooks.log, 0)]
    assert [e for e in grouped.log if e[0] == "done"] == [e for e in hooks.log if e[0] == "done"]


def test_a_diverged_or_pruned_member_stops_and_the_rest_go_on():
    schedule = ChunkSchedule(UPC, 8, 2)  # every chunk evaluates
    program = FakeProgram([1e-3, 2e-3, 3e-3], stacked=True, bad={1: 3})  # member 1's update 3 is skipped
    hooks = Recorder(3, prune={2: 4})
    carry, update = run_chunks(program.advance, program.init(), schedule, hooks, n_members=3)
    assert update == 8 and list(carry) == [8, 4, 4]  # dead members' carries stopped after their last chunk
    assert program.masks == [[True] * 3, [True] * 3, [True, False, False], [True, False, False]]
    assert ("diverged", 1, 3) in hooks.log  # the guard names the first skipped update (chunk start + index)
    assert not [e for e in hooks.log if e[0] == "evaluate" and e[1] == 1 and e[2] >= 4]
    assert [e[2] for e in hooks.log if e[0] == "record" and e[1] == 2] == [2, 4]
    # every member dead: the loop ends before the next chunk
    hooks = Recorder(2, prune={0: 2, 1: 2})
    _, update = run_chunks(FakeProgram([1e-3, 1e-3], True).advance, np.zeros(2), schedule, hooks, n_members=2)
    assert update == 2


def test_unbatched_divergence_raises_by_default_and_stops_early():
    schedule = ChunkSchedule(UPC, 8, 2)
    program = FakeProgram([1e-3], stacked=False, bad={0: 5})
    with pytest.raises(NonFiniteUpdateError) as info:
        run_chunks(program.advance, program.init(), schedule, ChunkHooks())
    assert info.value.update == 5
    program = FakeProgram([1e-3], stacked=False)
    assert run_chunks(program.advance, 0.0, schedule, ChunkHooks(), max_chunks=3) == (6, 6)
    assert run_chunks(program.advance, 4.0, schedule, ChunkHooks(), start_update=4, max_chunks=1) == (6, 6)
    hooks = Recorder(1, stop_after=2)
    assert run_chunks(program.advance, 0.0, schedule, hooks)[1] == 4


def test_resumed_run_evaluates_where_the_uninterrupted_one_did(tmp_path):
    """eval_every = 3 with 2 updates per chunk: evaluations at updates 4 and 6 (the last) only.
    Stopped after chunk 1 (no evaluation), the resumed run still evaluates at 4, not 2 chunks later."""
    extra = ("--set", "train.eval_every=3", "--set", "train.total_env_steps=768")  # 6 updates of 128 steps
    assert run_train(tmp_path / "whole", *extra) == 0
    assert run_train(tmp_path / "split", *extra, "--max-chunks", "1") == 0
    assert run_train(tmp_path / "split", *extra, "--resume") == 0
    rows = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [2, 4, 6]
    assert [r["update"] for r in rows if "val/objective" in r] == [4, 6]
    assert (tmp_path / "split" / "metrics.jsonl").read_bytes() == (tmp_path / "whole" / "metrics.jsonl").read_bytes()
