"""Trial execution: Optuna asks, the compiled trainer trains, frozen-statistics backtests score.

One process builds the Experiment once and keeps one compiled program per static signature
(TrainerSpec + the EnvParams tree structure): a new trial with new continuous values reuses it
(HParams leaves are traced; docs/DESIGN.md invariant 4).

Trials trained together (``hpo.batch`` > 1 members) run as one vmapped program
(:mod:`tbjax.hpo.program`); a member that is pruned or diverges stops learning at once (the
``alive`` mask) and is told PRUNED immediately. Smaller groups (the last one, or trials whose
sampled shapes differ) are padded with members that start dead: one compile per signature and process.

The pieces, one idea each:

- a trial inside a group: :class:`tbjax.hpo.trial_member.Member`;
- its scores (one definition with training: :mod:`tbjax.evaluation.scoring` on a per-trial view of
  the Experiment) and the regime objective's median rule: :mod:`tbjax.hpo.trial_scores`;
- reports, objectives, ``train.patience`` and pruning at the chunk loop's hooks
  (:func:`tbjax.run.chunks.run_chunks` is training's loop): :class:`tbjax.hpo.trial_group.TrialGroup`;
- what a trial leaves when it ends (user attrs, its run folder) and Optuna told its state:
  :class:`tbjax.hpo.trial_teller.TrialTeller`.

Other ``hpo.objectives`` keep the regime objective's checkpoint and tell its values (:mod:`tbjax.hpo.objectives`).

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
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from tbjax.config import Config, lone_learner
from tbjax.env import market as market_env
from tbjax.errors import InputError
from tbjax.hpo import liveness as _liveness
from tbjax.hpo.liveness import Liveness, counted_trials
from tbjax.hpo.objectives import Goals
from tbjax.hpo.program import Program, program_for
from tbjax.hpo.selection import INFEASIBLE_ATTR
from tbjax.hpo.space import SearchSpace
from tbjax.hpo.trial_group import TrialGroup
from tbjax.hpo.trial_member import Member
from tbjax.hpo.trial_teller import TrialTeller
from tbjax.learner.mirror import check_mirror_features
from tbjax.learner.trainer import Trainer
from tbjax.run.assembly import assemble
from tbjax.run.chunks import ChunkSchedule, run_chunks
from tbjax.run.experiment import Experiment
from tbjax.run.member_book import MemberBook


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


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
        self.goals = Goals.of(base_cfg)  # hpo.objectives: what Optuna is told and whether it prunes
        self.teller = TrialTeller(self.run_dir, exp, self.goals)  # its liveness: set while optimize runs

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
            check_mirror_features(cfg.ppo.mirror, self.exp.market.feature_names)
        except InputError as exc:
            trial.set_user_attr(INFEASIBLE_ATTR, True)  # never run: not a configuration tried
            self.teller.fail(trial, f"sampled values break a config rule: {exc}")
            return None
        if adjusted:
            trial.set_user_attr("adjusted", adjusted)
        return Member(trial, cfg, built, dataclasses.replace(self.exp, cfg=cfg), book=MemberBook(1, cfg.train.patience))

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
                   TrialGroup(members, program.trainer, self.teller, self.goals), n_members=program.stacked_members)

    # ------------------------------------------------------------------ stale trials
    def recover_stale(self, study) -> list[int]:
        """FAIL trials whose worker stopped and queue their retries (Optuna's, :mod:`tbjax.hpo.liveness`)."""
        return _liveness.recover_stale(study)

    def _note_foreign_running(self, study) -> None:
        grace = _liveness.grace_of(study._storage)
        if grace is not None:
            _liveness.note_foreign_running(study, self.teller.liveness, grace, self.log)

    # ------------------------------------------------------------------ the loop
    def optimize(self, study, n_trials: int, batch: int = 1, timeout: float | None = None,
                 on_trial_done: Callable[[], None] | None = None) -> int:
        """Ask and run trials until the study counts ``n_trials`` (see :func:`counted_trials`) and no
        retry waits, or ``timeout`` passes. Returns the number of trials this call started."""
        with Liveness(study) as liveness:
            self.teller.liveness = liveness
            try:
                return self._optimize(study, n_trials, batch, timeout, on_trial_done)
            finally:
                self.teller.liveness = None

    def _ask(self, study, n_trials: int):
        """A trial to run (its heartbeat beating), or None when it is surplus (failed at once, with why)."""
        with warnings.catch_warnings():  # "heartbeat is supposed to be used with Study.optimize": we beat here
            warnings.simplefilter("ignore")
            trial = study.ask()
        self.teller.liveness.add(trial)
        surplus = _liveness.surplus_reason(study, trial, n_trials)
        if surplus is None:
            return trial
        trial.set_user_attr(_liveness.SURPLUS_ATTR, True)
        self.teller.fail(trial, surplus)
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
                    self.teller.fail_group(group, exc)
                    if isinstance(exc, InputError):  # the user must act (e.g. a full disk): stop
                        raise
                    # otherwise this group's own failure (e.g. out of memory for its shape): go on
                except BaseException as exc:  # an interrupt: leave no RUNNING trial behind, then stop
                    self.teller.fail_group(group, exc)
                    raise
            if on_trial_done is not None:
                on_trial_done()
        return started
