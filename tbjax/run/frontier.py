"""A return-tail-risk frontier (``python -m tbjax.frontier``): a grid of risk settings as ONE population.

The grid is the cross product of ``frontier.cvar_weight`` × ``frontier.cvar_alpha`` (null: the
config's ``ppo.cvar_alpha``) × ``frontier.turnover_penalty`` (null: ``env.turnover_penalty``), in
that order (the last list varies fastest). Every grid point trains ``frontier.seeds`` members, so
the run is a population of points × seeds members trained as one compiled program
(:class:`FrontierSession`, a :class:`tbjax.run.session.TrainingSession` whose members' HParams
and keys come from the grid): the three settings are traced HParams leaves (the env's params live
in ``hparams.env``), so the whole grid compiles once.

Seeding: member ``p * seeds + s`` is point p's seed s. Its key is ``PRNGKey(train.seed + s)`` and
its HParams are member s of :func:`tbjax.run.population.population_hparams` of point p's config
with ``train.population = frontier.seeds``, so point p's members are EXACTLY the population a
lone ``python -m tbjax.train`` with point p's settings and ``train.population = frontier.seeds``
trains (same settings and seed ⇒ same member; with ``train.population_jitter`` 0, member s is the
lone run with ``train.seed + s``). Two points differ only in their settings, never in their seeds
(common random numbers across the frontier).

A frontier run stops and resumes as a training run does (``--max-chunks``, SIGINT/SIGTERM, a
failed write; :func:`frontier_job` with a resume plan continues from the "latest" checkpoint with
the run's own config.yaml, which rebuilds the same grid), and its checkpoints record every
member's seed (``member_seeds``), which the run's evaluation and report show.

After training each point's ensemble is chosen among ITS members exactly as a population chooses
(:func:`tbjax.run.population.select_members` on the members' best val objectives,
``train.ensemble_top_k``) and evaluated on val and test with the shared evaluation.
The outputs (frontier.json, frontier.png, report) and the choice of a point are
:mod:`tbjax.run.frontier_outputs`'s.
"""

from __future__ import annotations

import dataclasses
import itertools
import shlex
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from tbjax.config import Config, validate, with_population
from tbjax.data.market import ROLE_TEST, ROLE_VAL
from tbjax.errors import InputError
from tbjax.learner.population import member_keys
from tbjax.run.assembly import assemble, env_params_from_config
from tbjax.run.population import NO_VAL_EVIDENCE, SeedGroups, ensemble_policy, population_hparams, select_members
from tbjax.run.session import TrainingSession

# (frontier.* list, the config key it sets)
GRID_KEYS = (("cvar_weight", "ppo.cvar_weight"), ("cvar_alpha", "ppo.cvar_alpha"),
             ("turnover_penalty", "env.turnover_penalty"))
POINT_METRICS = ("sortino", "sharpe", "total_return", "cagr", "calmar", "volatility", "var_5", "cvar_5",
                 "max_drawdown", "turnover", "exposure", "n_bars")
INTERVALS = ("sharpe_ci", "sortino_ci", "max_drawdown_ci", "psr")


def with_settings(cfg: Config, settings: dict) -> Config:
    """``cfg`` with ``settings`` {"ppo.cvar_weight": w, ...} written into their sections."""
    sections: dict[str, dict] = {}
    for key, value in settings.items():
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = float(value)
    return dataclasses.replace(cfg, **{s: dataclasses.replace(getattr(cfg, s), **kw) for s, kw in sections.items()})


def describe(settings: dict) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in settings.items())


@dataclass(frozen=True)
class FrontierGrid(SeedGroups):
    """The grid's points (settings and the config of each, ``train.population = seeds``) and how
    they map to the population's members: member ``p * seeds + s`` is point p, seed s."""

    points: tuple[dict, ...]
    configs: tuple[Config, ...]
    seeds: int
    seed: int

    @property
    def n_groups(self) -> int:
        return len(self.points)

    @property
    def first_seed(self) -> int:
        return self.seed

    def keys(self) -> jax.Array:
        """Every member's key: point p's seed s gets ``PRNGKey(train.seed + s)`` (module docstring)."""
        return jnp.concatenate([member_keys(self.seed, self.seeds)] * len(self.points))

    def hparams(self, n_symbols: int):
        """Every member's HParams stacked, point by point (module docstring)."""
        stacks = [population_hparams(c, assemble(c, n_symbols).hparams) for c in self.configs]

        def cat(*xs):
            return np.concatenate(xs) if all(isinstance(x, np.ndarray) for x in xs) else jnp.concatenate(xs)

        return jax.tree_util.tree_map(cat, *stacks)


