"""``hpo.objectives``: the rules of the key, a multi-objective (Pareto) study end to end, and a
single objective other than the regime objective.

The Pareto front in ``hpo_summary.json`` is checked against a brute-force Pareto set written here
from every completed trial's values, each value against the trial's own val metrics, and every
``pareto/`` member against what ``python -m tbjax.evaluate`` computes for it
(:func:`tbjax.run.reevaluate.evaluate_run`, saved by :func:`tbjax.run.deployed.save_evaluation`).
Everything runs in this process, so the tiny trainer compiles once: the studies through
:func:`tbjax.hpo.job.hpo_run` (the library call of ``python -m tbjax.hpo``), the exit-2 messages
through the command itself.
"""

import json
import math

import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tiny_run_config import tiny_body, tiny_market
from tbjax.cli.hpo import main as hpo_main
from tbjax.config import load_config
from tbjax.errors import InputError
from tbjax.evaluation.metrics import json_safe
from tbjax.hpo.job import hpo_run
from tbjax.run.deployed import save_evaluation
from tbjax.run.reevaluate import evaluate_run

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {"ppo.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
         "ppo.ent_coef": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}}


@pytest.mark.parametrize("objectives, fragment", [
    (["sortino", "cvar_5"], "unknown metric 'cvar_5'"),
    (["sortino", "sortino:minimize"], "repeats a metric"),
    (["sortino", "cvar", "sharpe", "turnover"], "must list 1 to 3 metrics"),
    ([], "must list 1 to 3 metrics"),
    (["cvar:lower"], "has direction 'lower'"),
])
def test_bad_objectives_are_one_error_naming_the_key(objectives, fragment, tmp_path, capsys):
    with pytest.raises(InputError, match="hpo.objectives") as err:
        load_config(None, [f"hpo.objectives={json.dumps(objectives)}"])
    assert fragment in str(err.value)
    run_dir = tmp_path / "run"
    code = hpo_main(["--config", "configs/hpo.yaml", "--run-dir", str(run_dir),
                     "--set", f"hpo.objectives={json.dumps(objectives)}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: hpo.objectives") and fragment in lines[0]
    assert not run_dir.exists()


def test_directions_default_to_each_metrics_nature_and_can_be_written():
    from tbjax.hpo.objectives import Goals

    goals = Goals.of(load_config(None, ["hpo.objectives=[sortino, cvar, 'turnover:maximize']"]))
    assert goals.names == ("sortino", "cvar", "turnover") and goals.directions == ("maximize", "minimize", "maximize")
    assert Goals.of(load_config(None)).classic and not goals.prunable


def _dominates(a, b, signs) -> bool:
    """a at least as good as b in every objective and better in one (signs: +1 maximize, -1 minimize)."""
    return all(s * x >= s * y for s, x, y in zip(signs, a, b)) and any(s * x > s * y for s, x, y in zip(signs, a, b))


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hpo_objectives")
    processed = tiny_market(root)

    def run(name: str, n_trials: int, objectives: list[str], pruner: str) -> tuple:
        body = tiny_body(processed, total_env_steps=512)  # 4 updates, evaluations at 2 and 4
        body["hpo"] = {"n_trials": n_trials, "pruner": pruner, "objectives": objectives, "space": SPACE}
        (root / f"{name}.yaml").write_text(yaml.safe_dump(body))
        run_dir = root / name
        result = hpo_run(root / f"{name}.yaml", run_dir=run_dir)
        assert result.storage == f"sqlite:///{(run_dir / 'study.db').resolve()}"
        study = optuna.load_study(study_name="tbjax", storage=result.storage)
        summary = json.loads((run_dir / "hpo_summary.json").read_text())
        assert summary == json.loads(json.dumps(json_safe(result.summary)))  # the call returns what it wrote
        return study, run_dir, summary

    return root, run


@pytest.fixture(scope="module")
def pareto_study(study_run):
    # successive_halving is asked for, and must not be used: Optuna cannot prune a multi-objective study
    return study_run[1]("pareto", 6, ["sortino", "cvar"], "successive_halving")


def test_pareto_front_is_the_brute_force_pareto_set_of_the_completed_trials(pareto_study, capsys):
    study, run_dir, summary = pareto_study
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert summary["objectives"] == [{"name": "sortino", "direction": "maximize"},
                                     {"name": "cvar", "direction": "minimize"}]
    assert summary["pruning"].startswith("off") and summary["best_trial"] is None and not (run_dir / "best").exists()
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(complete) == 6  # nothing pruned
    for t in complete:
        assert t.intermediate_values == {}  # nothing reported
        val = t.user_attrs["val_metrics"]  # each value is the metric of the trial's saved checkpoint
        sortino = val["sortino"] if val["sortino"] is not None and math.isfinite(val["sortino"]) else 0.0
        assert t.values == pytest.approx([sortino, -val["cvar_5"]], rel=1e-9, abs=1e-12)
        assert t.user_attrs["objective_values"] == {"sortino": t.values[0], "cvar": t.values[1]}
    signs = (1, -1)
    expected = sorted(t.number for t in complete
                      if not any(_dominates(o.values, t.values, signs) for o in complete if o is not t))
    front = summary["pareto_front"]
    assert [m["trial"] for m in front] == expected and expected
    by_number = {t.number: t for t in complete}
    for m in front:
        t = by_number[m["trial"]]
        assert m["values"] == {"sortino": t.values[0], "cvar": t.values[1]} and m["params"] == t.params
        assert m["run_dir"] == f"pareto/{t.number}"
    assert sorted(int(p.name) for p in (run_dir / "pareto").iterdir()) == expected
    assert (run_dir / "plots" / "pareto_front.png").stat().st_size > 0
    assert summary["plot_errors"] == {}


def test_each_front_member_has_its_dsr_against_the_whole_study(pareto_study):
    from tbjax.evaluation.cscv import candidate_sharpe
    from tbjax.evaluation.significance import expected_max_sharpe, probabilistic_sharpe_ratio

    study, run_dir, summary = pareto_study
    finished = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    pool = [c for t in finished for c in t.user_attrs["val_candidates"]]
    sr0 = expected_max_sharpe(len(pool), np.array([candidate_sharpe(c) for c in pool]).var(ddof=1))
    assert summary["selection_bias"]["dsr_n"] == len(pool) == 12  # 6 trials x 2 evaluations each
    for m in summary["pareto_front"]:
        returns = np.asarray(study.trials[m["trial"]].user_attrs["val_returns"])
        bias = m["selection_bias"]
        assert bias["dsr_n"] == len(pool) and bias["pbo"] == summary["selection_bias"]["pbo"]
        assert bias["dsr"] == pytest.approx(probabilistic_sharpe_ratio(returns, sr0), abs=1e-9)
        assert f"trial {m['trial']}'s validation Sharpe" in bias["reading"]


def test_every_front_member_folder_is_an_evaluable_run(pareto_study):
    _, run_dir, summary = pareto_study
    for m in summary["pareto_front"]:
        folder = run_dir / m["run_dir"]
        save_evaluation(folder, *evaluate_run(folder, "best", ("val",)))
        pooled = json.loads((folder / "eval" / "val.json").read_text())["pooled"]
        sortino = pooled["sortino"] if pooled["sortino"] is not None else 0.0
        assert sortino == pytest.approx(m["values"]["sortino"], rel=1e-6, abs=1e-9)
        assert -pooled["cvar_5"] == pytest.approx(m["values"]["cvar"], rel=1e-6, abs=1e-12)
        report = (folder / "report.md").read_text()
        assert "This run is a Pareto-front member (sortino (maximize), cvar (minimize)) of 6 hyperparameter" in report


def test_resuming_with_other_objectives_is_refused(pareto_study, capsys):
    _, run_dir, _ = pareto_study
    config = run_dir.parent / "pareto.yaml"
    assert hpo_main(["--config", str(config), "--run-dir", str(run_dir), "--set", "hpo.objectives=[sharpe]"]) == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert "hpo.objectives = [sharpe (maximize)] differs from study 'tbjax'" in line
    assert "created with [sortino (maximize), cvar (minimize)]" in line


def test_one_other_objective_is_a_single_objective_study_reporting_that_metric(study_run):
    study, run_dir, summary = study_run[1]("cvar_only", 3, ["cvar"], "median")
    assert [d.name for d in study.directions] == ["MINIMIZE"]
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert complete
    for t in complete:  # the value: the tail loss of the saved checkpoint, also the report at its update
        assert t.value == pytest.approx(-t.user_attrs["val_metrics"]["cvar_5"], rel=1e-9)
        assert t.intermediate_values[t.user_attrs["best_update"]] == pytest.approx(t.value, rel=1e-6)
    best = min(complete, key=lambda t: t.value)
    assert summary["best_trial"] == best.number and summary["objectives"] == [{"name": "cvar", "direction": "minimize"}]
    assert "pareto_front" not in summary and (run_dir / "best" / "config.yaml").is_file()


def test_a_diverging_trial_is_pruned_by_the_nan_guard_in_a_pareto_study(study_run, tmp_path):
    """The NaN guard is no Optuna pruner: a multi-objective trial whose update goes non-finite is
    PRUNED with its reason (no values); the next trial completes with both values."""
    from tbjax.hpo.runner import TrialRunner
    from tbjax.hpo.space import build_search_space, user_set_keys
    from tbjax.run.experiment import build_experiment

    config = study_run[0] / "pareto.yaml"
    cfg = load_config(config)
    runner = TrialRunner(cfg, build_experiment(cfg), build_search_space(cfg, user_set_keys(config)), tmp_path)
    study = optuna.create_study(directions=["maximize", "minimize"])
    for lr in (1e30, 5e-4):  # 1e30 blows the params up
        study.enqueue_trial({"ppo.learning_rate": lr, "ppo.ent_coef": 0.01, "ppo.cvar_weight": 0.3})
    runner.optimize(study, n_trials=2, batch=1)  # the program the fixture's study compiled
    bad, good = study.get_trials()
    assert bad.state == TrialState.PRUNED and bad.values is None
    assert "non-finite update" in bad.user_attrs["pruned_reason"]
    assert good.state == TrialState.COMPLETE and len(good.values) == 2 and study.best_trials[0].number == good.number
