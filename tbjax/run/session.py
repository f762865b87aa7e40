"""One training run on the host side: chunks, logging, validation, checkpoints, final evaluation.

The compiled ``train_chunk`` does all the per-step work; the chunk loop between chunks is the one
of every path (:func:`tbjax.run.chunks.run_chunks`, shared with HPO trials), and this module says
what a training run does at its hooks: one metrics.jsonl line per chunk (means over the chunk's
updates), validation with FROZEN statistics on the loop's schedule (every ``train.eval_every``
updates rounded up to whole chunks, and the last chunk), the best checkpoint by the regime
objective, and eval JSON and the report at the end.

The run directory (docs/DESIGN.md, invariant 6 "Atomic outputs") is :mod:`tbjax.run.rundir`:
building a session only READS; :meth:`TrainingSession.setup_run_dir` writes config.yaml,
run_info.json, feature_pipeline.json and dataset/ all or nothing (:meth:`TrainingSession.undo_setup`).
metrics.jsonl gets one appended (fsync'd) line per chunk, written BEFORE the chunk's checkpoint, so a
crash between the two leaves a line that ``--resume`` trims (the first write of an invocation
rewrites the file atomically with only the lines up to the restored checkpoint), never a
checkpoint without its line.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import jax
import numpy as np

from tbjax.atomic import append_line, write_atomic
from tbjax.config import Config
from tbjax.data.market import ROLE_VAL
from tbjax.errors import InputError
from tbjax.evaluation.deployment import baseline_name
from tbjax.evaluation.objective import finite_or_zero
from tbjax.evaluation.metrics import json_safe
from tbjax.learner.population import population_program
from tbjax.run.checkpoint import RunCheckpoints
from tbjax.run.distributed import host_copy
from tbjax.run.chunks import Chunk, ChunkHooks, ChunkSchedule, run_chunks
from tbjax.run.member_book import MemberBook
from tbjax.run.rundir import RunDirSetup, export_run_dataset, read_metrics_lines, run_write
from tbjax.run.deployed import evaluate_checkpoint, save_evaluation, write_evaluation  # noqa: F401 (re-export)
# re-exported: the CLI (train, evaluate) imports the run-directory rules from here
from tbjax.run.population import initial_carry, population_hparams
from tbjax.run.assembly import assemble
from tbjax.run.setup import build_experiment, evaluate_split, evaluate_with_objective

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


class TrainingSession:
    def __init__(self, cfg: Config, run_dir: Path, write: bool = True, quiet: bool = False, pipeline=None):
        """Load and check everything a run needs; READS only (see :meth:`setup_run_dir`).

        ``write``: this process owns the run directory (checkpoints, metrics, TensorBoard); False
        for evaluation, tests and non-primary hosts. ``pipeline``: a saved FeaturePipeline to reuse
        (resume, evaluate) instead of fitting one on the train rows.
        """
        self.cfg, self.run_dir, self.write, self.quiet = cfg, Path(run_dir), write, quiet
        self.exp = build_experiment(cfg, pipeline=pipeline)
        built = assemble(cfg, len(self.exp.symbols))  # tbjax.run.assembly: the trainer from the shared cache
        self.env_params, self.hparams, self.spec, self.trainer = built.env_params, built.hparams, built.spec, built.trainer
        # train.population > 1: that many seeds as one compiled program (tbjax.run.population); 1: the trainer's own
        self.n_members = cfg.train.population
        self.members_steps_per_update = cfg.batch_size * self.n_members  # every member's (the progress bar)
        self.program = population_program(self.trainer, self.n_members)
        self.run_hparams = self.hparams if self.n_members == 1 else population_hparams(cfg, self.hparams)
        # every member's best and its early stop on val (tbjax.run.member_book, tbjax.run.patience)
        self.book = self._new_book()
        self.ckpt = RunCheckpoints(self.run_dir)
        self.update = 0
        self.saved_update: int | None = None  # update of the newest "latest" checkpoint on disk
        self.time_ms = {s: np.asarray(t["open_time"], np.int64) for s, t in self.exp.tables.items()}
        self._metrics_lines: list[str] = []
        self._metrics_synced = False
        self._setup: RunDirSetup | None = None

    # ------------------------------------------------------------------ run directory
    def setup_run_dir(self, config_text: str, fresh: bool, run_info: dict | None = None,
                      changes: dict | None = None) -> None:
        """Write what a run needs before its first chunk, all or nothing (:meth:`RunDirSetup.write`):
        fresh, run_info.json, config.yaml, feature_pipeline.json and dataset/; on resume only what
        changed (``changes`` {key: [old, new]} go to run_info.json's "resumes") or is missing."""
        self._setup = RunDirSetup(self.run_dir, fresh)
        self._setup.write(config_text, run_info, changes, self.update,
                          save_pipeline=lambda tmp: self.exp.pipeline.save(str(tmp)), export=self._export_dataset)

    def undo_setup(self) -> None:
        """Remove what :meth:`setup_run_dir` wrote (best effort): the folder as the user had it,
        minus the leftovers a fresh start cleared."""
        setup, self._setup = self._setup, None
        if setup is not None:
            setup.undo()

    def _export_dataset(self) -> None:
        """dataset/ as one unit (:func:`tbjax.run.rundir.export_run_dataset`)."""
        export_run_dataset(self.run_dir, self.exp, self.cfg)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, carry, role: int):
        """Backtest one split of the run's data with the carry's frozen statistics."""
        return evaluate_split(self.exp, self.trainer.policy_apply, carry.params, carry.obs_stats, self.env_params, role)

    def objective(self, carry, role: int = ROLE_VAL) -> tuple[float, dict, dict]:
        """Regime objective on ``role`` plus the synthetic CHOPPY_FLAT / STRONG_TREND markets."""
        return evaluate_with_objective(self.exp, self.trainer.policy_apply, carry.params, carry.obs_stats,
                                       self.env_params, role)

    # ------------------------------------------------------------------ training
    def template(self):
        """A fresh carry from ``train.seed`` (:func:`tbjax.run.population.initial_carry`)."""
        return initial_carry(self.cfg, self.trainer, self.hparams, self.exp.market)

    def _new_book(self) -> MemberBook:
        """Every member's best, its patience and its val looks against the run's baseline."""
        return MemberBook(self.n_members, self.cfg.train.patience, baseline=baseline_name(self.cfg))

    def start(self, resume: bool, fix: str | None = None):
        """The carry training continues from: a fresh one from ``train.seed``, or the newest usable
        "latest" checkpoint (``fix``: the advice when there is none). Reads only."""
        carry = self.template()
        self.update, self.saved_update, self._metrics_lines = 0, None, []
        self.book = self._new_book()
        self._metrics_synced = False  # the file on disk may still hold lines past the restored update
        if resume:
            carry, meta = self.ckpt.restore("latest", carry, fix=fix)
            self.update = self.saved_update = int(meta["update"])
            self._metrics_lines = read_metrics_lines(self.run_dir / "metrics.jsonl", self.update)
            best_carry = None  # a population's members' best carries; a lone run's best stays on disk
            if self.n_members > 1 and self.ckpt.best_step() is not None:
                best_carry = self.ckpt.restore("best", carry)[0]
            self.book.restore(meta, best_carry)
        return carry

    @property
    def best_objective(self) -> float:
        """The best val objective so far over every member (-inf before any evaluation)."""
        return max(self.book.objective)

    def compile(self, carry) -> None:
        """Compile ``train_chunk`` for ``carry`` now (jit's cache keeps the executable for the first
        chunk): a compile failure, or an interrupt while XLA compiles (often the longest wait before
        the first chunk), then happens before the run directory is touched."""
        self.program.compile(carry, self.run_hparams, self.exp.market)

    def _log(self, row: dict, tb) -> None:
        """Append the chunk's row to metrics.jsonl (the first time: the trimmed file rewritten
        atomically), TensorBoard flushed, so a full disk surfaces here as one error, not later in a
        writer thread."""
        if not self.write:
            return
        path = self.run_dir / "metrics.jsonl"
        line = json.dumps(json_safe(row), sort_keys=True)
        with run_write(path):
            if self._metrics_synced:
                append_line(path, line)
            else:
                write_atomic(path, "".join(kept + "\n" for kept in self._metrics_lines + [line]))
                self._metrics_synced, self._metrics_lines = True, []
        if tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and math.isfinite(value) and key not in ("update", "env_steps"):
                    tb.add_scalar(key, value, row["env_steps"])
            with run_write(self.run_dir / "tb"):
                tb.flush()

    def _latest_meta(self, save: dict) -> dict:
        """What a checkpoint records besides the carry: the chunk's bookkeeping, the best objective so
        far (None before any evaluation: JSON has no -inf) and, for a population, every member's best
        and the members chosen on val (resume restores the book from it, evaluation reads the choice)."""
        best = self.best_objective if math.isfinite(self.best_objective) else None
        book = self.book.meta(self.cfg.train.ensemble_top_k) if self.n_members > 1 else self.book.selection_meta()
        return {**save, **book, "best_objective": best}

    def _save_latest(self, carry, meta: dict) -> None:
        with run_write(self.ckpt.paths["latest"]):
            self.ckpt.save_latest(self.update, carry, meta)
        self.saved_update = self.update

    def _open_tensorboard(self, resumed_at: int):
        if not (self.write and self.cfg.output.tensorboard):
            return None
        from tensorboardX import SummaryWriter

        # On resume, drop events logged after the checkpoint (their chunks are trained again).
        purge = resumed_at * self.cfg.batch_size + 1 if resumed_at else None
        with run_write(self.run_dir / "tb"):
            return SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)

    def _keep(self, carry, save: dict, val_sortino) -> None:
        """After an evaluation: the best checkpoint when the objective improved, then "latest".
        A population saves every member's best carry, stacked, when any member improved."""
        carry = host_copy(carry)  # several processes: all gather, process 0 saves
        if self.book.improved and self.write:
            population = self.n_members > 1
            best = self.book.best_carry(carry) if population else carry
            meta = self._latest_meta(save) if population else save
            with run_write(self.ckpt.paths["best"]):
                self.ckpt.save_best(self.update, best, meta)
        self.book.improved = False
        if self.write:
            self._save_latest(carry, self._latest_meta(save))
        self.saved_update = self.update  # on every process: the end-of-run save decision is then the same on all
        if self.quiet:  # other processes print the same line, marked
            who = "" if self.write else f"[process {jax.process_index()}] "
            print(f"{who}update {self.update}/{self.cfg.n_updates}  val sortino {finite_or_zero(val_sortino):.3f}  "
                  f"objective {save['objective']:.3f}", flush=True)

    def train(self, resume: bool, stop, max_chunks: int | None = None, carry=None) -> bool:
        """Train until ``train.total_env_steps``, ``stop.raised`` or ``max_chunks`` chunks; True when
        finished. ``carry``: from :meth:`start` (called here when None). The loop is
        :func:`tbjax.run.chunks.run_chunks`; :class:`_TrainingChunks` is what this run does at its hooks."""
        if carry is None:
            carry = self.start(resume)
        schedule = ChunkSchedule.of(self.cfg)
        tb = self._open_tensorboard(self.update if resume else 0)
        from tqdm import tqdm

        per_update = self.members_steps_per_update
        bar = tqdm(total=schedule.total_updates * per_update, initial=self.update * per_update,
                   unit="step", unit_scale=True, disable=self.quiet or not self.write, dynamic_ncols=True)
        try:
            hooks = (_TrainingChunks if self.n_members == 1 else _PopulationChunks)(self, stop, tb, bar)
            carry, self.update = run_chunks(
                lambda c, alive: self.program.advance(c, self.run_hparams, alive, self.exp.market), carry, schedule,
                hooks, n_members=self.program.stacked, start_update=self.update, max_chunks=max_chunks)
        finally:
            bar.close()
            if tb is not None:
                with contextlib.suppress(OSError):
                    tb.close()
        if self.update < schedule.total_updates and not hooks.stopped_early():
            if self.saved_update != self.update:
                host = host_copy(carry)  # every process (a collective), then process 0 saves
                if self.write:
                    self._save_latest(host, self._latest_meta({"update": self.update,
                                                               "env_steps": self.update * self.cfg.batch_size}))
            return False
        self.carry = carry
        return True

    # ------------------------------------------------------------------ final artifacts
    def final_evaluation(self, which: str = "best") -> dict:
        """Process 0 only when several train together: it restores its checkpoint to its own devices."""
        # several processes: no global computation on this one alone, only the shapes
        template = self.template() if jax.process_count() == 1 else jax.eval_shape(self.template)
        if which == "best" and self.ckpt.best_step() is None:
            which = "latest"
        carry, meta = self.ckpt.restore(which, template)
        return write_evaluation(self, carry, meta, which)


