"""One training run on the host side: data, trainer, the chunk loop, validation, final evaluation.

The compiled ``train_chunk`` does all the per-step work; the chunk loop between chunks is the one
of every path (:func:`tbjax.run.chunks.run_chunks`, shared with HPO trials and walk-forward), and
:mod:`tbjax.run.training_chunks` says what a training run does at its hooks: one metrics.jsonl
line per chunk (:mod:`tbjax.run.metrics_log`, means over the chunk's updates), validation with
FROZEN statistics on the loop's schedule (every ``train.eval_every`` updates rounded up to whole
chunks, and the last chunk), the best checkpoint by the regime objective, and eval JSON and the
report at the end (:mod:`tbjax.run.deployed`).

What the run writes and in which order (the run directory all or nothing before the first chunk,
each chunk's metrics line BEFORE its checkpoint) is :mod:`tbjax.run.session_writes`.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from tbjax.config import Config
from tbjax.data.market import ROLE_VAL
from tbjax.evaluation.deployment import baseline_name
from tbjax.evaluation.scoring import evaluate_split, evaluate_with_objective
from tbjax.learner.population import population_program
from tbjax.run.assembly import assemble
from tbjax.run.checkpoint import RunCheckpoints
from tbjax.run.chunks import ChunkSchedule, run_chunks
from tbjax.run.deployed import write_evaluation
from tbjax.run.experiment import build_experiment
from tbjax.run.member_book import MemberBook
from tbjax.run.metrics_log import MetricsLog
from tbjax.run.population import initial_carry, member_hparams
from tbjax.run.session_writes import SessionWrites
from tbjax.run.training_chunks import PopulationChunks, TrainingChunks


class TrainingSession(SessionWrites):
    """One training run of ``cfg`` in ``run_dir`` (module docstring); what it writes into the run
    directory is its base class's, :class:`~tbjax.run.session_writes.SessionWrites`."""

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
        # train.population seeds as one compiled program (tbjax.run.population; one: the trainer's own)
        self.n_members = cfg.train.population
        self.members_steps_per_update = cfg.batch_size * self.n_members  # every member's (the progress bar)
        self.program = population_program(self.trainer, self.n_members)
        self.run_hparams = self.program.members(member_hparams(cfg, self.hparams))
        # every member's best and its early stop on val (tbjax.run.member_book, tbjax.run.patience)
        self.book = self._new_book()
        self.ckpt = RunCheckpoints(self.run_dir)
        self.update = 0
        self.saved_update: int | None = None  # update of the newest "latest" checkpoint on disk
        self.time_ms = {s: np.asarray(t["open_time"], np.int64) for s, t in self.exp.tables.items()}
        self.log = MetricsLog(self.run_dir, write, cfg.output.tensorboard, cfg.batch_size)

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

    def member_name(self, i: int) -> str:
        """How the console names member ``i`` (a frontier names its point and seed)."""
        return "training" if self.n_members == 1 else f"population member {i} (seed {self.cfg.train.seed + i})"

    def _new_book(self) -> MemberBook:
        """Every member's best, its patience and its val looks against the run's baseline."""
        return MemberBook(self.n_members, self.cfg.train.patience, baseline=baseline_name(self.cfg))

    def start(self, resume: bool, fix: str | None = None):
        """The carry training continues from: a fresh one from ``train.seed``, or the newest usable
        "latest" checkpoint (``fix``: the advice when there is none). Reads only."""
        carry = self.template()
        self.update, self.saved_update = 0, None
        self.book = self._new_book()
        self.log.resume_at(None)
        if resume:
            carry, meta = self.ckpt.restore("latest", carry, fix=fix)
            self.update = self.saved_update = int(meta["update"])
            self.log.resume_at(self.update)  # the file on disk may still hold lines past it
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

    def train(self, resume: bool, stop, max_chunks: int | None = None, carry=None) -> bool:
        """Train until ``train.total_env_steps``, ``stop.raised`` or ``max_chunks`` chunks; True when
        finished. ``carry``: from :meth:`start` (called here when None). The loop is
        :func:`tbjax.run.chunks.run_chunks`; :mod:`tbjax.run.training_chunks` is what this run does at its hooks."""
        if carry is None:
            carry = self.start(resume)
        schedule = ChunkSchedule.of(self.cfg)
        self.log.open(self.update if resume else 0)
        from tqdm import tqdm

        per_update = self.members_steps_per_update
        bar = tqdm(total=schedule.total_updates * per_update, initial=self.update * per_update,
                   unit="step", unit_scale=True, disable=self.quiet or not self.write, dynamic_ncols=True)
        try:
            # a lone run keeps its rows, messages and checkpoints in the lone format (tbjax.run.population)
            hooks = (TrainingChunks if self.n_members == 1 else PopulationChunks)(self, stop, bar)
            carry, self.update = run_chunks(
                lambda c, alive: self.program.advance(c, self.run_hparams, alive, self.exp.market), carry, schedule,
                hooks, n_members=self.program.stacked_members, start_update=self.update, max_chunks=max_chunks)
        finally:
            bar.close()
            self.log.close()
        if self.update < schedule.total_updates and not hooks.stopped_early():
            self.save_interrupted(carry)
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
