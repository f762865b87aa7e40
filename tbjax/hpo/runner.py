"""Trial execution: Optuna asks, the compiled trainer trains, frozen-statistics backtests score.

One process builds the Experiment once and keeps one compiled program per static signature
(TrainerSpec + the EnvParams tree structure): a new trial with new continuous values reuses it
(HParams leaves are traced; docs/DESIGN.md invariant 4).

Trials trained together (``hpo.batch`` > 1 members) run as one vmapped program
(:mod:`tbjax.hpo.program`); a member that is pruned or diverges stops learning at once (the
``alive`` mask) and is told PRUNED immediately. Smaller groups (the last one, or trials whose
sampled shapes differ) are padded with members that start dead: one compile per signature and process.

The chunk loop is training's (:func:`tbjax.run.chunks.run_chunks`: schedule, metrics fetch, NaN
guard per member, update count); :class:`_TrialChunks` is what a group of trials does at its hooks.

Scores: one definition with training. Every backtest and objective comes from
:mod:`tbjax.evaluation.scoring` (``evaluate_split``, ``regime_sortinos``, ``objective_of``) on a per-trial
view of the Experiment whose config is the trial's: a trial's reports, value, ``val_metrics`` and
``test_metrics`` are what ``tbjax.train`` / ``tbjax.evaluate`` compute for that config and checkpoint.

Reports and pruning. Every ``train.eval_every`` updates (rounded up to whole chunks) each live
trial is backtested on the validation split with its frozen observation statistics and its pooled
Sortino is ``trial.report``-ed at step = updates done; the study's pruner decides
(``should_prune``). Every ``hpo.objective_every`` evaluations, and always at the last chunk, the
regime objective (0.5·val + 0.3·CHOPPY_FLAT + 0.2·STRONG_TREND Sortino; docs/ALGORITHMS.md) is
computed and appended to the user attr ``objective_series``, and the evaluation's val returns to
``val_candidates`` (what the trial chose among: :mod:`tbjax.hpo.selection`). The objective prunes through a second
rule on those user attrs (Optuna's pruners see one stream only): when at least
``OBJECTIVE_PRUNE_STARTUP`` completed trials recorded an objective at the same update and this
trial's value is below their median, it is pruned (the MedianPruner rule of Optuna applied to the
objective stream). The trial's value is its best objective, kept with its carry by the trial's
member book (:class:`tbjax.run.member_book.MemberBook`); that checkpoint is what it saves. With no
new best for ``train.patience`` objectives a trial stops, COMPLETE (user attr ``stopped_early``).
Other ``hpo.objectives`` keep this checkpoint and tell its values (:mod:`tbjax.hpo.objectives`).

Failures. A skipped non-finite update (``raise_if_nonfinite``) prunes the trial with the reason
in ``pruned_reason``. Sampled values that break a config or data rule fail the trial at once; an
exception while training (e.g. out of memory for one shape) fails that trial's group with
``fail_reason`` (and ``fail_traceback``) and the worker goes on; an InputError (a problem the user
must fix, such as a full disk) or an interrupt fails the group and stops the worker. Every trial
records the learning rate actually applied (``lr_applied``: [update, lr] at the end of each
chunk) and, for its best checkpoint, ``val_metrics`` and ``test_metrics`` (pooled, core keys).

Counting and killed workers (``n_trials`` is the study's total; heartbeats, stale-trial retries):
:mod:`tbjax.hpo.liveness`.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optuna
from optuna.trial import TrialState

from tbjax.atomic import atomic_folder, write_atomic
from tbjax.config import Config, dump_config, lone_learner
from tbjax.data.market import ROLE_TEST, ROLE_VAL
from tbjax.env import market as market_env
from tbjax.errors import InputError
from tbjax.evaluation.backtest import CORE_BASELINE_KEYS
from tbjax.evaluation.metrics import json_safe, pooled_returns
from tbjax.hpo import liveness as _liveness
from tbjax.hpo.liveness import Liveness, counted_trials
from tbjax.hpo.objectives import Goals
from tbjax.hpo.program import Program, program_for
from tbjax.hpo.selection import INFEASIBLE_ATTR, val_candidate
from tbjax.hpo.space import SearchSpace
from tbjax.learner.trainer import Trainer
from tbjax.run.assembly import Assembly, assemble
from tbjax.run.checkpoint import RunCheckpoints
from tbjax.run.chunks import Chunk, ChunkHooks, ChunkSchedule, run_chunks
from tbjax.run.member_book import MemberBook
from tbjax.evaluation.scoring import evaluate_split, objective_of, regime_sortinos
from tbjax.run.experiment import Experiment

OBJECTIVE_PRUNE_STARTUP = 3


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class Member:
    """One trial inside a group: its config, HParams and what has been learned about it.

    ``exp`` is the run's Experiment seen with the trial's config (same data, markets and
    pipeline), so the shared evaluation functions read the trial's eval settings.
    """

    trial: optuna.trial.Trial
    cfg: Config
    assembly: Assembly  # tbjax.run.assembly: the trial's EnvParams, HParams, spec and (shared) trainer
    exp: Experiment
    alive: bool = True
    told: bool = False  # the trial's final state is in the storage
    n_evals: int = 0
    book: MemberBook = field(default_factory=lambda: MemberBook(1))  # its best objective, update and carry
    objective_series: list = field(default_factory=list)
    val_candidates: list = field(default_factory=list)  # hpo.selection.val_candidate of each objective
    lr_applied: list = field(default_factory=list)
    pad: bool = False

    hparams = property(lambda self: self.assembly.hparams)
    env_params = property(lambda self: self.assembly.env_params)


class TrialRunner:
    """Runs Optuna trials on one Experiment; ``run_dir/trials/<number>/`` holds each trial's files.

    ``log`` prints the runner's one-line notices (stale and foreign RUNNING trials); stderr by default.
    """

    def __init__(self, base_cfg: Config, exp: Experiment, space: SearchSpace, run_dir: str | Path,
                 quiet: bool = True, log: Callable[[str], None] = _stderr):
        self.base_cfg, self.exp, self.space = base_cfg, exp, space
        self.run_dir = Path(run_dir)
        self.quiet = quiet
        self.log = log
        self.programs: dict[tuple, Program] = {}
        self.trainers: dict[Any, Trainer] = {}
        self.liveness: Liveness | None = None
        self.goals = Goals.of(base_cfg)  # hpo.objectives: what Optuna is told and whether it prunes

    # ------------------------------------------------------------------ programs
    @staticmethod
    def signature(m: Member) -> tuple:
        return m.assembly.spec, jax.tree_util.tree_structure(m.hparams)

    def program(self, m: Member, n_members: int) -> Program:
        """The compiled program of ``m``'s signature (any member of a group: their static parts agree)."""
        signature = self.signature(m)
        if signature not in self.trainers:
            self.trainers[signature] = m.assembly.trainer  # the shared cache: training runs in this process reuse it
        key = (signature, n_members)
        if key not in self.programs:
            self.programs[key] = program_for(self.trainers[signature], n_members)
        return self.programs[key]

    def compile_count(self) -> int:
        """Compiled train_chunk programs so far (every signature and member count): the jit caches' sizes
        (trace counters would miss the batched program: vmap re-uses the inner jit's jaxpr)."""
        return sum(p.chunk._cache_size() for p in self.programs.values())

    # ------------------------------------------------------------------ trial setup
    def plan(self, trial) -> Member | None:
        """Suggest values, build the trial's config; an infeasible combination fails the trial."""
        values = self.space.suggest(trial)
        try:
            cfg, adjusted = self.space.resolve(lone_learner(self.base_cfg), values)  # a trial is ONE learner
            built = assemble(cfg, len(self.exp.symbols))
            market_env.check_data(built.env_params, self.exp.market)
        except InputError as exc:
            trial.set_user_attr(INFEASIBLE_ATTR, True)  # never run: not a configuration tried
            self._fail(trial, f"sampled values break a config rule: {exc}")
            return None
        if adjusted:
            trial.set_user_attr("adjusted", adjusted)
        return Member(trial, cfg, built, dataclasses.replace(self.exp, cfg=cfg), book=MemberBook(1, cfg.train.patience))

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, m: Member, trainer: Trainer, carry, role: int) -> tuple[dict, dict]:
        """The shared backtest of ``role`` (tbjax.evaluation.scoring.evaluate_split) for the trial's config."""
        return evaluate_split(m.exp, trainer.policy_apply, carry.params, carry.obs_stats, m.env_params, role)

    def objective(self, m: Member, trainer: Trainer, carry, val_eval: dict) -> float:
        """The regime objective from the val backtest plus the synthetic regime markets.

        Composed of the same pieces as ``tbjax.evaluation.scoring.evaluate_with_objective`` (training's
        best checkpoint); split here because the val backtest runs at every evaluation (pruner
        report) and the regime markets only every ``hpo.objective_every`` evaluations.
        """
        regimes = regime_sortinos(m.cfg, m.exp.regimes, m.exp.bars_per_year, trainer.policy_apply, carry.params,
                                  carry.obs_stats, m.env_params)
        return objective_of(m.cfg, val_eval["pooled"]["sortino"], regimes)

    def _objective_prunes(self, study, update: int, value: float) -> str | None:
        others = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            for u, v in t.user_attrs.get("objective_series", []):
                if u == update and v is not None:
                    others.append(v)
        if len(others) >= OBJECTIVE_PRUNE_STARTUP and value < float(np.median(others)):
            return (f"regime objective {value:.4g} at update {update} is below the median "
                    f"{float(np.median(others)):.4g} of {len(others)} completed trials")
        return None

    # ------------------------------------------------------------------ bookkeeping
    def _fail(self, trial, reason: str, tb: str | None = None) -> None:
        """FAIL ``trial`` with its reason (and traceback) in user attrs; its heartbeat stops."""
        trial.set_user_attr("fail_reason", reason[:500])
        if tb:
            trial.set_user_attr("fail_traceback", tb[-4000:])
        if self.liveness is not None:
            self.liveness.discard(trial)
        trial.study.tell(trial, state=TrialState.FAIL)

    def _save_trial(self, member: Member, trainer: Trainer):
        """Metrics of the best checkpoint (the shared backtest) and the trial's folder; returns what Optuna is told.

        The folder is a run directory: ``python -m tbjax.evaluate --run-dir trials/<n>`` re-scores
        the checkpoint and writes the same ``val_metrics`` / ``test_metrics`` into eval/.
        """
        trial, cfg, (objective, update, carry, _) = member.trial, member.cfg, member.book.best(0)
        val, val_series = self.evaluate(member, trainer, carry, ROLE_VAL)
        # pooled per-bar val returns for hpo/selection.py; 9 digits, as a near-zero Sharpe amplifies
        # rounding in the mean about 1 / Sharpe times (7 digits moved one by 1e-5 relative).
        trial.set_user_attr("val_returns", [float(f"{x:.9g}") for x in pooled_returns(val_series)])
        test = self.evaluate(member, trainer, carry, ROLE_TEST)[0]
        trial.set_user_attr("val_metrics", json_safe({k: val["pooled"][k] for k in CORE_BASELINE_KEYS}))
        trial.set_user_attr("test_metrics", json_safe({k: test["pooled"][k] for k in CORE_BASELINE_KEYS}))
        trial.set_user_attr("best_update", update)
        told = self.goals.told(trial, objective, val["pooled"])
        trial_dir = self.run_dir / "trials" / str(trial.number)
        with atomic_folder(trial_dir) as staging:  # a worker killed while saving leaves no half folder
            write_atomic(staging / "config.yaml", dump_config(cfg))
            self.exp.pipeline.save(staging / "feature_pipeline.json")
            ckpt = RunCheckpoints(staging)
            try:
                ckpt.save_best(update, carry, {"update": update, "env_steps": update * cfg.batch_size,
                                               "objective": objective, "trial": trial.number})
            finally:
                ckpt.close()
        trial.set_user_attr("run_dir", str(trial_dir))
        return told

    def _finish(self, member: Member, trainer: Trainer, state: TrialState, reason: str | None = None) -> None:
        """Write the trial's directory and attrs, then tell Optuna (PRUNED or COMPLETE)."""
        trial = member.trial
        member.alive = False  # masked out of the batch from now on, even if saving fails below
        trial.set_user_attr("lr_applied", member.lr_applied)
        trial.set_user_attr("objective_series", json_safe(member.objective_series))
        if reason:
            trial.set_user_attr("pruned_reason", reason)
        told = self._save_trial(member, trainer) if member.book.best(0) is not None else None
        if self.liveness is not None:
            self.liveness.discard(trial)
        if state == TrialState.COMPLETE:
            trial.study.tell(trial, told)
        else:
            trial.study.tell(trial, state=TrialState.PRUNED)
        member.told = True

    # ------------------------------------------------------------------ one group
    def run_group(self, members: list[Member], n_members: int) -> None:
        """Train ``members`` (one static signature, at most ``n_members``) to the end or until pruned."""
        cfg = members[0].cfg
        program = self.program(members[0], n_members)
        market = self.exp.market
        key = jax.random.PRNGKey(cfg.train.seed)  # common random numbers: every trial sees one stream
        first = members[0]  # a short group is padded with dead copies of its first trial
        members = members + [dataclasses.replace(first, alive=False, pad=True, objective_series=[], lr_applied=[],
                                                 val_candidates=[], book=MemberBook(1))
                             for _ in range(n_members - len(members))]
        hps = program.members([m.hparams for m in members])
        carry = program.start(key, hps, market)
        run_chunks(lambda c, alive: program.advance(c, hps, alive, market), carry, ChunkSchedule.of(cfg),
                   _TrialChunks(self, members, program.trainer), n_members=program.stacked_members)

    def _evaluate(self, m: Member, trainer, carry, update: int, is_last: bool) -> None:
        val, val_series = self.evaluate(m, trainer, carry, ROLE_VAL)
        self.goals.report(m.trial, val["pooled"], update)
        m.n_evals += 1
        reason = None
        if m.n_evals % m.cfg.hpo.objective_every == 0 or is_last:
            value = self.objective(m, trainer, carry, val)
            m.objective_series.append([update, value])
            m.trial.set_user_attr("objective_series", json_safe(m.objective_series))
            m.val_candidates.append(val_candidate(update, val_series))
            m.trial.set_user_attr("val_candidates", m.val_candidates)
            if m.book.offer(0, value, update, carry).stopped and not is_last:  # keeps an owning host copy
                m.trial.set_user_attr("stopped_early", {"update": update, "patience": m.cfg.train.patience})
                return self._finish(m, trainer, TrialState.COMPLETE)  # train.patience, as training stops
            if m.cfg.hpo.pruner != "none" and not is_last and self.goals.median_rule:
                reason = self._objective_prunes(m.trial.study, update, value)
        if not is_last and reason is None and self.goals.should_prune(m.trial):
            reason = f"pruner ({m.cfg.hpo.pruner}) at update {update}: {self.goals.reported_name} below its rung"
        if reason is not None:
            self._finish(m, trainer, TrialState.PRUNED, reason)

    def _fail_group(self, group: list[Member], exc: BaseException) -> None:
        """FAIL every member of ``group`` not yet told, with the exception as the reason."""
        reason = f"{type(exc).__name__}: {exc}"
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        for m in group:
            if not m.told and not m.pad:
                m.alive = False
                try:
                    self._fail(m.trial, reason, tb)
                except Exception:  # the storage itself failed: the heartbeat stops, the trial goes stale
                    pass
                m.told = True

    # ------------------------------------------------------------------ stale trials
    def recover_stale(self, study) -> list[int]:
        """FAIL trials whose worker stopped and queue their retries (Optuna's, :mod:`tbjax.hpo.liveness`)."""
        return _liveness.recover_stale(study)

    def _note_foreign_running(self, study) -> None:
        grace = _liveness.grace_of(study._storage)
        if grace is not None:
            _liveness.note_foreign_running(study, self.liveness, grace, self.log)

    # ------------------------------------------------------------------ the loop
    def optimize(self, study, n_trials: int, batch: int = 1, timeout: float | None = None,
                 on_trial_done: Callable[[], None] | None = None) -> int:
        """Ask and run trials until the study counts ``n_trials`` (see :func:`counted_trials`) and no
        retry waits, or ``timeout`` passes. Returns the number of trials this call started."""
        with Liveness(study) as liveness:
            self.liveness = liveness
            try:
                return self._optimize(study, n_trials, batch, timeout, on_trial_done)
            finally:
                self.liveness = None

    def _ask(self, study, n_trials: int):
        """A trial to run (its heartbeat beating), or None when it is surplus (failed at once, with why)."""
        with warnings.catch_warnings():  # "heartbeat is supposed to be used with Study.optimize": we beat here
            warnings.simplefilter("ignore")
            trial = study.ask()
        self.liveness.add(trial)
        surplus = _liveness.surplus_reason(study, trial, n_trials)
        if surplus is None:
            return trial
        trial.set_user_attr(_liveness.SURPLUS_ATTR, True)
        self._fail(trial, surplus)
        return None

    def _optimize(self, study, n_trials, batch, timeout, on_trial_done) -> int:
        t0 = time.time()
        started = 0
        self.recover_stale(study)
        self._note_foreign_running(study)
        while timeout is None or time.time() - t0 < timeout:
            if started:
                self.recover_stale(study)
            remaining = max(n_trials - len(counted_trials(study)), len(_liveness.waiting_retries(study)))
            if remaining <= 0:
                break
            trials = [t for t in (self._ask(study, n_trials) for _ in range(min(batch, remaining))) if t is not None]
            started += len(trials)
            members = [m for m in (self.plan(t) for t in trials) if m is not None]
            groups: dict[tuple, list[Member]] = {}
            for m in members:
                groups.setdefault(self.signature(m), []).append(m)
            for group in groups.values():
                try:
                    self.run_group(group, batch)
                except Exception as exc:
                    self._fail_group(group, exc)
                    if isinstance(exc, InputError):  # the user must act (e.g. a full disk): stop
                        raise
                    # otherwise this group's own failure (e.g. out of memory for its shape): go on
                except BaseException as exc:  # an interrupt: leave no RUNNING trial behind, then stop
                    self._fail_group(group, exc)
                    raise
            if on_trial_done is not None:
                on_trial_done()
        return started


