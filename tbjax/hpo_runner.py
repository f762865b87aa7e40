"""Trial execution: Optuna asks, the compiled trainer trains, frozen-statistics backtests score.

One process builds the Experiment once and keeps one compiled program per static signature
(TrainerSpec + the EnvParams tree structure): a new trial with new continuous values reuses it
(HParams leaves are traced; DESIGN.md invariant 4).

Batched trials (``batch`` B > 1) stack B trials' HParams on a leading axis and run
``jit(vmap(train_chunk))`` (and ``vmap(init)``): one compiled program advances all B trials. A
member that is pruned or diverges stops learning at once: an ``alive`` mask selects its old carry
after every chunk, and the trial is told PRUNED immediately. Groups smaller than B (the last
batch, or trials whose sampled shapes differ) are padded with copies of a member that start dead,
so each signature compiles once per process. B = 1 calls the trainer's own jitted functions.

Reports and pruning. Every ``train.eval_every`` updates (rounded up to whole chunks) each live
trial is backtested on the validation split with its frozen observation statistics and its pooled
Sortino is ``trial.report``-ed at step = updates done; the study's pruner decides
(``should_prune``). Every ``hpo.objective_every`` evaluations, and always at the last chunk, the
regime objective (0.5·val + 0.3·CHOPPY_FLAT + 0.2·STRONG_TREND Sortino; ALGORITHMS.md) is
computed and appended to the user attr ``objective_series``. The objective prunes through a second
rule on those user attrs (Optuna's pruners see one stream only): when at least
``OBJECTIVE_PRUNE_STARTUP`` completed trials recorded an objective at the same update and this
trial's value is below their median, it is pruned (the MedianPruner rule of Optuna applied to the
objective stream). The trial's value is its best objective, and that checkpoint is what it saves.

NaN guard: a skipped non-finite update (``raise_if_nonfinite``) prunes the trial with the reason
in ``pruned_reason``. Every trial records the learning rate actually applied (``lr_applied``:
[update, lr] at the end of each chunk) and, for its best checkpoint, ``val_metrics`` and
``test_metrics`` (pooled, core keys).

Counting: ``n_trials`` is the study's total; each worker asks while the study holds fewer started
trials (any state but WAITING: enqueued trials are run, not counted). Concurrent workers may overshoot by up to one batch each (the count is read before
asking, as in Optuna's MaxTrialsCallback). A worker that dies leaves its trials RUNNING; each
live trial refreshes a ``heartbeat`` user attr per chunk, and trials silent for ``STALE_AFTER_S``
are marked FAIL by the next worker that starts a batch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optuna
from optuna.trial import TrialState

from tbjax.backtest import CORE_BASELINE_KEYS, backtest, finite_or_zero, regime_objective
from tbjax.checkpoint import RunCheckpoints
from tbjax.config import Config, dump_config
from tbjax.data.market import ROLE_TEST, ROLE_TRAIN, ROLE_VAL
from tbjax.env import market as market_env
from tbjax.errors import InputError
from tbjax.experiment import (REGIME_MARKETS, Experiment, env_params_from_config, hparams_from_config,
                              spec_from_config, trainer_for)
from tbjax.metrics import json_safe
from tbjax.search_space import SearchSpace
from tbjax.trainer import NonFiniteUpdateError, Trainer, raise_if_nonfinite

OBJECTIVE_PRUNE_STARTUP = 3
STALE_AFTER_S = 1800.0
HEARTBEAT_EVERY_S = 30.0


def stack_trees(trees: list) -> Any:
    """Pytrees with one structure → one pytree with a leading trial axis."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)


def take(tree: Any, i: int) -> Any:
    """Member ``i`` of a pytree with a leading trial axis."""
    return jax.tree_util.tree_map(lambda x: x[i], tree)


@dataclass
class Program:
    """The compiled functions of one static signature (B = 1: the trainer's own)."""

    trainer: Trainer
    init: Callable
    chunk: Callable
    batch: int


