"""Seed populations (train.population > 1): one vmapped program equal to lone runs, the ensemble's
arithmetic by hand, selection on val only, and a population run restored by load_policy deciding
exactly as its backtest."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tbjax
from tbjax.config import load_config
from tbjax.learner.population import ensemble_action, ensemble_apply
from tbjax.run.chunks import take
from tbjax.run.job import RunOptions, train_run
from tbjax.run.population import NO_VAL_EVIDENCE, chosen_members, select_members, selection_rule
from tbjax.run.reevaluate import evaluate_run
from tbjax.run.session import TrainingSession
from tiny_run_config import synthetic_market

WINDOW = 32
TINY = [f"env.window_size={WINDOW}", "env.episode_len=16", "env.position_levels=[-1.0, 0.0, 0.5, 1.0]",
        "data.train_start=2020-01-01", "data.train_end=2020-01-24", "data.val_start=2020-01-25",
        "data.val_end=2020-01-31", "data.test_start=2020-02-01", "data.test_end=2020-02-28",
        "ppo.n_envs=8", "ppo.n_steps=16", "ppo.n_epochs=1", "ppo.n_minibatches=2", "ppo.hidden_sizes=[16]",
        "ppo.num_quantiles=8", "ppo.learning_rate=3e-3", "train.updates_per_chunk=2", "train.eval_every=2",
        "train.total_env_steps=1024", "output.tensorboard=false", "eval.regime_bars=300",
        "train.population=1", "eval.edge_confidence=0", "train.patience=0"]  # the agent (abstention: test_do_no_harm)  # a lone learner unless a test sets its population (base.yaml's default is 4)


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    root = tmp_path_factory.mktemp("population")
    return synthetic_market(root, "proc", symbols=2, bars=1000, timeframe="1h", seed=3, signal=0.3)


def config(processed, *extra):
    return load_config("configs/base.yaml", TINY + [f"data.processed_dir={processed}", *extra])


def test_members_equal_lone_runs_with_their_seeds_and_compile_once(processed, tmp_path):
    plain = ("eval.w_choppy=0", "eval.w_trend=0")  # no regime markets: the objective is the val Sortino
    pop = TrainingSession(config(processed, "train.population=3", *plain), tmp_path / "pop", write=False, quiet=True)
    assert pop.train(resume=False, stop=None)
    assert pop.program.chunk._cache_size() == 1
    for i in range(3):
        lone = TrainingSession(config(processed, f"train.seed={i}", *plain), tmp_path / f"lone{i}", write=False,
                               quiet=True)
        assert lone.train(resume=False, stop=None)
        member = take(pop.carry, i)
        for a, b in zip(jax.tree_util.tree_leaves(member.params), jax.tree_util.tree_leaves(lone.carry.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
        assert pop.book.objective[i] == pytest.approx(lone.best_objective, rel=1e-3, abs=1e-3)
    # the members differ (own seeds), so the comparison above is not trivially true
    assert not np.allclose(np.asarray(jax.tree_util.tree_leaves(take(pop.carry, 0).params)[0]),
                           np.asarray(jax.tree_util.tree_leaves(take(pop.carry, 1).params)[0]))


def test_members_stepped_one_by_one_equal_members_vmapped(processed, tmp_path):
    """The two mappings of the member axis (``member_batch``: lax.map one at a time, the CPU's
    default; vmap of all, an accelerator's) train the same members: same carry after a chunk. A
    dead member keeps its carry under both (one by one, its chunk is skipped by a cond)."""
    from tbjax.learner.population import member_keys, population_program
    from tbjax.run.population import population_hparams

    session = TrainingSession(config(processed, "train.population=3"), tmp_path, write=False, quiet=True)
    hps = population_hparams(session.cfg, session.hparams)
    market = session.exp.market
    alive = np.asarray([True, False, True])
    outs = []
    for batch in (3, 1):
        program = population_program(session.trainer, 3, member_batch=batch)
        carry = program.start(member_keys(0, 3), hps, market)
        start = jax.device_get(take(carry, 1))
        carry, metrics = program.advance(carry, hps, alive, market)
        for a, b in zip(jax.tree_util.tree_leaves(start), jax.tree_util.tree_leaves(jax.device_get(take(carry, 1)))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the dead member did not move
        live = jax.tree_util.tree_map(lambda x: np.asarray(x)[alive], jax.device_get(metrics))
        outs.append(jax.device_get((take(carry, 0).params, take(carry, 2).obs_stats, live)))
    for a, b in zip(*(jax.tree_util.tree_leaves(o) for o in outs)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    assert not np.allclose(np.asarray(jax.tree_util.tree_leaves(outs[0][0])[0]),  # the live members did move
                           np.asarray(jax.tree_util.tree_leaves(take(program.start(member_keys(0, 3), hps, market),
                                                                     0).params)[0]))


def test_ensemble_action_by_hand():
    levels = [-1.0, 0.0, 0.5, 1.0]
    actions = jnp.asarray([[0, 1, 2, 3, 3],    # -1,  0,  .5, 1,  1
                           [0, 2, 2, 1, 3],    # -1, .5, .5,  0,  1
                           [1, 3, 2, 0, 1]])   #  0,  1, .5, -1,  0
    # means -2/3, .5, .5, 0, 2/3 -> nearest levels -1, .5, .5, 0, .5
    np.testing.assert_array_equal(np.asarray(ensemble_action(actions, "discrete", levels)), [0, 2, 2, 1, 2])
    # ties go to the flatter level: mean .75 of {.5, 1} -> .5; mean -.75 of {-1, -.5} -> -.5
    assert int(ensemble_action(jnp.asarray([[1], [2]]), "discrete", [0.0, 0.5, 1.0])[0]) == 1
    assert int(ensemble_action(jnp.asarray([[0], [1]]), "discrete", [-1.0, -0.5, 0.0])[0]) == 1
    # with the held position known, a tie keeps the level that trades least (a 2-2 split holds)
    split = jnp.asarray([[0, 0, 0], [0, 0, 0], [2, 2, 2], [2, 2, 2]])  # -1, -1, 1, 1: mean 0 IS a level (no tie)
    np.testing.assert_array_equal(
        np.asarray(ensemble_action(split, "discrete", [-1.0, 0.0, 1.0], jnp.asarray([1.0, -0.98, 0.0]))), [1, 1, 1])
    half = jnp.asarray([[1, 1, 1], [1, 1, 1], [2, 2, 2], [2, 2, 2]])  # members 0, 0, 1, 1: mean .5, a tie of 0 and 1
    np.testing.assert_array_equal(                                    # held 1 / held .98 after drift / held 0 / held -1
        np.asarray(ensemble_action(half, "discrete", [-1.0, 0.0, 1.0], jnp.asarray([1.0, 0.98, 0.0]))), [2, 2, 1])
    assert int(ensemble_action(half[:, :1], "discrete", [-1.0, 0.0, 1.0], jnp.asarray([-1.0]))[0]) == 1
    # not a tie: the nearest level wins whatever is held (mean .75 -> 1 although flat is held)
    assert int(ensemble_action(jnp.asarray([[2], [2], [2], [1]]), "discrete", [-1.0, 0.0, 1.0],
                               jnp.asarray([0.0]))[0]) == 2
    cont = ensemble_action(jnp.asarray([[0.2], [1.5], [-0.4]]), "continuous", levels)
    assert float(cont[0]) == pytest.approx((0.2 + 1.0 - 0.4) / 3, rel=1e-6)  # members clipped to [-1, 1]


def test_an_even_long_short_split_follows_the_best_member_not_the_level_order():
    # levels without 0: a 2-2 split of long and short puts the mean at 0, equally far from -1 and 1.
    # Flat (or no held position) trades the same either way and both are equally exposed, so the
    # FIRST member (the best on val) decides; the old rule took the first level, short, every time.
    long_short = [-1.0, 1.0]
    best_long = jnp.asarray([[1, 1], [0, 0], [0, 0], [1, 1]])   # column 0 held flat, column 1 no position
    best_short = jnp.asarray([[0], [1], [1], [0]])
    np.testing.assert_array_equal(np.asarray(ensemble_action(best_long, "discrete", long_short,
                                                             jnp.asarray([0.0, 0.0]))), [1, 1])
    assert int(ensemble_action(best_long[:, :1], "discrete", long_short)[0]) == 1
    assert int(ensemble_action(best_short, "discrete", long_short, jnp.asarray([0.0]))[0]) == 0
    # holding a side, the same split keeps it whoever is first (the no-trade band)
    np.testing.assert_array_equal(np.asarray(ensemble_action(jnp.tile(best_short, (1, 2)), "discrete", long_short,
                                                             jnp.asarray([1.0, -0.97]))), [1, 0])
    # four levels without 0: votes -1 and +1 -> mean 0, a tie of -.5 and .5; the first member's
    # side wins (-1 -> -.5 is index 1, +1 -> .5 is index 2)
    four = [-1.0, -0.5, 0.5, 1.0]
    assert int(ensemble_action(jnp.asarray([[0], [3]]), "discrete", four, jnp.asarray([0.0]))[0]) == 1
    assert int(ensemble_action(jnp.asarray([[3], [0]]), "discrete", four, jnp.asarray([0.0]))[0]) == 2


def test_top_k_never_chooses_a_member_without_a_finite_objective(tmp_path):
    inf, nan = float("inf"), float("nan")
    assert select_members([0.5, -inf, 1.0, nan], 3) == [2, 0]  # fewer finite than k: the finite ones
    assert select_members([0.5, -inf, 1.0, None], 4) == [2, 0]
    assert select_members([-inf, -0.3, nan], 2) == [1]          # a finite loser still ranks
    assert select_members([-inf, -0.3, nan], None) == [1]
    assert select_members([-inf, None, nan], 2) == [] == select_members([-inf, None], None)
    cfg = load_config(None, ["train.population=3", "train.ensemble_top_k=2"])
    none_finite = {"member_objective": [None, None, None], "selected": []}
    assert chosen_members(cfg, none_finite) == [0, 1, 2] and selection_rule(cfg, none_finite) == NO_VAL_EVIDENCE
    some = {"member_objective": [None, 0.2, -0.1]}
    assert chosen_members(cfg, some) == [1, 2] and selection_rule(cfg, some) == "top_k"
    # the report says why every member is in the ensemble
    from tbjax.evaluation.population_report import population_section

    members = [{"member": i, "seed": i, "selected": True} for i in range(3)]
    pop = {"size": 3, "selected": [0, 1, 2], "members": members, "rule": NO_VAL_EVIDENCE, "top_k": 2}
    text = "\n".join(population_section(tmp_path, {"val": {"population": pop}}))
    assert f"the ensemble uses {NO_VAL_EVIDENCE} (members 0, 1, 2)" in text


def test_population_report_never_labels_a_deployed_baseline_as_the_ensemble(tmp_path):
    """When val found no edge the split's top-level figures score the baseline the run trades
    (tbjax.run.deployed); the ensemble's row must show the ensemble's own figures, from "agent"."""
    from tbjax.evaluation.population_report import population_section

    decision = {"policy": "baseline", "baseline": "buy_and_hold"}
    members = [{"member": 0, "seed": 0, "selected": True, "sortino": 0.5}]
    pop = {"size": 1, "selected": [0], "members": members, "rule": "beat flat on val"}
    hold = {"sortino": 1.1, "total_return": 0.15, "max_drawdown": 0.15, "turnover": 0.003}
    agent = {"sortino": 0.94, "total_return": 0.095, "max_drawdown": 0.094, "turnover": 0.397}
    evals = {"val": {"population": pop, "objective": 0.9, "pooled": {"sortino": 1.3}, "deployed": decision,
                     "agent": {"objective": 0.83, "pooled": {"sortino": 1.2}}},
             "test": {"population": pop, "pooled": hold, "deployed": decision, "agent": {"pooled": agent},
                      "baselines": {"buy_and_hold": {"pooled": hold}}}}
    rows = {line.split(" | ")[0]: line for line in population_section(tmp_path, evals) if line.startswith("| ")}
    assert rows["| ensemble (not deployed: no edge on val)"].endswith(
        "| 0.830 | 1.200 | 0.940 | 0.0950 | 0.0940 | 0.397 |")
    assert rows["| **deployed: buy and hold**"].endswith("| 0.900 | 1.300 | 1.100 | 0.1500 | 0.1500 | 0.003 |")
    assert "| **ensemble**" not in rows
    evals["test"]["deployed"] = evals["val"]["deployed"] = {"policy": "agent", "baseline": "buy_and_hold"}
    evals["test"]["pooled"], evals["val"]["objective"] = agent, 0.83
    for ev in evals.values():
        del ev["agent"]
    rows = {line.split(" | ")[0]: line for line in population_section(tmp_path, evals) if line.startswith("| ")}
    assert rows["| **ensemble**"].endswith("| 0.830 | 1.300 | 0.940 | 0.0950 | 0.0940 | 0.397 |")
    assert not any(key.startswith("| **deployed") for key in rows)


def test_each_member_acts_with_its_own_statistics():
    def policy_apply(params, obs_stats, obs, deterministic=True, key=None):
        return jnp.argmax(params * (obs - obs_stats), axis=-1)  # which feature is most above the member's mean

    apply = ensemble_apply(policy_apply, "discrete", [0.0, 0.5, 1.0], 3)
    obs = jnp.asarray([[1.0, 1.0, 1.0]])
    params = jnp.ones((3, 3))
    stats = jnp.asarray([[0.0, 0.9, 0.9], [0.9, 0.0, 0.9], [0.9, 0.0, 0.9]])  # members pick 0, 1, 1
    assert int(apply(params, stats, obs)[0]) == 1  # mean of 0, .5, .5 = 1/3 -> level .5


def test_selection_uses_val_objectives_only():
    assert select_members([0.5, -0.2, 1.0, None], None) == [2, 0]  # beat flat (0), best first
    assert select_members([-0.5, -0.2, float("nan")], None) == [1]  # none beats flat: the best alone
    assert select_members([0.5, -0.2, 1.0], 2) == [2, 0]


@pytest.fixture(scope="module")
def population_run(processed, tmp_path_factory):
    run = tmp_path_factory.mktemp("poprun") / "run"
    assert train_run("configs/base.yaml", population_sets(processed), run).finished
    return run


def population_sets(processed) -> list[str]:
    """The population run's ``--set`` overrides: TINY with 3 members on ``processed``."""
    return [f"data.processed_dir={processed}", *TINY, "train.population=3"]


def test_population_run_is_one_policy_in_load_policy_evaluate_and_report(population_run, processed):
    evals, series = evaluate_run(population_run, "best", ("val", "test"))
    pop = evals["test"]["population"]
    saved = json.loads((population_run / "eval" / "val.json").read_text())["population"]
    objectives = [m["val_objective"] for m in saved["members"]]
    assert pop["selected"] == saved["selected"] == select_members(objectives, None)
    assert len(pop["members"]) == 3 and "## Population" in (population_run / "report.md").read_text()
    policy = tbjax.load_policy(population_run)
    assert policy.members == pop["selected"]
    session = TrainingSession(load_config(population_run / "config.yaml"), population_run, write=False)
    market = session.exp.market
    for s, sym in enumerate(session.exp.symbols):
        start, end = int(market.role_start[s, 2]), int(market.role_end[s, 2])
        bars = {c: np.asarray(v)[start:end] for c, v in session.exp.tables[sym].items()}
        positions = policy.target_positions(bars)
        expected = series["test"][sym]["position"]
        np.testing.assert_array_equal(positions[WINDOW - 1: WINDOW - 1 + len(expected)], expected)


def test_a_resumed_population_ends_as_the_uninterrupted_one(population_run, processed, tmp_path):
    """Stopped after 2 chunks (one member's best found before, the rest after) and resumed: the same
    member bests, the same chosen members and the same ensemble test metrics."""
    run = tmp_path / "split"
    sets = population_sets(processed)
    assert not train_run("configs/base.yaml", sets, run, options=RunOptions(quiet=True, max_chunks=2)).finished
    assert train_run("configs/base.yaml", sets, run, resume=True).finished
    for split in ("val", "test"):
        whole = json.loads((population_run / "eval" / f"{split}.json").read_text())
        again = json.loads((run / "eval" / f"{split}.json").read_text())
        assert again["population"]["selected"] == whole["population"]["selected"]
        for a, b in zip(again["population"]["members"], whole["population"]["members"]):
            assert a["best_update"] == b["best_update"]
            assert a["val_objective"] == pytest.approx(b["val_objective"], rel=1e-5)
        assert again["pooled"]["sortino"] == pytest.approx(whole["pooled"]["sortino"], rel=1e-5)
    assert (run / "metrics.jsonl").read_bytes() == (population_run / "metrics.jsonl").read_bytes()


def test_an_ensemble_of_one_recurrent_policy_twice_acts_as_that_policy(processed, tmp_path):
    """Two copies of a GRU member: the ensemble's mean is the member's own level on every bar, so
    its backtest equals the member's only if every copy keeps its own recurrent state through the
    walk (a state reset each bar would act differently)."""
    from tbjax.data.market import ROLE_TEST
    from tbjax.learner.population import stack_trees
    from tbjax.evaluation.scoring import evaluate_split

    session = TrainingSession(config(processed, "ppo.policy=gru", "ppo.rnn_size=8"), tmp_path, write=False)
    carry = session.template()
    acting = session.trainer.policy_apply
    _, alone = evaluate_split(session.exp, acting, carry.params, carry.obs_stats, session.env_params, ROLE_TEST)
    twice = ensemble_apply(acting, "discrete", session.cfg.env.position_levels, 2)
    params, stats = stack_trees([carry.params] * 2), stack_trees([carry.obs_stats] * 2)
    _, both = evaluate_split(session.exp, twice, params, stats, session.env_params, ROLE_TEST)
    stateless = ensemble_apply(acting.call, "discrete", session.cfg.env.position_levels, 2)
    _, reset = evaluate_split(session.exp, stateless, params, stats, session.env_params, ROLE_TEST)
    for sym in alone:
        np.testing.assert_array_equal(both[sym]["position"], alone[sym]["position"])
    assert any(not np.array_equal(reset[s]["position"], alone[s]["position"]) for s in alone)  # the state matters


def test_a_stop_after_a_chunk_without_evaluation_keeps_every_members_best(processed, tmp_path):
    """Evaluations at updates 4 and 8; stopped at update 6, the "latest" checkpoint still carries
    the members' bests from update 4, so a resumed run restores them instead of starting blind."""
    from tbjax.run.interrupts import StopFlag

    cfg = config(processed, "train.population=2", "train.eval_every=4", "eval.w_choppy=0", "eval.w_trend=0")
    first = TrainingSession(cfg, tmp_path / "run", quiet=True)
    first.setup_run_dir("", fresh=True)
    with StopFlag() as stop:
        assert not first.train(resume=False, stop=stop, max_chunks=3)
    assert first.update == 6 and all(u == 4 for u in first.book.update)
    again = TrainingSession(cfg, tmp_path / "run", write=False, quiet=True)
    again.start(resume=True)
    assert again.update == 6 and again.book.update == first.book.update
    assert again.book.objective == pytest.approx(first.book.objective)