class _TrialChunks(ChunkHooks):
    """A group of trials at the chunk loop's hooks: the alive mask is the members' state; each
    chunk's last learning rate goes to ``lr_applied``; a diverged member is PRUNED; an evaluation
    reports, scores and maybe prunes (:meth:`TrialRunner._evaluate`); the last chunk completes the
    survivors."""

    def __init__(self, runner: TrialRunner, members: list[Member], trainer: Trainer):
        self.runner, self.members, self.trainer = runner, members, trainer

    def alive(self) -> list[bool]:
        return [m.alive for m in self.members]

    def record(self, i: int, metrics: dict, chunk: Chunk) -> None:
        self.members[i].lr_applied.append([chunk.update, float(np.asarray(metrics["lr"]).reshape(-1)[-1])])

    def diverged(self, i: int, error, chunk: Chunk) -> None:
        self.runner._finish(self.members[i], self.trainer, TrialState.PRUNED, f"non-finite update: {error}")

    def evaluate(self, i: int, carry, chunk: Chunk) -> None:
        self.runner._evaluate(self.members[i], self.trainer, carry, chunk.update, chunk.last)

    def chunk_done(self, carry, chunk: Chunk) -> None:
        if chunk.last:
            for m in self.members:
                if m.alive:
                    self.runner._finish(m, self.trainer, TrialState.COMPLETE)
