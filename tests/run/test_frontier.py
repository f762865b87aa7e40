"""python -m tbjax.frontier on a tiny market: ONE trained 2 x 2 grid (2 seeds each, 8 members)
shared by every test: one compile for the whole grid, a member equal to a lone run with its
point's settings and seed, the Pareto set against brute force, an impossible budget, the run
folder evaluated as a training run with each member's own seed, and a frontier stopped after a
chunk and resumed ending as the uninterrupted one (a finished one resumes to nothing)."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

from tbjax.cli import frontier as frontier_cli
from tbjax.cli import evaluate as evaluate_cli
from tbjax.config import load_config
from tbjax.evaluation.pareto import pareto_mask, tail_loss
from tbjax.learner.population import population_program
from tbjax.run.assembly import assemble
from tbjax.run.chunks import take
from tbjax.run.frontier import frontier_grid, run_config
from tbjax.run.reevaluate import open_run
from tbjax.run.session import TrainingSession
from tiny_run_config import synthetic_market

TINY = ["env.window_size=32", "env.episode_len=16", "env.position_levels=[-1.0, 0.0, 0.5, 1.0]",
        "data.train_start=2020-01-01", "data.train_end=2020-01-24", "data.val_start=2020-01-25",
        "data.val_end=2020-01-31", "data.test_start=2020-02-01", "data.test_end=2020-02-28",
        "ppo.n_envs=8", "ppo.n_steps=16", "ppo.n_epochs=1", "ppo.n_minibatches=2", "ppo.hidden_sizes=[16]",
        "ppo.num_quantiles=8", "ppo.cvar_alpha=0.25", "ppo.learning_rate=3e-3", "train.updates_per_chunk=2",
        "train.eval_every=2", "train.total_env_steps=1024", "output.tensorboard=false", "eval.regime_bars=300",
        "eval.w_choppy=0", "eval.w_trend=0", "eval.edge_confidence=0", "train.patience=0", "train.seed=5",
        "frontier.cvar_weight=[0.0, 1.0]", "frontier.turnover_penalty=[0.0, 0.002]", "frontier.seeds=2"]


@pytest.fixture(scope="module")
def frontier(tmp_path_factory):
    root = tmp_path_factory.mktemp("frontier")
    synthetic_market(root, "proc", symbols=2, bars=1000, timeframe="1h", seed=3, signal=0.3)
    sets = TINY + [f"data.processed_dir={root / 'proc'}"]
    run_dir = root / "run"
    args = ["--config", "configs/base.yaml", "--run-dir", str(run_dir), "--quiet"]
    for s in sets:
        args += ["--set", s]
    assert frontier_cli.main(args) == 0
    cfg = load_config("configs/base.yaml", sets)
    return {"run_dir": run_dir, "sets": sets, "cfg": cfg, "root": root,
            "summary": json.loads((run_dir / "frontier.json").read_text())}


def test_grid_maps_points_and_seeds_to_members(frontier):
    grid = frontier_grid(frontier["cfg"])
    assert [p["ppo.cvar_weight"] for p in grid.points] == [0.0, 0.0, 1.0, 1.0]
    assert [p["env.turnover_penalty"] for p in grid.points] == [0.0, 0.002, 0.0, 0.002]
    assert grid.n_members == 8 and grid.members_of(3) == [6, 7] and grid.seed_of(7) == 6
    summary = frontier["summary"]
    assert len(summary["points"]) == 4 and summary["grid"]["members"] == 8
    assert [m["seed"] for m in summary["points"][3]["members"]] == [5, 6]
    hps = grid.hparams(2)
    np.testing.assert_allclose(np.asarray(hps.cvar_weight), [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_allclose(np.asarray(hps.env.turnover_penalty), [0, 0, .002, .002] * 2, rtol=1e-6)


def test_the_whole_grid_compiles_once(frontier):
    cfg = run_config(frontier["cfg"], frontier_grid(frontier["cfg"]))
    program = population_program(assemble(cfg, 2).trainer, 8)  # the cached program the run trained with
    assert program.chunk._cache_size() == 1


def test_member_equals_a_lone_run_with_its_settings_and_seed(frontier, tmp_path):
    point, seed = 3, 1  # cvar_weight 1, turnover_penalty 0.002, seed train.seed + 1
    member = point * 2 + seed
    lone_cfg = load_config("configs/base.yaml", frontier["sets"] + ["ppo.cvar_weight=1.0", "env.turnover_penalty=0.002",
                                                                    "train.seed=6", "train.population=1"])
    lone = TrainingSession(lone_cfg, tmp_path / "lone", write=False, quiet=True)
    assert lone.train(resume=False, stop=None)
    session = open_run(frontier["run_dir"])
    latest, meta = session.ckpt.restore("latest", session.template())
    for a, b in zip(jax.tree_util.tree_leaves(take(latest, member).params), jax.tree_util.tree_leaves(lone.carry.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    assert meta["member_objective"][member] == pytest.approx(lone.best_objective, rel=1e-3, abs=1e-3)
    assert meta["member_update"][member] == lone.book.meta(None)["member_update"][0]
    # the other seed of the same point differs: the comparison is not trivially true
    other = take(latest, member - 1).params
    assert not np.allclose(np.asarray(jax.tree_util.tree_leaves(other)[0]),
                           np.asarray(jax.tree_util.tree_leaves(lone.carry.params)[0]))


def test_pareto_flags_equal_brute_force(frontier):
    summary = frontier["summary"]
    ret, tail = summary["return_metric"], summary["tail_metric"]
    for split in ("val", "test"):
        r = [p[split][ret] if p[split][ret] is not None else math.nan for p in summary["points"]]
        loss = [tail_loss(p[split], tail) for p in summary["points"]]
        assert [p["pareto"][split] for p in summary["points"]] == pareto_mask(r, loss)
        for i, on in enumerate(pareto_mask(r, loss)):
            dominated = any(r[j] >= r[i] and loss[j] <= loss[i] and (r[j] > r[i] or loss[j] < loss[i])
                            for j in range(len(r)) if j != i and math.isfinite(r[j]) and math.isfinite(loss[j]))
            assert on == (math.isfinite(r[i]) and math.isfinite(loss[i]) and not dominated)
    assert set(summary["val_pareto"]) == {i for i, p in enumerate(summary["points"]) if p["pareto"]["val"]}
    for p in summary["points"]:
        assert set(p["val"]["is_it_real"]) >= {"sharpe_ci", "sortino_ci", "max_drawdown_ci"}
    assert {"buy_and_hold", "flat"} <= set(summary["baselines"]["test"])
    run_dir = frontier["run_dir"]
    assert (run_dir / "frontier.png").stat().st_size > 0
    report = (run_dir / "report.md").read_text()
    assert "Each step of risk aversion" in report and "Spearman" in report or "Too few" in report


def test_run_folder_evaluates_as_the_chosen_point(frontier, capsys):
    summary = frontier["summary"]
    chosen = summary["points"][summary["chosen"]["point"]]
    assert summary["chosen"]["point"] in summary["val_pareto"] and "no budget" in summary["chosen"]["rule"]
    run_dir = frontier["run_dir"]
    assert evaluate_cli.main(["--run-dir", str(run_dir), "--split", "val", "--no-write"]) == 0
    from tbjax.run.reevaluate import evaluate_run

    evals, _ = evaluate_run(run_dir, "best", ("val",))
    val = evals["val"].get("agent") or evals["val"]
    assert evals["val"]["population"]["selected"] == chosen["selected"]
    for key in ("sortino", "sharpe", "total_return", "cvar_5", "max_drawdown"):
        assert val["pooled"][key] == pytest.approx(chosen["val"][key], rel=1e-6, abs=1e-9)
    cfg = load_config(run_dir / "config.yaml")
    assert cfg.ppo.cvar_weight == chosen["settings"]["ppo.cvar_weight"]
    assert cfg.env.turnover_penalty == pytest.approx(chosen["settings"]["env.turnover_penalty"])
    import tbjax

    policy = tbjax.load_policy(run_dir)
    assert policy.members == chosen["selected"]


def test_impossible_budget_exits_2_naming_the_tightest_point(frontier, capsys):
    summary = frontier["summary"]
    losses = [tail_loss(p["val"], "cvar_5") for p in summary["points"]]
    tightest = int(np.nanargmin(losses))
    before = (frontier["run_dir"] / "config.yaml").read_text()
    assert frontier_cli.main(["--run-dir", str(frontier["run_dir"]), "--max-cvar", "0.00001%"]) == 2
    err = capsys.readouterr().err
    assert f"tightest is point {tightest} " in err and f"{losses[tightest]:.4%}" in err
    assert (frontier["run_dir"] / "config.yaml").read_text() == before  # the policy is unchanged
    assert frontier_cli.main(["--run-dir", str(frontier["run_dir"]), "--max-cvar", "abc"]) == 2


def test_report_and_evaluation_show_each_members_own_seed(frontier):
    """Member p * seeds + s has seed train.seed + s (5, 6, 5, 6, ...), not train.seed + its index."""
    expected = [5, 6] * 4
    for split in ("val", "test"):
        ev = json.loads((frontier["run_dir"] / "eval" / f"{split}.json").read_text())
        assert [m["seed"] for m in ev["population"]["members"]] == expected
    rows = [line.split("|") for line in (frontier["run_dir"] / "report.md").read_text().splitlines()
            if line.startswith("| ") and line.split("|")[1].strip().isdigit() and len(line.split("|")) > 9]
    assert [int(r[2]) for r in rows] == expected
    assert "each point's members repeat the same seeds" in (frontier["run_dir"] / "report.md").read_text()


def _frontier_args(frontier, run_dir):
    args = ["--config", "configs/base.yaml", "--run-dir", str(run_dir), "--quiet"]
    for s in frontier["sets"]:
        args += ["--set", s]
    return args


def test_a_stopped_frontier_resumes_to_the_uninterrupted_one(frontier, tmp_path, capsys):
    run_dir = tmp_path / "stopped"
    assert frontier_cli.main(_frontier_args(frontier, run_dir) + ["--max-chunks", "1"]) == 0
    err = capsys.readouterr().err
    assert f"continue with: python -m tbjax.frontier --run-dir {run_dir} --resume --quiet" in err
    assert not (run_dir / "frontier.json").exists() and len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
    assert frontier_cli.main(_frontier_args(frontier, run_dir)) == 2  # a fresh start would lose the checkpoint
    assert f"continue it with python -m tbjax.frontier --run-dir {run_dir} --resume" in capsys.readouterr().err
    # tbjax.train --resume would train the config's settings in place of the grid's: refused
    from tbjax.cli import train as train_cli
    assert train_cli.main(["--run-dir", str(run_dir), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is a frontier run" in err and f"python -m tbjax.frontier --run-dir {run_dir} --resume" in err
    assert frontier_cli.main(["--run-dir", str(run_dir), "--resume", "--quiet"]) == 0
    assert (run_dir / "metrics.jsonl").read_bytes() == (frontier["run_dir"] / "metrics.jsonl").read_bytes()
    again = json.loads((run_dir / "frontier.json").read_text())
    whole = frontier["summary"]
    assert again["val_pareto"] == whole["val_pareto"] and again["chosen"] == whole["chosen"]
    for a, b in zip(again["points"], whole["points"]):
        assert a["selected"] == b["selected"] and a["members"] == b["members"]
        for split in ("val", "test"):
            for key in ("sortino", "total_return", "cvar_5", "max_drawdown"):
                assert a[split][key] == pytest.approx(b[split][key], rel=1e-6, abs=1e-12)
    # a finished frontier resumes to nothing: no training, no file rewritten
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir() if p.is_file()}
    assert frontier_cli.main(["--run-dir", str(run_dir), "--resume"]) == 0
    assert "nothing to resume" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir() if p.is_file()} == before
    # stopped after training, before frontier.json (an interrupt during the evaluation): --resume
    # trains no chunk and evaluates the same points again
    (run_dir / "frontier.json").unlink()
    assert frontier_cli.main(["--run-dir", str(run_dir), "--resume", "--quiet"]) == 0
    assert (run_dir / "metrics.jsonl").read_bytes() == (frontier["run_dir"] / "metrics.jsonl").read_bytes()
    third = json.loads((run_dir / "frontier.json").read_text())
    assert third["chosen"] == whole["chosen"]
    for a, b in zip(third["points"], whole["points"]):
        assert a["val"]["sortino"] == pytest.approx(b["val"]["sortino"], rel=1e-6, abs=1e-12)
