"""HPO: trials reuse one compiled trainer, batched trials equal sequential ones, pruning and the NaN
guard are recorded, workers share a study, and a killed study resumes.

One tiny processed dataset (tbjax.synth + tbjax.prepare) and one TrialRunner are shared by the
in-process tests; the CLI tests run ``python -m tbjax.hpo`` in subprocesses that reuse the compiled
programs through a shared JAX compilation cache.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tiny_run_config import tiny_body, tiny_market
from tbjax.run.checkpoint import RunCheckpoints
from tbjax.config import load_config
from tbjax.data.market import ROLE_VAL
from tbjax.evaluation.scoring import evaluate_split
from tbjax.run.assembly import env_params_from_config
from tbjax.run.experiment import build_experiment
from tbjax.errors import InputError
from tbjax.cli.hpo import main as hpo_main
from tbjax.hpo.storage import make_storage
from tbjax.hpo.study import open_study
from tbjax.hpo.liveness import counted_trials
from tbjax.hpo.runner import TrialRunner
from tbjax.hpo.trial_scores import OBJECTIVE_PRUNE_STARTUP, objective_prunes
from tbjax.hpo.space import build_search_space, user_set_keys

optuna.logging.set_verbosity(optuna.logging.WARNING)
REPO = Path(__file__).resolve().parents[2]

# Four fixed trials (enqueued): one compiled program serves them all.
PARAMS = [
    {"ppo.cvar_weight": 0.3, "ppo.learning_rate": 3e-4},
    {"ppo.cvar_weight": 1.5, "ppo.learning_rate": 1e-3},
    {"ppo.cvar_weight": 0.1, "ppo.learning_rate": 1e-4},
    {"ppo.cvar_weight": 0.7, "ppo.learning_rate": 5e-4},
]


def _tiny_config(processed: Path) -> dict:
    body = tiny_body(processed, total_env_steps=512)  # 4 updates, 2 evals
    body["hpo"] = {"n_trials": 3, "pruner": "none", "space": {
        "ppo.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}}}
    return body


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("hpo")
    config_path = root / "hpo.yaml"
    config_path.write_text(yaml.safe_dump(_tiny_config(tiny_market(root))))
    cache = root / "jax_cache"
    old = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", str(cache))  # subprocesses reuse these programs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    cfg = load_config(config_path)
    space = build_search_space(cfg, user_set_keys(config_path))
    runner = TrialRunner(cfg, build_experiment(cfg), space, root / "inproc")
    yield {"root": root, "config": config_path, "cfg": cfg, "runner": runner, "cache": cache}
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


def _run(runner, params, batch, pruner=None):
    study = optuna.create_study(direction="maximize", pruner=pruner or optuna.pruners.NopPruner(),
                                sampler=optuna.samplers.TPESampler(seed=0))
    for p in params:
        study.enqueue_trial(p)
    runner.optimize(study, n_trials=len(params), batch=batch)
    return study, runner.compile_count()  # train_chunk programs compiled so far (all batch sizes)


@pytest.fixture(scope="module")
def sequential(setup):
    return _run(setup["runner"], PARAMS, batch=1)


@pytest.fixture(scope="module")
def batched(setup, sequential):
    return _run(setup["runner"], PARAMS, batch=4)


def test_sequential_trials_compile_once_and_record_results(setup, sequential):
    study, compiles = sequential
    assert compiles == 1
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    for t, p in zip(trials, PARAMS):
        assert "ppo.cvar_alpha" not in t.params  # fixed in the YAML: used as is, never suggested
        assert t.params == pytest.approx(p)
        # linear decay over 4 updates; the lr of update u (0-based) is lr * (1 - u / 4)
        lr = p["ppo.learning_rate"]
        assert [u for u, _ in t.user_attrs["lr_applied"]] == [2, 4]
        assert [v for _, v in t.user_attrs["lr_applied"]] == pytest.approx([lr * 0.75, lr * 0.25], rel=1e-5)
        series = t.user_attrs["objective_series"]
        assert [u for u, _ in series] == [2, 4] and sorted(t.intermediate_values) == [2, 4]
        assert t.value == pytest.approx(max(v for _, v in series))
        trial_cfg = load_config(Path(t.user_attrs["run_dir"]) / "config.yaml")
        assert trial_cfg.ppo.learning_rate == pytest.approx(lr) and trial_cfg.ppo.cvar_alpha == 0.25


def test_saved_checkpoint_is_the_best_and_reproduces_val_metrics(setup, sequential):
    study, _ = sequential
    runner = setup["runner"]
    t = study.get_trials()[0]
    (trainer,) = runner.trainers.values()
    member = runner.plan(optuna.trial.FixedTrial(dict(t.params)))
    template = trainer.init(jax.random.PRNGKey(0), member.hparams, runner.exp.market)
    ckpt = RunCheckpoints(t.user_attrs["run_dir"])
    carry, meta = ckpt.restore("best", template)
    ckpt.close()
    assert meta["update"] == t.user_attrs["best_update"] and meta["objective"] == pytest.approx(t.value)
    # the shared evaluation of every path (bars pooled by time), not a private backtest call
    result, _ = evaluate_split(member.exp, trainer.policy_apply, carry.params, carry.obs_stats,
                               env_params_from_config(member.cfg, ROLE_VAL), ROLE_VAL)
    assert result["pooled"]["sortino"] == pytest.approx(t.user_attrs["val_metrics"]["sortino"], rel=1e-6)
    assert t.intermediate_values[meta["update"]] == pytest.approx(result["pooled"]["sortino"], rel=1e-6)


def test_batched_trials_compile_once_and_match_sequential(sequential, batched):
    seq, _ = sequential
    bat, compiles = batched
    assert compiles == 2  # the B = 1 program and the B = 4 program, each compiled once
    for a, b in zip(seq.get_trials(), bat.get_trials()):
        assert b.state == TrialState.COMPLETE and a.params == b.params
        assert b.user_attrs["lr_applied"] == a.user_attrs["lr_applied"]
        ua = dict(a.intermediate_values)
        assert b.intermediate_values == pytest.approx(ua, rel=1e-3, abs=1e-3)
        assert b.value == pytest.approx(a.value, rel=1e-3, abs=1e-3)


def test_pruned_members_are_recorded_and_do_not_disturb_the_batch(setup, sequential, batched):
    seq, _ = sequential
    runner = setup["runner"]
    # a learning rate of 1e30 blows the params up: the NaN guard fires and the trial is PRUNED
    bad = {"ppo.cvar_weight": 0.3, "ppo.learning_rate": 1e30}
    study, compiles = _run(runner, [bad] + PARAMS[1:], batch=4)
    assert compiles == 2  # nothing new
    trials = study.get_trials()
    assert trials[0].state == TrialState.PRUNED
    assert "non-finite update" in trials[0].user_attrs["pruned_reason"]
    for a, b in zip(seq.get_trials()[1:], trials[1:]):
        assert b.state == TrialState.COMPLETE
        assert b.value == pytest.approx(a.value, rel=1e-3, abs=1e-3)
    # a pruner that rejects every report prunes at the first evaluation
    study, _ = _run(runner, PARAMS[:1], batch=1, pruner=optuna.pruners.ThresholdPruner(lower=1e9))
    (t,) = study.get_trials()
    assert t.state == TrialState.PRUNED and sorted(t.intermediate_values) == [2]
    assert "pruner" in t.user_attrs["pruned_reason"]


def test_objective_prune_rule_is_the_median_of_completed_trials(setup):
    study = optuna.create_study(direction="maximize")
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for v in (1.0, 2.0, 4.0):
        study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions=dist, value=v,
                                                  user_attrs={"objective_series": [[2, v], [4, v]]}))
    assert OBJECTIVE_PRUNE_STARTUP == 3
    assert objective_prunes(study, 2, 2.0) is None  # median of 1, 2, 4 is 2: not below
    assert "below the median 2" in objective_prunes(study, 2, 1.9)
    assert objective_prunes(study, 6, -100.0) is None  # no completed values at update 6


def _env(setup) -> dict:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(setup["cache"]),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "PYTHONPATH": str(REPO)}


def _cli(setup, *args):
    return [sys.executable, "-m", "tbjax.hpo", "--config", str(setup["config"]), *args]


def test_killed_study_resumes_with_two_workers(setup, sequential):
    """Kill a worker mid-study; two workers then resume the same SQLite study together."""
    run_dir = setup["root"] / "cli_run"
    storage = f"sqlite:///{run_dir / 'study.db'}"
    proc = subprocess.Popen(_cli(setup, "--run-dir", str(run_dir), "--n-trials", "5"), env=_env(setup),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    deadline, done = time.time() + 240, []
    while time.time() < deadline and proc.poll() is None:
        try:
            done = optuna.load_study(study_name="tbjax", storage=storage).get_trials(states=(TrialState.COMPLETE,))
        except Exception:  # the study is not created yet
            done = []
        if done:
            break
        time.sleep(0.1)
    assert done and proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "timeout"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = optuna.load_study(study_name="tbjax", storage=storage).get_trials()
    kept = {t.number: t.value for t in killed if t.state == TrialState.COMPLETE}
    assert kept and len(killed) < 5

    n_total = len(killed) + 3  # the killed worker's RUNNING trial counts (it goes stale, then FAIL)
    cmd = _cli(setup, "--run-dir", str(run_dir), "--n-trials", str(n_total))
    procs = [subprocess.Popen(cmd + ["--set", f"hpo.sampler_seed={k}"], env=_env(setup), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, cwd=REPO) for k in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    trials = optuna.load_study(study_name="tbjax", storage=storage).get_trials()
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials)))  # none lost, none duplicated
    assert len(counted_trials(optuna.load_study(study_name="tbjax", storage=storage))) == n_total  # exactly
    trials = [t for t in trials if not t.user_attrs.get("surplus")]  # asked together at the end: failed, not run
    assert {t.number: t.value for t in trials if t.number in kept} == kept  # earlier trials kept
    new = [t for t in trials if t.number >= len(killed)]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in new)
    assert all("ppo.cvar_alpha" not in t.params for t in trials)
    assert {int(p.name) for p in (run_dir / "trials").iterdir()} >= {t.number for t in new}
    summary = json.loads((run_dir / "hpo_summary.json").read_text())
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value)
    assert summary["best_trial"] == best.number and summary["best_value"] == pytest.approx(best.value)
    assert (run_dir / "best" / "config.yaml").is_file() and (run_dir / "best" / "feature_pipeline.json").is_file()
    assert (run_dir / "plots" / "optimization_history.png").stat().st_size > 0


def test_journal_storage_is_shared_between_handles(tmp_path):
    cfg = load_config(None, ["hpo.storage=" + str(tmp_path / "j" / "study.log"), "hpo.study_name=shared"])
    first = open_study(cfg, tmp_path)
    assert isinstance(first._storage, optuna.storages.JournalStorage)
    first.tell(first.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 0.25)
    second = open_study(cfg, tmp_path)  # another worker: loads, does not recreate
    trial = second.ask()
    assert [t.number for t in second.get_trials()] == [0, 1] and trial.number == 1
    assert second.get_trials()[0].value == 0.25
    with pytest.raises(InputError, match="neither an SQLAlchemy URL"):
        make_storage("study.db", tmp_path)


def test_invalid_space_is_a_config_error_before_any_trial(setup, tmp_path, capsys):
    body = yaml.safe_load(setup["config"].read_text())
    body["hpo"]["space"]["ppo.gamma"] = {"type": "float", "low": 0.99, "high": 0.9}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(body))
    assert hpo_main(["--config", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: hpo.space.ppo.gamma: low = 0.99 must be below high")
    assert not (tmp_path / "run" / "study.db").exists()


def test_a_trial_is_a_lone_learner_even_when_the_config_asks_for_a_population(setup):
    """train.population is `tbjax.train`'s: each trial trains ONE learner and its saved config.yaml
    (trials/<n>/, best/) must say population 1, or `tbjax.evaluate` on it would build a
    population's carry for the trial's lone checkpoint."""
    import dataclasses

    import optuna

    from tbjax.config import dump_config, lone_learner

    runner = setup["runner"]
    base = runner.base_cfg
    runner.base_cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, population=4, ensemble_top_k=2))
    try:
        study = optuna.create_study(direction="maximize")
        member = runner.plan(study.ask())
    finally:
        runner.base_cfg = base
    assert member.cfg.train.population == 1 and member.cfg.train.ensemble_top_k is None
    assert dump_config(member.cfg) == dump_config(lone_learner(member.cfg))


def test_a_trial_stops_as_training_does_when_its_objective_stops_improving(setup, tmp_path):
    """train.patience in HPO: a trial whose regime objective sets no new best for `patience`
    objectives ends there, COMPLETE, its value the best so far; the rule replayed on its own
    objective series says exactly where. With a learning rate of 1e-9 the policy barely moves (only
    the observation statistics do), so a patience of 1 stops the trial well before update 8."""
    import dataclasses
    import math

    from tbjax.run.patience import Patience

    base = setup["cfg"]
    cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, patience=1, total_env_steps=1024))
    runner = TrialRunner(cfg, setup["runner"].exp, setup["runner"].space, tmp_path / "patience")
    runner.trainers = setup["runner"].trainers  # the same compiled program: nothing to recompile
    study, _ = _run(runner, [{"ppo.learning_rate": 1e-9}], batch=1)
    (trial,) = study.get_trials()
    series = trial.user_attrs["objective_series"]
    rule, stop = Patience(1, 1), None
    for u, v in series:
        if rule.record(0, v > max([w for x, w in series if x < u], default=-math.inf)):
            stop = u
            break
    assert trial.state == TrialState.COMPLETE and stop is not None and stop < 8
    assert trial.user_attrs["stopped_early"] == {"update": stop, "patience": 1}
    assert series[-1][0] == stop and trial.user_attrs["lr_applied"][-1][0] == stop  # no chunk after the stop
    assert trial.value == pytest.approx(max(v for _, v in series))