def _batched_program(trainer: Trainer, batch: int) -> Program:
    def init(keys, hps, data):
        return jax.vmap(trainer.init, in_axes=(0, 0, None))(keys, hps, data)

    def chunk(carry, hps, alive, data):
        new, metrics = jax.vmap(trainer.train_chunk, in_axes=(0, 0, None))(carry, hps, data)

        def keep(n, o):
            return jnp.where(alive.reshape(alive.shape + (1,) * (n.ndim - 1)), n, o)

        return jax.tree_util.tree_map(keep, new, carry), metrics

    return Program(trainer, jax.jit(init), jax.jit(chunk, donate_argnums=0), batch)


@dataclass
class Member:
    """One trial inside a group: its config, HParams and what has been learned about it."""

    trial: optuna.trial.Trial
    cfg: Config
    hparams: Any
    alive: bool = True
    n_evals: int = 0
    best_objective: float = -math.inf
    best_update: int = 0
    best_carry: Any = None  # host copy of the carry at the best objective
    objective_series: list = field(default_factory=list)
    lr_applied: list = field(default_factory=list)
    pad: bool = False


class TrialRunner:
    """Runs Optuna trials on one Experiment; ``run_dir/trials/<number>/`` holds each trial's files."""

    def __init__(self, base_cfg: Config, exp: Experiment, space: SearchSpace, run_dir: str | Path,
                 quiet: bool = True):
        self.base_cfg, self.exp, self.space = base_cfg, exp, space
        self.run_dir = Path(run_dir)
        self.quiet = quiet
        self.programs: dict[tuple, Program] = {}
        self.trainers: dict[Any, Trainer] = {}
        self._last_heartbeat: dict[int, float] = {}

    # ------------------------------------------------------------------ programs
    def signature(self, cfg: Config, hparams) -> tuple:
        spec = spec_from_config(cfg, len(self.exp.symbols))
        return spec, jax.tree_util.tree_structure(hparams)

    def program(self, signature: tuple, batch: int) -> Program:
        spec = signature[0]
        if signature not in self.trainers:
            self.trainers[signature] = trainer_for(spec)  # shared with training runs in this process
        trainer = self.trainers[signature]
        key = (signature, batch)
        if key not in self.programs:
            self.programs[key] = (Program(trainer, trainer.init, trainer.train_chunk, 1) if batch == 1
                                  else _batched_program(trainer, batch))
        return self.programs[key]

    def compile_count(self) -> int:
        """Compiled train_chunk programs so far (every signature and batch size): the jit caches' sizes.

        (Trace counters would miss the batched program: vmap re-uses the inner jit's jaxpr.)
        """
        return sum(p.chunk._cache_size() for p in self.programs.values())

    # ------------------------------------------------------------------ trial setup
    def plan(self, trial) -> Member | None:
        """Suggest values, build the trial's config; an infeasible combination fails the trial."""
        values = self.space.suggest(trial)
        try:
            cfg = self.space.apply(self.base_cfg, values)
            env_params = env_params_from_config(cfg, ROLE_TRAIN)
            market_env.check_data(env_params, self.exp.market)
            hparams = hparams_from_config(cfg, env_params)
        except InputError as exc:
            trial.set_user_attr("fail_reason", f"sampled values break a config rule: {exc}")
            trial.study.tell(trial, state=TrialState.FAIL)
            return None
        return Member(trial, cfg, hparams)

    # ------------------------------------------------------------------ evaluation
    def _backtest(self, trainer, carry, cfg, market, role, time_ms=None):
        return backtest(trainer.policy_apply, carry.params, carry.obs_stats, market,
                        env_params_from_config(cfg, role), role, self.exp.bars_per_year,
                        time_ms=time_ms, deterministic=cfg.eval.deterministic)[0]

    def objective(self, trainer, carry, cfg, val_eval: dict) -> float:
        """Regime objective from the val backtest plus the synthetic regime markets.

        The same definition as ``tbjax.experiment.evaluate_with_objective`` (training's best
        checkpoint); split here because the val backtest runs at every evaluation (pruner report)
        and the regime markets only every ``hpo.objective_every`` evaluations.
        """
        if self.exp.regimes is None:
            return regime_objective(val_eval["pooled"]["sortino"], 0.0, 0.0, cfg.eval.w_val, 0.0, 0.0)
        res = self._backtest(trainer, carry, cfg, self.exp.regimes, ROLE_VAL)
        sortino = {k: res["per_symbol"][name]["sortino"] for k, name in REGIME_MARKETS.items()}
        e = cfg.eval
        return regime_objective(val_eval["pooled"]["sortino"], sortino.get("choppy", 0.0),
                                sortino.get("trend", 0.0), e.w_val, e.w_choppy, e.w_trend)

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
    def _heartbeat(self, member: Member, force: bool = False) -> None:
        now = time.time()
        number = member.trial.number
        if force or now - self._last_heartbeat.get(number, 0.0) >= HEARTBEAT_EVERY_S:
            member.trial.set_user_attr("heartbeat", now)
            self._last_heartbeat[number] = now

    def _finish(self, member: Member, trainer: Trainer, state: TrialState, reason: str | None = None) -> None:
        """Write the trial's directory and attrs, then tell Optuna (PRUNED or COMPLETE)."""
        trial, cfg = member.trial, member.cfg
        member.alive = False
        trial.set_user_attr("lr_applied", member.lr_applied)
        trial.set_user_attr("objective_series", json_safe(member.objective_series))
        if reason:
            trial.set_user_attr("pruned_reason", reason)
        if member.best_carry is not None:
            carry = member.best_carry
            val = self._backtest(trainer, carry, cfg, self.exp.market, ROLE_VAL)
            test = self._backtest(trainer, carry, cfg, self.exp.market, ROLE_TEST)
            trial.set_user_attr("val_metrics", json_safe({k: val["pooled"][k] for k in CORE_BASELINE_KEYS}))
            trial.set_user_attr("test_metrics", json_safe({k: test["pooled"][k] for k in CORE_BASELINE_KEYS}))
            trial.set_user_attr("best_update", member.best_update)
            trial_dir = self.run_dir / "trials" / str(trial.number)
            trial_dir.mkdir(parents=True, exist_ok=True)
            (trial_dir / "config.yaml").write_text(dump_config(cfg))
            self.exp.pipeline.save(trial_dir / "feature_pipeline.json")
            ckpt = RunCheckpoints(trial_dir)
            try:
                ckpt.save_best(member.best_update, carry, {
                    "update": member.best_update, "env_steps": member.best_update * cfg.batch_size,
                    "objective": member.best_objective, "trial": trial.number})
            finally:
                ckpt.close()
            trial.set_user_attr("run_dir", str(trial_dir))
        study = trial.study
        if state == TrialState.COMPLETE:
            study.tell(trial, member.best_objective)
        else:
            study.tell(trial, state=TrialState.PRUNED)

    # ------------------------------------------------------------------ one group
    def run_group(self, members: list[Member], batch: int) -> None:
        """Train ``members`` (one static signature, at most ``batch``) to the end or until pruned."""
        cfg = members[0].cfg
        signature = self.signature(cfg, members[0].hparams)
        program = self.program(signature, batch)
        trainer = program.trainer
        market = self.exp.market
        key = jax.random.PRNGKey(cfg.train.seed)  # common random numbers: every trial sees one stream
        upc = cfg.train.updates_per_chunk
        n_chunks = cfg.n_updates // upc
        eval_chunks = max(1, math.ceil(cfg.train.eval_every / upc))
        if batch == 1:
            (member,) = members
            carry = program.init(key, member.hparams, market)
            hps = member.hparams
        else:
            padded = members + [Member(members[0].trial, cfg, members[0].hparams, alive=False, pad=True)
                                for _ in range(batch - len(members))]
            members = padded
            hps = stack_trees([m.hparams for m in members])
            carry = program.init(jnp.stack([key] * batch), hps, market)
        for m in members:
            if not m.pad:
                self._heartbeat(m, force=True)
        for c in range(n_chunks):
            live = [m for m in members if m.alive]
            if not live:
                break
            if batch == 1:
                carry, metrics = program.chunk(carry, hps, market)
            else:
                alive = jnp.asarray([m.alive for m in members])
                carry, metrics = program.chunk(carry, hps, alive, market)
            metrics = jax.device_get(metrics)
            update = (c + 1) * upc
            is_last = c == n_chunks - 1
            evaluate = (c + 1) % eval_chunks == 0 or is_last
            for i, m in enumerate(members):
                if not m.alive:
                    continue
                m_metrics = metrics if batch == 1 else take(metrics, i)
                m.lr_applied.append([update, float(np.asarray(m_metrics["lr"]).reshape(-1)[-1])])
                self._heartbeat(m)
                try:
                    raise_if_nonfinite(m_metrics, update - upc)
                except NonFiniteUpdateError as exc:
                    self._finish(m, trainer, TrialState.PRUNED, f"non-finite update: {exc}")
                    continue
                if evaluate:
                    self._evaluate(m, trainer, carry if batch == 1 else take(carry, i), update, is_last)
            if is_last:
                for m in members:
                    if m.alive:
                        self._finish(m, trainer, TrialState.COMPLETE)

    def _evaluate(self, m: Member, trainer, carry, update: int, is_last: bool) -> None:
        val = self._backtest(trainer, carry, m.cfg, self.exp.market, ROLE_VAL)
        m.trial.report(finite_or_zero(val["pooled"]["sortino"]), step=update)
        m.n_evals += 1
        reason = None
        if m.n_evals % m.cfg.hpo.objective_every == 0 or is_last:
            value = self.objective(trainer, carry, m.cfg, val)
            m.objective_series.append([update, value])
            m.trial.set_user_attr("objective_series", json_safe(m.objective_series))
            if value > m.best_objective:
                m.best_objective, m.best_update = value, update
                # an explicit host COPY: on CPU device_get can return zero-copy views of the device
                # buffers, and donating those buffers to the next train_chunk then blocks forever
                m.best_carry = jax.tree_util.tree_map(lambda x: np.array(x, copy=True), carry)
            if m.cfg.hpo.pruner != "none" and not is_last:
                reason = self._objective_prunes(m.trial.study, update, value)
        if not is_last and reason is None and m.trial.should_prune():
            reason = f"pruner ({m.cfg.hpo.pruner}) at update {update}: val Sortino below its rung"
        if reason is not None:
            self._finish(m, trainer, TrialState.PRUNED, reason)

    # ------------------------------------------------------------------ the loop
    def fail_stale(self, study) -> None:
        now = time.time()
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number in self._last_heartbeat:
                continue
            beat = t.user_attrs.get("heartbeat")
            start = t.datetime_start.timestamp() if t.datetime_start else now
            if now - (beat if beat is not None else start) > STALE_AFTER_S:
                study._storage.set_trial_user_attr(t._trial_id, "fail_reason",
                                                   f"worker stopped: no heartbeat for {STALE_AFTER_S:.0f} s")
                study.tell(t.number, state=TrialState.FAIL)

    def optimize(self, study, n_trials: int, batch: int = 1, timeout: float | None = None,
                 on_trial_done: Callable[[], None] | None = None) -> int:
        """Ask and run trials until the study holds ``n_trials`` (any state) or ``timeout`` passes.

        Returns the number of trials this call started.
        """
        t0 = time.time()
        started = 0
        while timeout is None or time.time() - t0 < timeout:
            self.fail_stale(study)
            started_states = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
            remaining = n_trials - len(study.get_trials(deepcopy=False, states=started_states))
            if remaining <= 0:
                break
            trials = [study.ask() for _ in range(min(batch, remaining))]
            started += len(trials)
            members = [m for m in (self.plan(t) for t in trials) if m is not None]
            groups: dict[tuple, list[Member]] = {}
            for m in members:
                groups.setdefault(self.signature(m.cfg, m.hparams), []).append(m)
            for group in groups.values():
                try:
                    self.run_group(group, batch)
                except BaseException as exc:  # leave no RUNNING trial behind, then stop
                    for m in group:
                        if m.alive and not m.pad:
                            m.trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:500])
                            study.tell(m.trial, state=TrialState.FAIL)
                    raise
            if on_trial_done is not None:
                on_trial_done()
        return started