class _TrainingChunks(ChunkHooks):
    """A training run at the chunk loop's hooks (one member, no vmap): a diverged update is an
    error; an evaluation is the validation objective; each chunk logs its row, then (after an
    evaluation) saves the best and latest checkpoints, then moves the progress bar."""

    def __init__(self, session: TrainingSession, stop, tb, bar):
        self.session, self.stop_flag, self.tb, self.bar = session, stop, tb, bar
        self.row: dict = {}
        self.save: dict | None = None
        self.last_val: dict = {}
        self.t0 = time.perf_counter()

    def stop(self) -> bool:
        return (self.stop_flag is not None and self.stop_flag.raised) or self.stopped_early()

    def stopped_early(self) -> bool:
        """Every member stopped by ``train.patience`` (the run is finished, not interrupted)."""
        return self.session.book.patience.all_stopped()

    def _offer(self, i: int, value: float, chunk: Chunk, val_eval: dict, carry=None, val_sortino=None) -> None:
        """Member ``i``'s evaluation to the book (:class:`tbjax.run.member_book.MemberBook`)."""
        session = self.session
        if session.book.offer(i, value, chunk.update, carry, val_sortino, val_eval).stopped:
            who = "training" if session.n_members == 1 else f"population member {i} (seed {session.cfg.train.seed + i})"
            print(f"note: {who} stops at update {chunk.update} of {session.cfg.n_updates}: no new best val objective "
                  f"in {session.book.patience.patience} evaluations (train.patience)", flush=True)

    def record(self, i: int, metrics: dict, chunk: Chunk) -> None:
        self.row = {"update": chunk.update, "env_steps": chunk.update * self.session.cfg.batch_size,
                    **reduce_chunk_metrics(metrics)}
        self.save = None

    def diverged(self, i: int, error, chunk: Chunk) -> None:
        raise InputError(f"NaN guard fired: {error}. The last good checkpoint is in "
                         f"'{self.session.run_dir / 'checkpoints'}'; check the data, or start a new run "
                         "(another --run-dir) with a lower ppo.learning_rate") from None

    def evaluate(self, i: int, carry, chunk: Chunk) -> None:
        value, val_eval, _ = self.session.objective(carry)
        self._offer(i, value, chunk, val_eval)  # no carry: a lone run's best goes straight to disk (_keep)
        pooled = val_eval["pooled"]
        self.last_val = {"val/sortino": pooled["sortino"], "val/sharpe": pooled["sharpe"],
                         "val/total_return": pooled["total_return"], "val/objective": value}
        self.row.update(self.last_val)
        self.save = {"update": chunk.update, "env_steps": self.row["env_steps"], "objective": value}

    def chunk_done(self, carry, chunk: Chunk) -> None:
        session, row = self.session, self.row
        session.update = chunk.update
        row["patience/stopped"] = session.book.patience.n_stopped()
        session._log(row, self.tb)  # before the checkpoint: see the module docstring
        if self.save is not None:
            session._keep(carry, self.save, self.last_val["val/sortino"])
        steps = (chunk.update - chunk.start) * session.members_steps_per_update
        dt = time.perf_counter() - self.t0
        self.bar.update(steps)
        self.bar.set_postfix({"steps/s": f"{steps / dt:,.0f}",
                              "val_sortino": f"{finite_or_zero(self.last_val.get('val/sortino')):.2f}",
                              "objective": f"{self.last_val.get('val/objective', float('nan')):.2f}",
                              "nan_guard": int(row.get("nan_guard_count", 0))}, refresh=False)
        self.t0 = time.perf_counter()


