"""Seed populations of one training run (``train.population`` > 1 members) and their ensemble policy.

Why: on real markets the seed-to-seed spread of a PPO agent is often larger than the gap between
learners, so one seed's test score says little. tbjax trains the members as ONE vmapped program
(:func:`tbjax.learner.population.population_program`: member i is exactly a lone run with
``train.seed + i``), each with its own observation and PopArt statistics, and keeps each member's
best carry by ITS val objective (:class:`tbjax.run.member_book.MemberBook`). The run's policy is the
ensemble of the members chosen on val (:func:`select_members`), each acting with its own frozen
statistics (:func:`tbjax.learner.population.ensemble_apply`).

On disk a population run is a training run whose checkpoints hold the stacked carry (members on
the leading axis): "latest" the current carries, "best" every member's best carry, with the
members' val objectives and the chosen members in its meta. ``tbjax.evaluate``,
``tbjax.load_policy`` and the report treat it as one policy and still list every member.

A lone run (``train.population`` 1) builds its HParams, keys and carry through the same code
(:func:`member_hparams`, :func:`initial_carry`: its program takes the lone member's own values,
:meth:`tbjax.learner.population.Program.members`). Its OUTPUTS keep the lone format, and those are
the only places that test the member count, each for that reason: its carry is unstacked
(:func:`tbjax.learner.population.population_program`), its best checkpoint is written when it
improves instead of kept in memory and its meta holds no member book
(:mod:`tbjax.run.session_writes`, :meth:`tbjax.run.member_book.MemberBook.restore`), its evaluation
has no ensemble section (:mod:`tbjax.run.deployed`) and ``load_policy`` reads it as one policy
(:mod:`tbjax.api`). Every lone run, HPO trial and walk-forward fold folder on disk has that format,
which ``tbjax.evaluate`` and ``load_policy`` read, and a lone run's numbers stay what they were.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from tbjax.config import Config
from tbjax.data.market import ROLE_TEST, ROLE_VAL
from tbjax.learner.population import ensemble_apply, member_keys, population_program, stack_trees
from tbjax.run.chunks import take

JITTERED = ("learning_rate", "ent_coef")


class SeedGroups:
    """Groups of seeds on one member axis: member ``g * seeds + s`` is group g (a frontier's point, a
    walk-forward fold), seed ``first_seed + s``. Each group chooses its own ensemble among its seeds.
    A subclass gives ``n_groups``, ``seeds`` and ``first_seed``."""

    n_groups: int
    seeds: int
    first_seed: int

    @property
    def n_members(self) -> int:
        return self.n_groups * self.seeds

    def members_of(self, g: int) -> list[int]:
        return list(range(g * self.seeds, (g + 1) * self.seeds))

    def group_of(self, member: int) -> int:
        return member // self.seeds

    def seed_of(self, member: int) -> int:
        return self.first_seed + member % self.seeds


def member_hparams(cfg: Config, hparams) -> list:
    """Each member's HParams (``train.population`` of them); with ``train.population_jitter``
    = s > 0, member i > 0 scales ``ppo.learning_rate`` and ``ppo.ent_coef`` by exp(s·z), z ~ N(0, 1)
    drawn from ``train.seed`` (member 0 keeps the configured values)."""
    n_members, sigma = cfg.train.population, cfg.train.population_jitter
    rng = np.random.default_rng(cfg.train.seed)
    members = [hparams]
    for _ in range(1, n_members):
        z = rng.standard_normal(len(JITTERED))
        members.append(hparams.replace(**{name: jnp.float32(float(getattr(hparams, name)) * math.exp(sigma * zi))
                                          for name, zi in zip(JITTERED, z)}))
    return members


def population_hparams(cfg: Config, hparams):
    """The members' HParams (:func:`member_hparams`) stacked on the member axis."""
    return stack_trees(member_hparams(cfg, hparams))


def select_members(objectives: list[float], top_k: int | None) -> list[int]:
    """Members of the ensemble, best val objective first; uses VAL objectives only.

    Only members with a finite val objective are candidates: -inf is the book's "never evaluated"
    (a member that diverged before its first evaluation) and NaN / None carry no evidence either,
    so such a member never joins on rank alone. ``top_k`` None: every candidate whose objective
    beats flat's (a flat policy scores 0 on every term of the objective), at least the best
    candidate; k: the k best candidates (fewer when fewer are finite). [] when no member has a
    finite objective: :func:`chosen_members` then says so and uses every member.
    """
    scores = {i: float(o) for i, o in enumerate(objectives) if o is not None and math.isfinite(float(o))}
    order = sorted(scores, key=lambda i: (-scores[i], i))
    if top_k is not None:
        return order[:top_k]
    return [i for i in order if scores[i] > 0.0] or order[:1]