def frontier_grid(cfg: Config) -> FrontierGrid:
    """The grid of ``cfg.frontier`` (module docstring); each point's config is checked by the config
    rules, a bad point is one InputError naming it."""
    f = cfg.frontier
    lists = {"cvar_weight": f.cvar_weight, "cvar_alpha": f.cvar_alpha or [cfg.ppo.cvar_alpha],
             "turnover_penalty": f.turnover_penalty or [cfg.env.turnover_penalty]}
    top_k = cfg.train.ensemble_top_k
    if top_k is not None and top_k > f.seeds:
        raise InputError(f"train.ensemble_top_k = {top_k} exceeds frontier.seeds = {f.seeds} (each point's "
                         "ensemble is chosen among its own seeds): lower train.ensemble_top_k or raise frontier.seeds")
    points, configs = [], []
    for values in itertools.product(*(lists[name] for name, _ in GRID_KEYS)):
        settings = {key: float(v) for (_, key), v in zip(GRID_KEYS, values)}
        point_cfg = with_population(with_settings(cfg, settings), f.seeds)
        try:
            validate(point_cfg)
        except InputError as exc:
            raise InputError(f"frontier point ({describe(settings)}): {exc}") from None
        points.append(settings)
        configs.append(point_cfg)
    if len(points) * f.seeds < 2:
        raise InputError("the frontier needs at least 2 members (grid points × frontier.seeds): add values to "
                         "frontier.cvar_weight or raise frontier.seeds")
    return FrontierGrid(tuple(points), tuple(configs), f.seeds, cfg.train.seed)


def run_config(cfg: Config, grid: FrontierGrid) -> Config:
    """The config the frontier run trains (and first saves): ``train.population`` = every member."""
    return with_population(cfg, grid.n_members)


class FrontierSession(TrainingSession):
    """A training run whose members are the frontier's: the session's own loop, book and
    checkpoints; only the members' HParams (:meth:`FrontierGrid.hparams`) and keys differ."""

    def __init__(self, cfg: Config, run_dir, grid: FrontierGrid, **kwargs):
        if cfg.train.population != grid.n_members:
            raise ValueError(f"train.population {cfg.train.population} != the grid's {grid.n_members} members")
        super().__init__(cfg, run_dir, **kwargs)
        self.grid = grid
        self.run_hparams = grid.hparams(len(self.exp.symbols))

    def template(self):
        return self.program.start(self.grid.keys(), self.run_hparams, self.exp.market)

    def member_name(self, i: int) -> str:
        p = i // self.grid.seeds
        return f"frontier point {p} ({describe(self.grid.points[p])}) seed {self.grid.seed_of(i)}"

    def _latest_meta(self, save: dict) -> dict:
        """A checkpoint's record, with every member's seed (point p's seed s is ``train.seed + s``)."""
        seeds = [self.grid.seed_of(m) for m in range(self.grid.n_members)]
        return {**super()._latest_meta(save), "member_seeds": seeds, "frontier_points": len(self.grid.points)}


def continue_command(run_dir: Path, quiet: bool) -> str:
    """The command that continues a stopped frontier run: its config.yaml holds everything else."""
    return (f"python -m tbjax.frontier --run-dir {shlex.quote(str(run_dir))} --resume"
            + (" --quiet" if quiet else ""))


def point_members(grid: FrontierGrid, p: int, meta: dict, top_k: int | None) -> tuple[list[int], str]:
    """Point p's ensemble (global member indices, best val objective first) and the rule that chose
    it: :func:`tbjax.run.population.select_members` among the point's own members."""
    members = grid.members_of(p)
    objectives = meta.get("member_objective") or [None] * grid.n_members
    local = select_members([objectives[m] for m in members], top_k)
    if not local:
        return members, NO_VAL_EVIDENCE
    return [members[i] for i in local], ("top_k" if top_k is not None else "beat flat on val")


def _summary(result: dict) -> dict:
    pooled, real = result["pooled"], result.get("is_it_real") or {}
    return {**{k: pooled.get(k) for k in POINT_METRICS}, "objective": result.get("objective"),
            "is_it_real": {k: real.get(k) for k in INTERVALS}}