def _nan_mean(values) -> float:
    """``np.nanmean`` of the members' values, NaN when none has one yet (e.g. the explained-variance
    EMA before its first update) without numpy's "Mean of empty slice" warning, a line in the CLI."""
    v = np.asarray(values, np.float64)
    return float(v[~np.isnan(v)].mean()) if np.any(~np.isnan(v)) else float("nan")


class _PopulationChunks(_TrainingChunks):
    """A population's members at the chunk loop's hooks: a member whose NaN guard fires stops alone
    (its last good carry is kept; all of them diverging is the error); every evaluation is offered
    to the book with the member's carry; the logged row is the members' mean of each training
    metric and the median (and best) of their val objectives."""

    def __init__(self, session: TrainingSession, stop, tb, bar):
        super().__init__(session, stop, tb, bar)
        self.rows: dict[int, dict] = {}
        self.vals: dict[int, tuple[float, float]] = {}
        self.dead: dict[int, str] = {}

    def alive(self):
        return [i not in self.dead and not self.session.book.patience.stopped(i) for i in range(self.session.n_members)]

    def stopped_early(self) -> bool:
        return self.session.book.patience.all_stopped(excluded=self.dead)

    def record(self, i: int, metrics: dict, chunk: Chunk) -> None:
        self.rows[i] = reduce_chunk_metrics(metrics)

    def diverged(self, i: int, error, chunk: Chunk) -> None:
        self.dead[i] = str(error)
        print(f"warning: population member {i} (seed {self.session.cfg.train.seed + i}) diverged at update "
              f"{chunk.update} and stops training; its best carry so far stays: {error}", flush=True)
        if len(self.dead) == self.session.n_members:
            super().diverged(i, error, chunk)

    def evaluate(self, i: int, carry, chunk: Chunk) -> None:
        value, val_eval, _ = self.session.objective(carry)
        self.vals[i] = (value, val_eval["pooled"]["sortino"])
        self._offer(i, value, chunk, val_eval, carry, val_eval["pooled"]["sortino"])

    def chunk_done(self, carry, chunk: Chunk) -> None:
        rows = [r for i, r in self.rows.items() if i not in self.dead] or list(self.rows.values())
        self.row = {"update": chunk.update, "env_steps": chunk.update * self.session.cfg.batch_size,
                    "population/alive": self.session.n_members - len(self.dead),
                    **{k: _nan_mean([r[k] for r in rows]) for k in rows[0]}}
        self.rows, self.save = {}, None
        if self.vals:
            objectives = [v[0] for v in self.vals.values()]
            self.last_val = {"val/objective": float(np.median(objectives)), "val/objective_best": max(objectives),
                             "val/sortino": float(np.median([v[1] for v in self.vals.values()]))}
            self.row.update(self.last_val)
            self.save = {"update": chunk.update, "env_steps": self.row["env_steps"], "objective": max(objectives)}
            self.vals = {}
        super().chunk_done(carry, chunk)