NO_VAL_EVIDENCE = "no member has a finite val objective (no val evidence): every member"


def initial_carry(cfg: Config, trainer, hparams, market):
    """A fresh carry from ``train.seed``: member i from ``train.seed + i`` with its (jittered) HParams,
    stacked (a lone member's own carry: :meth:`tbjax.learner.population.Program.members`). Training,
    evaluation and ``load_policy`` (under ``jax.eval_shape``) all build their template here."""
    n_members = cfg.train.population
    program = population_program(trainer, n_members)
    keys = program.members(list(member_keys(cfg.train.seed, n_members)))
    return program.start(keys, program.members(member_hparams(cfg, hparams)), market)


def chosen_members(cfg: Config, meta: dict) -> list[int]:
    """The ensemble's members recorded in a checkpoint's meta; a checkpoint saved before any
    evaluation, or one where no member has a finite val objective, has no val evidence, so every
    member counts (:func:`selection_rule` names that case in the eval and the report)."""
    if meta.get("selected"):
        return [int(i) for i in meta["selected"]]
    chosen = select_members(meta.get("member_objective") or [], cfg.train.ensemble_top_k)
    return chosen or list(range(cfg.train.population))


def selection_rule(cfg: Config, meta: dict) -> str:
    """How :func:`chosen_members` chose, in words (the eval's ``population.rule``)."""
    if not meta.get("selected") and not select_members(meta.get("member_objective") or [], None):
        return NO_VAL_EVIDENCE
    return "top_k" if cfg.train.ensemble_top_k is not None else "beat flat on val"


def ensemble_policy(cfg: Config, trainer, carry, selected: list[int]):
    """(acting, params, obs_stats) of the ensemble of ``selected`` members of a stacked carry."""
    idx = jnp.asarray(selected, jnp.int32)
    params, stats = jax.tree_util.tree_map(lambda x: x[idx], (carry.params, carry.obs_stats))
    apply = ensemble_apply(trainer.policy_apply, cfg.env.action_mode, cfg.env.position_levels, len(selected))
    return apply, params, stats


MEMBER_KEYS = ("sortino", "sharpe", "total_return", "max_drawdown", "turnover")


def evaluate_population(session, carry, meta: dict, which: str, splits=("val", "test")) -> tuple[dict, dict]:
    """The ensemble's eval dict and series per split (what the agent's evaluation returns for one
    policy), each eval with a "population" entry: every member's metrics on that split, the
    members chosen on val and the rule that chose them."""
    from tbjax.evaluation.scoring import evaluate_split, evaluate_with_objective

    selected = chosen_members(session.cfg, meta)
    apply, params, stats = ensemble_policy(session.cfg, session.trainer, carry, selected)
    n_members = session.cfg.train.population
    objectives = meta.get("member_objective") or [None] * n_members
    updates = meta.get("member_update") or [None] * n_members
    # a frontier's members repeat its seeds point by point (tbjax.run.frontier): its checkpoints say so
    seeds = meta.get("member_seeds") or [session.cfg.train.seed + i for i in range(n_members)]
    evals, series = {}, {}
    for split in splits:
        role = {"val": ROLE_VAL, "test": ROLE_TEST}[split]
        _, result, ser = evaluate_with_objective(session.exp, apply, params, stats, session.env_params, role)
        members = []
        for i in range(n_members):
            one = take(carry, i)
            res, _ = evaluate_split(session.exp, session.trainer.policy_apply, one.params, one.obs_stats,
                                    session.env_params, role)
            members.append({"member": i, "seed": seeds[i], "selected": i in selected,
                            "val_objective": objectives[i], "best_update": updates[i],
                            **{k: res["pooled"].get(k) for k in MEMBER_KEYS}})
        result["population"] = {"size": n_members, "selected": selected, "members": members,
                                "rule": selection_rule(session.cfg, meta), "top_k": session.cfg.train.ensemble_top_k}
        result["checkpoint"] = {"which": which, **{k: meta.get(k) for k in ("update", "env_steps", "objective")}}
        evals[split], series[split] = result, ser
    return evals, series