def evaluate_points(session: FrontierSession, carry, meta: dict) -> tuple[list[dict], dict]:
    """Every point's entry (settings, members, val and test metrics of its ensemble) and the
    baselines' (buy-and-hold, flat) metrics per split; ``carry`` holds every member's best."""
    from tbjax.evaluation.scoring import evaluate_split, evaluate_with_objective

    grid, cfg = session.grid, session.cfg
    objectives = meta.get("member_objective") or [None] * grid.n_members
    updates = meta.get("member_update") or [None] * grid.n_members
    points, baselines = [], {}
    for p, (settings, point_cfg) in enumerate(zip(grid.points, grid.configs)):
        chosen, rule = point_members(grid, p, meta, cfg.train.ensemble_top_k)
        apply, params, stats = ensemble_policy(cfg, session.trainer, carry, chosen)
        env_params = env_params_from_config(point_cfg)  # the backtest sets the role
        entry = {"point": p, "settings": settings, "selected": chosen, "rule": rule,
                 "members": [{"member": m, "seed": grid.seed_of(m), "val_objective": objectives[m],
                              "best_update": updates[m], "selected": m in chosen} for m in grid.members_of(p)]}
        for split, role in (("val", ROLE_VAL), ("test", ROLE_TEST)):  # the objective is val's alone
            result = (evaluate_with_objective(session.exp, apply, params, stats, env_params, role)[1] if split == "val"
                      else evaluate_split(session.exp, apply, params, stats, env_params, role)[0])
            entry[split] = _summary(result)
            if split not in baselines:
                baselines[split] = {name: {k: result["baselines"][name].get(k) for k in POINT_METRICS}
                                    for name in ("buy_and_hold", "flat")}
        points.append(entry)
    return points, baselines


def frontier_job(plan, budgets: dict[str, float], *, command: list[str], options=None,
                 note=lambda text: None) -> dict | None:
    """Train the grid of ``plan.cfg`` as one population in ``plan.run_dir`` (a fresh plan, or a
    resume plan of :func:`tbjax.run.resume.plan_resume` on a stopped frontier run), evaluate every
    point, choose one (``budgets`` {tail metric: largest val loss}) and make it the run's policy;
    returns frontier.json's body, or None when training stopped resumably (``options.max_chunks``,
    a signal; ``options``: :class:`tbjax.run.job.RunOptions`): :func:`continue_command` continues
    it. No point within budget: frontier.json / .png / .md are written, then one InputError naming
    the tightest point."""
    from tbjax.config import dump_config
    from tbjax.run import frontier_outputs as out
    from tbjax.run.interrupts import interrupt_means
    from tbjax.run.job import NOTHING_WRITTEN, RunOptions, final_evaluation, open_session, train_chunks
    from tbjax.run.reevaluate import open_run
    from tbjax.run.resume import Plan, check_fresh_run_dir

    grid = frontier_grid(plan.cfg)
    cfg = run_config(plan.cfg, grid)
    options = options or RunOptions()
    resume_with = continue_command(plan.run_dir, options.quiet)
    if plan.fresh:
        plan = Plan(cfg, dump_config(cfg), plan.run_dir, fresh=True)
    elif plan.cfg.train.population != grid.n_members:
        raise InputError(f"--resume: '{plan.run_dir}' is not a frontier run (train.population = "
                         f"{plan.cfg.train.population}, its frontier grid has {grid.n_members} members): continue "
                         "a training run with python -m tbjax.train --resume")
    with interrupt_means(NOTHING_WRITTEN):
        leftovers = check_fresh_run_dir(plan.run_dir, continue_with=resume_with) if plan.fresh else []
        session, carry = open_session(plan, options, make_session=lambda c, d, **kw: FrontierSession(c, d, grid, **kw))
    if not train_chunks(plan, session, carry, command=command, leftovers=leftovers, options=options, note=note,
                        continue_with=resume_with):
        return None
    best, meta = session.ckpt.restore("best", jax.eval_shape(session.template))  # the structure is enough
    points, baselines = evaluate_points(session, best, meta)
    summary = out.summarize(points, baselines, cfg.frontier.return_metric, cfg.frontier.tail_metric)
    summary["grid"] = {"points": len(grid.points), "seeds": grid.seeds, "members": grid.n_members,
                       "member_of": "point p, seed s -> member p * seeds + s, key PRNGKey(train.seed + s)"}
    try:
        summary["chosen"] = out.choose(summary, budgets)
    except InputError as exc:
        out.write_outputs(plan.run_dir, summary, with_report=False)
        raise InputError(f"{exc}; to choose again without training: python -m tbjax.frontier --run-dir "
                         f"{plan.run_dir} with another budget") from None
    out.install_choice(session, summary)
    final_evaluation(open_run(plan.run_dir), plan.run_dir)  # eval/, deployment.json, report.md as for any run
    out.write_outputs(plan.run_dir, summary, with_report=True)
    return summary


def rechoose(run_dir, budgets: dict[str, float]) -> dict:
    """Choose again on a finished frontier run (its frontier.json), without training: the new point
    becomes the run's policy as in :func:`frontier_job`."""
    import json

    from tbjax.run import frontier_outputs as out
    from tbjax.run.job import final_evaluation
    from tbjax.run.reevaluate import open_run

    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "frontier.json").read_text())
    summary.pop("chosen", None)
    try:
        summary["chosen"] = out.choose(summary, budgets)
    except InputError as exc:
        raise InputError(f"{exc}; the run's policy is unchanged") from None
    out.install_choice(open_run(run_dir), summary)
    final_evaluation(open_run(run_dir), run_dir)
    out.write_outputs(run_dir, summary, with_report=True)
    return summary
