"""Walk-forward: K folds (tbjax.walkforward.folds) trained as ONE vmapped program, or one by one.

The market's arrays (prices, raw features, ...) are built ONCE and shared by every fold; a fold
is a view of them (:func:`tbjax.data.market.fold_view`) with its own role ranges and the feature
scaling of a FeaturePipeline fit on THAT fold's train rows only, applied by the env to each
observation window. Only those small leaves carry the fold axis
(:func:`tbjax.data.market.stack_folds`), so ``jit(vmap(init / train_chunk))`` trains the folds
together (one compile for K folds) on one copy of the market, through
:func:`tbjax.run.chunks.run_chunks`.
Each fold keeps its best carry (in memory, the member book :mod:`tbjax.run.member_book`) by its
VAL regime objective, as training does
(``objective_of`` of the val pooled Sortino and the CHOPPY_FLAT / STRONG_TREND Sortinos, the regime
markets scaled with THAT fold's pipeline); with ``eval.w_choppy = eval.w_trend = 0`` no regime
market is built and the choice is by val Sortino alone. The stitched out-of-sample series concatenates every fold's test segment traded by
what that fold deploys: its best policy when the fold's VAL shows an edge over the baseline
(:mod:`tbjax.evaluation.deployment`), else the baseline (flat or buy-and-hold), so a fold without
evidence does no harm. Its turnover is what the env charged on each of those bars (re-balancing a
position the price drift moved included), as in every other evaluation.

``walkforward.seeds`` = S > 1 (null: ``train.population``, 8 by default) trains S learners per fold (seeds ``train.seed`` .. ``+ S - 1``; member
``k * S + s`` is fold k, seed s, and trains exactly as fold k of a walk-forward with ``train.seed + s``)
in the same one program, and each fold deploys the ensemble of ITS seeds chosen on val as a
population run chooses (:func:`tbjax.run.population.select_members`, ``train.ensemble_top_k``):
what ``tbjax.train`` deploys with ``train.population``, measured out of sample. The deployment test
then counts every val evaluation of the fold's seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np

from tbjax.config import Config, lone_learner, with_population
from tbjax.data.bars import market_from_tables
from tbjax.data.market import fold_view, stack_folds
from tbjax.data.pipeline import FeaturePipeline
from tbjax.data.splits import ROLE_TEST, ROLE_VAL
from tbjax.errors import InputError
from tbjax.evaluation.backtest import split_walk
from tbjax.evaluation.deployment import baseline_name, baseline_policy, decide
from tbjax.evaluation.metrics import infer_bars_per_year, pooled_series, risk_metrics, union_mean
from tbjax.evaluation.significance import is_it_real
from tbjax.learner.population import population_program, stack_trees
from tbjax.data.processed import load_processed
from tbjax.evaluation.scoring import backtest_as_configured, bar_times, objective_of, regime_sortinos
from tbjax.run.assembly import assemble
from tbjax.run.chunks import ChunkHooks, ChunkSchedule, run_chunks
from tbjax.run.experiment import regime_market
from tbjax.run.member_book import MemberBook
from tbjax.run.population import SeedGroups, ensemble_policy, member_hparams, select_members
from tbjax.walkforward.folds import Fold, bars_per_day, check_ranges, plan_folds, symbol_ranges, union_times


@dataclass
class FoldData:
    fold: Fold
    pipeline: FeaturePipeline
    market: object
    ranges: dict[str, list[tuple[int, int]]]
    regimes: object = None  # CHOPPY_FLAT / STRONG_TREND through this fold's pipeline (None: not used)


@dataclass
class WalkForward(SeedGroups):
    """Everything the drivers need; built on the host before any compile."""

    cfg: Config
    tables: dict
    folds: list[FoldData]
    bars_per_year: float
    trainer: object = None
    env_params: object = None
    hparams: object = None
    walk_steps: int = 0  # one scan length for every fold's val/test walk: ONE compiled walk for K folds
    seeds: int = 1  # learners per fold (walkforward.seeds): member m is fold m // seeds, seed m % seeds
    book: MemberBook | None = None  # every member's best evaluation and patience, from training
    diverged: dict = field(default_factory=dict)  # member -> the NaN guard's message

    @property
    def n_groups(self) -> int:
        return len(self.folds)

    @property
    def first_seed(self) -> int:
        return self.cfg.train.seed

    def fold_of(self, member: int) -> int:
        return self.group_of(member)

    def name(self, member: int) -> str:
        """How logs name a member: "fold k", or "fold k seed s" with several seeds per fold."""
        k = self.fold_of(member)
        return f"fold {k}" if self.seeds == 1 else f"fold {k} seed {self.seed_of(member)}"

    @property
    def best(self) -> list:
        """Per member: (val objective, update, host carry, val Sortino), None before a first evaluation."""
        return [] if self.book is None else [self.book.best(m) for m in range(self.book.n_members)]

    def start_training(self) -> None:
        """A fresh book (a member's first evaluation is always kept: every fold deploys a carry)."""
        self.book = MemberBook(self.n_members, self.cfg.train.patience, keep_first=True,
                               baseline=baseline_name(self.cfg))
        self.diverged = {}


def uses_regimes(cfg: Config) -> bool:
    """The regime markets matter to the objective only with a non-zero weight on one of them."""
    return bool(cfg.eval.w_choppy or cfg.eval.w_trend)


def build_folds(cfg: Config, loaded: tuple | None = None) -> WalkForward:
    """Load the processed data (or take ``loaded`` = (tables, columns)), plan the folds, fit one
    pipeline per fold on its train rows; build the market (and the regime markets) once and give
    each fold a view with its ranges and its pipeline's scaling."""
    tables, columns = loaded if loaded is not None else load_processed(cfg)[:2]
    union = union_times(tables)
    timeframe_ms = int(np.median(np.diff(union))) if len(union) > 1 else 3_600_000
    plan = plan_folds(cfg, len(union), bars_per_day(union))
    out, shared, shared_regimes = [], None, None
    for fold in plan:
        ranges = {s: symbol_ranges(fold, union, t["open_time"]) for s, t in tables.items()}
        for s, r in ranges.items():
            check_ranges(fold, s, r, cfg.env.window_size)
        masks = []
        for s, t in tables.items():
            m = np.zeros(len(t["open_time"]), bool)
            m[ranges[s][0][0]:ranges[s][0][1]] = True
            masks.append(m)
        pipe = FeaturePipeline(columns, std_floor=cfg.features.std_floor, clip=cfg.features.clip)
        pipe.fit(list(tables.values()), masks)
        if shared is None:  # the market's arrays, once; every fold is a view with its own small leaves
            shared = market_from_tables(pipe, tables, ranges, columns)
            shared_regimes = regime_market(cfg, pipe, timeframe_ms, columns) if uses_regimes(cfg) else None
        market = fold_view(shared, pipe.scaling(), [ranges[s] for s in shared.symbols])
        regimes = None if shared_regimes is None else fold_view(shared_regimes, pipe.scaling())
        out.append(FoldData(fold, pipe, market, ranges, regimes))
    bpy = cfg.data.bars_per_year or infer_bars_per_year(union)
    seeds, top_k = cfg.walkforward.seeds or cfg.train.population, cfg.train.ensemble_top_k
    if seeds > 1 and top_k is not None and top_k > seeds:
        raise InputError(f"train.ensemble_top_k = {top_k} exceeds walkforward.seeds = {seeds} (each fold's ensemble "
                         "is chosen among its own seeds): lower train.ensemble_top_k or raise walkforward.seeds")
    # each fold is one learner, or a population of walkforward.seeds (what its folder's config says)
    fold_cfg = lone_learner(cfg) if seeds == 1 else with_population(cfg, seeds)
    wf = WalkForward(fold_cfg, tables, out, float(bpy), seeds=seeds)
    built = assemble(cfg, len(tables))  # tbjax.run.assembly: the trainer from the shared cache
    wf.env_params = built.env_params
    from tbjax.env import market as market_env
    from tbjax.learner.mirror import check_mirror_features
    for fd in out:
        market_env.check_data(wf.env_params, fd.market)
        check_mirror_features(cfg.ppo.mirror, fd.market.feature_names)
    wf.walk_steps = max(int(split_walk(fd.market, r, cfg.env.window_size)[1].max())
                        for fd in out for r in (ROLE_VAL, ROLE_TEST))
    wf.trainer, wf.hparams = built.trainer, built.hparams
    return wf


def evaluate_fold(wf: WalkForward, k: int, params, obs_stats, role: int, policy_apply=None, position0=None,
                  significance: bool = True):
    """Backtest ``role`` of fold ``k``'s view of the market with frozen statistics, as ``evaluate_split``
    does; every fold walks ``wf.walk_steps`` bars, so all folds share one compiled walk.
    ``policy_apply``: another acting function (the baseline's) instead of the trainer's;
    ``position0``: the positions held before the first decision (default flat); ``significance=False``
    skips the "is it real?" bootstrap for a caller that reads only the series."""
    return backtest_as_configured(wf.cfg, wf.folds[k].market, wf.bars_per_year,
                                  policy_apply or wf.trainer.policy_apply, params,
                                  obs_stats, wf.env_params, role, time_ms=bar_times(wf.tables),
                                  n_steps=wf.walk_steps, position0=position0, significance=significance)


def fold_objective(wf: WalkForward, k: int, params, obs_stats, val_sortino: float,
                   policy_apply=None) -> tuple[float, dict]:
    """Fold ``k``'s val objective and its regime Sortinos ({} when the regime weights are 0)."""
    fd = wf.folds[k]
    regime = {}
    if fd.regimes is not None:
        regime = regime_sortinos(wf.cfg, fd.regimes, wf.bars_per_year, policy_apply or wf.trainer.policy_apply,
                                 params, obs_stats, wf.env_params)
    return objective_of(wf.cfg, val_sortino, regime), regime


class BestByVal(ChunkHooks):
    """Per member: evaluate its fold's val and offer it to the book (``wf.book``), which keeps the
    carry with the best val objective and stops a member by ``train.patience``. Members ``offset`` ..
    ``offset + n_members - 1`` are the ones this program trains.

    A member whose NaN guard fires stops being evaluated (its best carry so far stays); the other
    members of the program go on, since its members do not interact.
    """

    def __init__(self, wf: WalkForward, offset: int = 0, log=None, n_members: int = 1):
        self.wf, self.offset, self.log, self.n_members = wf, offset, log, n_members

    def alive(self):
        return [m not in self.wf.diverged and not self.wf.book.patience.stopped(m)
                for m in range(self.offset, self.offset + self.n_members)]

    def diverged(self, i, error, chunk):
        self.wf.diverged[i + self.offset] = str(error)
        if self.log:
            self.log(f"{self.wf.name(i + self.offset)} diverged at update {chunk.update}: {error}")

    def evaluate(self, i, carry, chunk):
        m = i + self.offset
        k, who = self.wf.fold_of(m), self.wf.name(m)
        res, _ = evaluate_fold(self.wf, k, carry.params, carry.obs_stats, ROLE_VAL)
        sortino = float(res["pooled"]["sortino"])
        score, _ = fold_objective(self.wf, k, carry.params, carry.obs_stats, sortino)
        score = score if np.isfinite(score) else -np.inf
        if self.log:
            self.log(f"{who} update {chunk.update}: val sortino {sortino:.3f}, objective {score:.3f}")
        if self.wf.book.offer(m, score, chunk.update, carry, sortino, val_eval=res).stopped and self.log:
            self.log(f"{who} stops at update {chunk.update}: no new best val objective in "
                     f"{self.wf.book.patience.patience} evaluations (train.patience)")


def member_inputs(wf: WalkForward, members: list[int]) -> tuple[list, list]:
    """(keys, HParams) of ``members``: fold k's seed s takes the key of fold k in a walk-forward run
    with ``train.seed + s`` and the HParams a population gives its member s (``train.population_jitter``)."""
    per_seed = member_hparams(wf.cfg, wf.hparams)
    return ([jax.random.fold_in(jax.random.PRNGKey(wf.seed_of(m)), wf.fold_of(m)) for m in members],
            [per_seed[m % wf.seeds] for m in members])


def fold_program(wf: WalkForward):
    """(every member's population program, their data as it takes it): shared arrays once, per-fold
    leaves stacked (one member: its own market, as the lone learner's program takes it)."""
    markets = [wf.folds[wf.fold_of(m)].market for m in range(wf.n_members)]
    datas, axes = stack_folds(markets)
    program = population_program(wf.trainer, len(markets), data_axis=axes)
    return program, program.members(markets, stacked=datas)


def train_vmapped(wf: WalkForward, log=None) -> None:
    wf.start_training()
    program, datas = fold_program(wf)
    keys, hps = member_inputs(wf, list(range(wf.n_members)))
    hps = program.members(hps)
    carry = program.start(program.members(keys), hps, datas)
    run_chunks(lambda c, alive: program.advance(c, hps, alive, datas), carry, ChunkSchedule.of(wf.cfg),
               BestByVal(wf, 0, log, wf.n_members), n_members=program.stacked_members)


def train_sequential(wf: WalkForward, log=None) -> None:
    """Fold by fold, each fold's seeds as one program (one seed: the lone trainer's own)."""
    wf.start_training()
    program = population_program(wf.trainer, wf.seeds)
    for k, fd in enumerate(wf.folds):
        keys, hps = member_inputs(wf, wf.members_of(k))
        hps = program.members(hps)
        carry = program.start(program.members(keys), hps, fd.market)
        run_chunks(lambda c, alive, m=fd.market, h=hps: program.advance(c, h, alive, m), carry,
                   ChunkSchedule.of(wf.cfg), BestByVal(wf, k * wf.seeds, log, wf.seeds),
                   n_members=program.stacked_members)


@dataclass
class FoldPolicy:
    """What fold ``k`` offers for deployment: its lone learner's best carry, or the ensemble of the
    seeds chosen on val (``chosen``: seed indices within the fold, best val objective first)."""

    apply: object
    params: object
    obs_stats: object
    carry: object  # the lone best carry, or every seed's best carry stacked (the fold folder's checkpoint)
    chosen: list[int]
    update: int  # the best update of the best chosen seed


def fold_policy(wf: WalkForward, k: int) -> FoldPolicy:
    """Fold ``k``'s policy from the book, chosen on val alone (module docstring)."""
    members = wf.members_of(k)
    best = [wf.book.best(m) for m in members]
    kept = [i for i, b in enumerate(best) if b is not None]
    if not kept:
        raise InputError(f"walkforward fold {k} diverged before its first evaluation "
                         f"({wf.diverged.get(members[0], 'no evaluation ran')}); lower ppo.learning_rate or "
                         "evaluate earlier (train.eval_every)")
    if wf.seeds == 1:  # the lone learner's own carry and acting function (its folder's lone format)
        carry = best[0][2]
        return FoldPolicy(wf.trainer.policy_apply, carry.params, carry.obs_stats, carry, [0], best[0][1])
    chosen = select_members([wf.book.objective[m] for m in members], wf.cfg.train.ensemble_top_k) or kept
    stacked = stack_trees([best[i][2] if best[i] is not None else best[kept[0]][2] for i in range(wf.seeds)])
    apply, params, stats = ensemble_policy(wf.cfg, wf.trainer, stacked, chosen)
    return FoldPolicy(apply, params, stats, stacked, chosen, best[chosen[0]][1])


SUMMARY_KEYS = ("sortino", "sharpe", "total_return", "max_drawdown", "turnover", "n_bars")


def _summary(res: dict) -> dict:
    """Pooled core metrics, the same per symbol under "per_symbol", and buy-and-hold's pooled ones."""
    def pick(m):
        return {k: v for k, v in m.items() if k in SUMMARY_KEYS}
    return {**pick(res["pooled"]), "per_symbol": {s: pick(m) for s, m in res["per_symbol"].items()},
            "buy_and_hold": pick(res["baselines"]["buy_and_hold"])}


def _pooled_parts(series: dict) -> tuple:
    """A fold's backtest series pooled over symbols by time: ((time_ms, returns, position), buy-and-hold
    returns, traded fraction). The traded fraction is what the env charged on each bar, rebalancing a
    constant target back from the price drift included, pooled as :func:`pooled_metrics` pools it."""
    strat = {s: (v["time_ms"], v["returns"], v["position"]) for s, v in series.items()}
    bh = {s: (v["time_ms"], np.diff(np.concatenate([[1.0], v["buy_and_hold_equity"]])) /
              np.concatenate([[1.0], v["buy_and_hold_equity"]])[:-1], np.ones(len(v["returns"])))
          for s, v in series.items()}
    pooled = pooled_series(strat)
    traded = union_mean(pooled[0], [v["time_ms"] for v in series.values()], [v["turnover"] for v in series.values()])
    return pooled, pooled_series(bh)[1], traded


def carried_positions(symbols, series: dict, held: np.ndarray) -> np.ndarray:
    """The positions a walk of the next fold's test starts from: each symbol's last position in this
    fold's deployed test ``series``, or what it ``held`` before when this fold walked none of its bars."""
    return np.array([series[s]["last_position"] if len(series[s]["returns"]) else h for s, h in zip(symbols, held)],
                    np.float32)


def fold_results(wf: WalkForward) -> tuple[list[dict], dict]:
    """Per-fold val/test metrics of the best carry and the stitched out-of-sample series.

    The stitched series is ONE account rolled from each fold's deployed policy to the next: fold k's
    test bars are walked from the positions fold k-1's walk ended with (fold 0 from flat), so a fold
    that keeps the previous fold's position pays nothing to "re-enter" it, and folds that all deploy
    buy-and-hold stitch to buy-and-hold with one entry. Each fold's own val and test figures (its
    row) are walked from flat, as ``python -m tbjax.evaluate`` on its folder walks them.
    """
    rows, parts = [], []
    baseline, hold = baseline_policy(wf.cfg)
    symbols = wf.folds[0].market.symbols
    held = np.zeros(len(symbols), np.float32)
    for k, fd in enumerate(wf.folds):
        pol = fold_policy(wf, k)
        val, val_series = evaluate_fold(wf, k, pol.params, pol.obs_stats, ROLE_VAL, policy_apply=pol.apply)
        score, regime = fold_objective(wf, k, pol.params, pol.obs_stats, val["pooled"]["sortino"], pol.apply)
        # on this fold's VAL bars only, deflated for every val evaluation of the fold's seeds
        looks = [x for m in wf.members_of(k) for x in wf.book.looks[m]]
        decision = decide(val, baseline, wf.cfg.eval.edge_confidence, looks, wf.cfg.eval.edge_deflation)
        agent_test, series = evaluate_fold(wf, k, pol.params, pol.obs_stats, ROLE_TEST, policy_apply=pol.apply)
        test, agent_val, deployed = agent_test, val, (pol.params, pol.obs_stats, pol.apply)
        if decision["policy"] == "baseline":  # no edge on val: the fold trades its baseline on test
            val, val_series = evaluate_fold(wf, k, None, None, ROLE_VAL, policy_apply=hold)
            test, series = evaluate_fold(wf, k, None, None, ROLE_TEST, policy_apply=hold)
            deployed = (None, None, hold)
        if held.any():  # the account arrives holding something: walk the fold's test again from there
            series = evaluate_fold(wf, k, deployed[0], deployed[1], ROLE_TEST, policy_apply=deployed[2],
                                   position0=held, significance=False)[1]
        held = carried_positions(symbols, series, held)
        parts.append(_pooled_parts(series))
        val_times = _pooled_parts(val_series)[0][0]
        rows.append({"fold": k, "best_update": pol.update, "val_objective": score,
                     "val_sortino": val["pooled"]["sortino"], "regime_sortino": regime, "val": _summary(val),
                     "test": _summary(test), "test_start_ms": int(parts[-1][0][0][0]),
                     "test_end_ms": int(parts[-1][0][0][-1]), "val_start_ms": int(val_times[0]),
                     "val_end_ms": int(val_times[-1]), "pipeline_mean": fd.pipeline.mean.tolist(),
                     "pipeline_std": fd.pipeline.std.tolist(),
                     "diverged": next((wf.diverged[m] for m in wf.members_of(k) if m in wf.diverged), None),
                     "deployed": decision["policy"], "deployment": decision,
                     "agent": {"val": _summary(agent_val), "test": _summary(agent_test)}})
        if wf.seeds > 1:
            rows[-1]["seeds"] = [{"seed": wf.seed_of(m), "val_objective": wf.book.objective[m],
                                  "best_update": wf.book.update[m], "in_ensemble": s in pol.chosen,
                                  "diverged": wf.diverged.get(m)} for s, m in enumerate(wf.members_of(k))]
    times, rets, pos = (np.concatenate([p[0][i] for p in parts]) for i in range(3))
    bh = np.concatenate([p[1] for p in parts])
    traded = np.concatenate([p[2] for p in parts])
    bpy = wf.bars_per_year
    stitched = {"time_ms": times, "returns": rets, "position": pos, "turnover": traded, "buy_and_hold_returns": bh,
                "metrics": risk_metrics(rets, pos, bpy, traded=traded),  # turnover: what the env charged
                "buy_and_hold": risk_metrics(bh, np.ones_like(bh), bpy),
                "flat": risk_metrics(np.zeros_like(rets), np.zeros_like(rets), bpy),
                "is_it_real": is_it_real(rets, bpy, bh),
                "deployed": [r["deployed"] for r in rows]}  # per fold: "agent" or "baseline"
    return rows, stitched


def run_walkforward(cfg: Config, run_dir: Path, sequential: bool = False, log=None) -> dict:
    from tbjax.walkforward.outputs import save_fold_runs, write_outputs

    wf = build_folds(cfg)
    (train_sequential if sequential else train_vmapped)(wf, log)
    rows, stitched = fold_results(wf)
    save_fold_runs(Path(run_dir), wf, rows)
    return write_outputs(Path(run_dir), rows, stitched, "sequential" if sequential else "vmapped")
