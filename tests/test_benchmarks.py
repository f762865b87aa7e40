"""The benchmarks run on tiny settings and write valid JSON; their shared helpers give known answers.

Figures (steps/s, seconds, ratios) are never asserted: they depend on the machine. The SB3 side
is exercised only where stable-baselines3 is installed (the ``bench`` extra); the tbjax side
always runs. vs_sb3 and learning_speed use the same tiny trainer settings, so in one process the
second reuses the first's compiled trainer (``common.tbjax_trainer`` is cached).
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import (common, compare, learning_speed, policy_quality, run_all, sb3_side, scaling,  # noqa: E402
                        vs_sb3, walkforward_speed)
from tbjax.config import EnvConfig  # noqa: E402
from tbjax.evaluation.backtest import split_walk  # noqa: E402
from tbjax.data.market import ROLE_TRAIN, ROLE_VAL  # noqa: E402

try:
    import stable_baselines3  # noqa: F401
    HAVE_SB3 = True
except ImportError:
    HAVE_SB3 = False


@pytest.fixture(scope="module")
def tiny_market():
    return common.planted_market(2, 1_500, seed=0, window_size=8)


def test_planted_market_splits_and_oracle_inputs(tiny_market):
    pm = tiny_market
    warm = 52  # warmup_bars(8) = max(2 * 26, 8): the embargo between splits
    n = 1_500  # rows kept after the warm-up rows are dropped
    n_val = n_test = int(n * 0.15)
    n_train = n - n_val - n_test - 2 * warm
    assert pm.ranges[0] == [(0, n_train), (n_train + warm, n_train + warm + n_val), (n - n_test, n)]
    # decision bars agree with the backtest's split walk: first = start + window - 1, count = end - 1 - first
    start, count = split_walk(pm.market, ROLE_VAL, pm.window_size)
    bars = common.decision_bars(pm, 1, ROLE_VAL)
    assert (bars[0], len(bars)) == (start[1], count[1])
    # the signal column is taker_buy_ratio z-scored with TRAIN statistics: mean ~0, std ~1 on train rows
    train = pm.signal[0][: n_train]
    assert abs(train.mean()) < 0.1 and abs(train.std() - 1.0) < 0.1
    # the planted signal predicts the next bar's return (rho = 0.2, diluted slightly by shocks)
    close = pm.close[0]
    corr = np.corrcoef(pm.signal[0][:-1], close[1:] / close[:-1] - 1.0)[0, 1]
    assert 0.12 < corr < 0.28


def test_oracle_matches_a_direct_simulation(tiny_market):
    """oracle_sharpe == the best per-bar Sharpe over the threshold grid, simulated here directly."""
    pm = tiny_market
    got = common.oracle_sharpe(pm, ROLE_VAL, cost_bps=5.0)
    sig = np.concatenate([pm.signal[s][common.decision_bars(pm, s, ROLE_VAL)] for s in range(2)])
    nxt = np.concatenate([pm.close[s][t + 1] / pm.close[s][t] - 1.0
                          for s in range(2) for t in [common.decision_bars(pm, s, ROLE_VAL)]])
    pos = np.where(np.abs(sig) > got["threshold"], np.sign(sig), 0.0)
    if got["mode"] == "keep":
        for i in range(1, len(pos)):
            pos[i] = pos[i] if abs(sig[i]) > got["threshold"] else pos[i - 1]
    pnl = pos * nxt - 5e-4 * np.abs(np.diff(pos, prepend=0.0))
    assert got["sharpe_per_bar"] == pytest.approx(pnl.mean() / pnl.std(), rel=1e-9)


def test_train_fit_oracle_scores_the_train_rule_on_val(tiny_market):
    """The attainable reference: the rule with the best TRAIN Sharpe, simulated directly on val."""
    pm = tiny_market

    def simulate(role, threshold, mode):
        sig, nxt = common.oracle_inputs(pm, role)
        pos = np.where(np.abs(sig) > threshold, np.sign(sig), 0.0)
        if mode == "keep":
            for i in range(1, len(pos)):
                pos[i] = pos[i] if abs(sig[i]) > threshold else pos[i - 1]
        pnl = pos * nxt - 5e-4 * np.abs(np.diff(pos, prepend=0.0))
        return pnl.mean() / pnl.std() if pnl.std() > 0 else 0.0

    rules = [(c, m) for c in (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0) for m in ("flat", "keep")]
    best = max(rules, key=lambda r: simulate(ROLE_TRAIN, *r))
    got = common.train_fit_oracle(pm, ROLE_VAL, cost_bps=5.0)
    assert (got["threshold"], got["mode"]) == best
    assert got["sharpe_per_bar"] == pytest.approx(simulate(ROLE_VAL, *best), rel=1e-9)
    assert got["sharpe_per_bar"] <= common.oracle_sharpe(pm, ROLE_VAL, cost_bps=5.0)["sharpe_per_bar"]


def test_per_bar_sharpe_concatenates_symbols():
    # returns 0.01, 0.03 | -0.01, 0.01: mean 0.01, population std sqrt(mean of 0, 4, 4, 0 e-4) = sqrt(2) e-2
    assert common.per_bar_sharpe([np.array([0.01, 0.03]), np.array([-0.01, 0.01])]) == pytest.approx(
        1 / math.sqrt(2))
    assert common.per_bar_sharpe([np.zeros(5)]) == 0.0


def test_env_costs_are_the_fee_only(tiny_market):
    p = common.env_params(tiny_market, role=ROLE_TRAIN, fee_bps=5.0)
    assert float(p.fee_bps) == 5.0 and p.position_levels == (-1.0, 0.0, 1.0)
    assert all(float(getattr(p, k)) == 0.0 for k in ("half_spread_bps", "slippage_k", "impact_coef",
                                                     "borrow_bps_per_bar"))
    # the reward shaping (not a cost) is the default learner's, env.turnover_penalty's default
    assert float(p.turnover_penalty) == pytest.approx(EnvConfig().turnover_penalty) and EnvConfig().turnover_penalty > 0


def test_write_json_is_atomic_and_nan_safe(tmp_path):
    path = common.write_json(tmp_path / "sub" / "x.json", {"a": float("nan"), "b": np.float32(2.5)})
    data = json.loads(path.read_text())
    assert {k: v for k, v in data.items() if k != "commit"} == {"a": None, "b": 2.5}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temp file left behind


def _check_json(path, keys):
    data = json.loads(Path(path).read_text())
    assert set(keys) <= set(data)
    return data


def test_vs_sb3_tiny(tmp_path):
    out = tmp_path / "vs_sb3.json"
    assert vs_sb3.main(["--tiny", "--out", str(out)]) == 0
    data = _check_json(out, ["device", "tbjax_steps_per_s", "sb3_steps_per_s", "ratio", "versions", "settings"])
    assert data["tbjax_steps_per_s"] > 0 and data["settings"]["tbjax"]["env_steps"] == 64 * 16
    if HAVE_SB3:
        assert data["sb3_steps_per_s"] > 0 and data["ratio"] > 0
        assert data["settings"]["sb3"]["env_steps"] == 2 * 2 * 16  # 2 rollouts of 2 envs x 16 steps
    else:
        assert data["sb3_steps_per_s"] is None


def test_vs_sb3_recurrent_tiny(tmp_path):
    """tbjax's GRU against sb3-contrib's RecurrentPPO on the same tiny work."""
    out = tmp_path / "vs_sb3_recurrent.json"
    assert vs_sb3.main(["--tiny", "--policy", "gru", "--out", str(out)]) == 0
    data = _check_json(out, ["tbjax_steps_per_s", "ratio_per_policy", "settings"])
    assert data["policy"] == "gru" and data["settings"]["tbjax"]["policy"] == "gru"
    assert data["settings"]["tbjax"]["env_steps"] == 64 * 16
    if HAVE_SB3 and importlib.util.find_spec("sb3_contrib"):
        assert data["sb3_steps_per_s"] > 0 and data["ratio_per_policy"]["gru"] > 0
        assert data["settings"]["sb3"]["env_steps"] == 2 * 2 * 16


def test_learning_speed_tiny(tmp_path):
    out = tmp_path / "learning_speed.json"
    assert learning_speed.main(["--tiny", "--out", str(out)]) == 0
    data = _check_json(out, ["device", "tbjax_seconds", "sb3_seconds", "ratio", "oracle_sharpe",
                             "tbjax_reached", "sb3_reached", "markets"])
    assert set(data["markets"]) == {"rho_0.2", "rho_0.1", "rho_0"}
    head = data["markets"]["rho_0.2"]
    assert data["oracle_sharpe"] == head["oracle_sharpe"]
    assert isinstance(data["tbjax_reached"], bool)
    # the headline is the rho 0.2 market's first crossing of 80 % (the budget, 1 s, when missed)
    hit = head["tbjax"]["milestones_s"]["0.8"]
    assert data["tbjax_seconds"] == (hit if hit is not None else 1.0) and data["tbjax_reached"] == (hit is not None)
    for market in data["markets"].values():
        for side in ("tbjax", "sb3") if HAVE_SB3 else ("tbjax",):
            run = market[side]
            frac = [h["val_sharpe_per_bar"] / market["oracle_sharpe"] for h in run["history"]]
            late = frac[len(frac) - max(1, len(frac) // 3):]
            assert run["final_fraction"] == pytest.approx(frac[-1]) and run["peak_fraction"] == pytest.approx(max(frac))
            assert run["held_fraction"] == pytest.approx(np.mean(late))
            assert np.mean(late) <= run["best_third_fraction"] + 1e-9 <= max(frac) + 2e-9
            assert run["final_val_turnover"] == run["history"][-1]["val_turnover"] >= 0.0
    if not HAVE_SB3:
        assert head["sb3"] is None


def test_policy_quality_tiny(tmp_path):
    """Writes the issue's JSON keys; the tbjax ensemble is the members that beat flat on VAL."""
    out = tmp_path / "policy_quality.json"
    assert policy_quality.main(["--tiny", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert {"device", "budget_s", "markets"} <= set(doc)
    side = doc["markets"]["planted_weak"]
    assert (side["sb3"] is not None) == HAVE_SB3
    run = side["tbjax"]["runs"][0]
    val = run["members_val_sortino"]
    winners = sorted((i for i, v in enumerate(val) if v > 0), key=lambda i: -val[i])
    assert run["chosen"] == (winners or [int(np.argmax(val))])
    for key in ("sharpe", "sortino", "turnover"):
        assert math.isfinite(side["tbjax"][key]["mean"]) and side["tbjax"][key]["spread"] == 0.0  # one repetition


def test_sb3_twin_walk_matches_backtest_bars(tiny_market):
    """The SB3-side validation walk covers exactly the backtest's decision bars per symbol."""
    pytest.importorskip("stable_baselines3")
    pm = tiny_market
    params = common.env_params(pm, fee_bps=5.0, episode_len=64)
    val = common.env_params(pm, role=ROLE_VAL, fee_bps=5.0, episode_len=64)
    venv = sb3_side.sb3_vec_env(pm.market, params, 1, "dummy", 0)
    model = sb3_side.sb3_ppo(venv, 16, 1, 1, 0, window_size=pm.window_size)
    returns, turnover = learning_speed.walk_twin_split(venv, model, pm, val)
    assert [len(t) for t in turnover] == [len(r) for r in returns] and all(np.all(t >= 0) for t in turnover)
    _, count = split_walk(pm.market, ROLE_VAL, pm.window_size)
    assert [len(r) for r in returns] == list(count)
    assert all(np.all(np.isfinite(r)) for r in returns)


def test_scaling_tiny_on_two_fake_devices(tmp_path):
    out = tmp_path / "scaling.json"
    assert scaling.main(["--tiny", "--devices", "2", "--out", str(out)]) == 0
    data = _check_json(out, ["device", "kind", "results"])
    (row,) = data["results"]
    assert row["devices"] == 2 and row["env_axis_shards"] == 2 and row["finite_losses"]
    assert "not a speed claim" in data["kind"]


def test_walkforward_speed_quick(tmp_path):
    out = tmp_path / "walkforward_speed.json"
    assert walkforward_speed.main(["--quick", "--out", str(out)]) == 0
    data = _check_json(out, ["device", "results", "workload", "machine"])
    (row,) = data["results"]
    assert row["folds"] == 2 and row["updates_per_fold"] == data["workload"]["updates_per_fold"]
    for key in ("vmapped_s", "sequential_s", "ratio", "compile_s_vmapped", "compile_s_sequential"):
        assert row[key] is not None and row[key] >= 0
    # sequential: one chunk call per fold and chunk; vmapped: one per chunk for all folds
    assert row["sequential"]["chunk_calls"] == 2 * row["vmapped"]["chunk_calls"]


GPU_SH_BENCHMARKS = ("env_throughput", "train_throughput", "population", "walkforward_speed", "vs_sb3")


def test_gpu_sh_tiny_writes_every_benchmark_flat_under_out(tmp_path):
    """benchmarks/gpu.sh --tiny: the GPU run's steps at tiny shapes on the CPU. OUT gets exactly one
    JSON per benchmark (with the shapes gpu.sh asks for), gpu.log and summary.md, nothing nested."""
    out = tmp_path / "gpu"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_SH_")}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--tiny"], capture_output=True, text=True,
                          env={**env, "OUT": str(out), "PYTHON": sys.executable}, timeout=600, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{n}.json" for n in GPU_SH_BENCHMARKS]
                                                           + ["gpu.log", "summary.md"])
    doc = {n: json.loads((out / f"{n}.json").read_text()) for n in GPU_SH_BENCHMARKS}
    assert all("commit" in d for d in doc.values())  # written by common.write_json
    (row,) = doc["env_throughput"]["results"]
    assert row["n_envs"] == 32 and min(row["tbjax_steps_per_s"], row["tbjax_steps_per_s_final_obs"],
                                       row["gym_steps_per_s"]) > 0
    (row,) = doc["train_throughput"]["results"]
    assert (row["policy"], row["n_envs"]) == ("mlp", 16) and row["steps_per_s"] > 0 and row["update_gflops"] > 0
    (row,) = doc["population"]["results"]
    assert (row["members"], row["n_envs"], row["total_envs"]) == (2, 8, 16) and row["steps_per_s"] > 0
    assert doc["population"]["config"]["population"] == [2]
    (row,) = doc["walkforward_speed"]["results"]
    assert row["folds"] == 2 and row["vmapped_s"] > 0 and row["sequential_s"] > 0
    sb3 = doc["vs_sb3"]
    assert sb3["settings"]["tiny"] and sb3["settings"]["tbjax"]["n_envs"] == 64 and sb3["tbjax_steps_per_s"] > 0
    summary = (out / "summary.md").read_text()
    for name in GPU_SH_BENCHMARKS:
        assert f"| {name} | ok |" in summary and f"## {name}" in summary
    if HAVE_SB3:
        assert sb3["sb3_steps_per_s"] > 0 and "SB3 PPO" in summary
    else:  # the SB3 side is skipped, and the summary says why
        assert sb3["sb3_steps_per_s"] is None and "stable-baselines3 is not installed" in summary
    assert "| wheels | skipped |" in summary  # the packages import here: nothing to install
    assert "done in" in (out / "gpu.log").read_text()


def test_run_all_reports_ok_failed_and_missing(tmp_path, monkeypatch):
    good = tmp_path / "good.py"
    good.write_text(f"import json; open({str(tmp_path / 'good.json')!r}, 'w').write(json.dumps("
                    "{'device': 'cpu', 'results': [{'n_envs': 8, 'steps_per_s': 1.5}]}))\n")
    silent = tmp_path / "silent.py"
    silent.write_text("print('no json')\n")
    crash = tmp_path / "crash.py"
    crash.write_text("raise SystemExit(3)\n")
    recs = [run_all.run_one(run_all.Benchmark(n, n, str(tmp_path / f"{n}.py"), quick_args=()), True, tmp_path)
            for n in ("good", "silent", "crash", "absent")]
    assert [r["status"] for r in recs] == ["ok", "no-json", "failed", "missing"]
    text = run_all.write_summary(recs, True, tmp_path / "summary.md")
    assert "| n_envs | steps_per_s |" in text and "| 8 | 1.5 |" in text and "`device`: cpu" in text
    assert "CPU:" in text and "JAX backend:" in text and (tmp_path / "summary.md").read_text() == text


def test_results_name_paths_relative_to_the_repository(tmp_path):
    """Committed results and summaries must not name the machine they ran on."""
    inside = common.REPO_ROOT / "benchmarks" / "results" / "quick" / "vs_sb3.json"
    assert common.repo_relative(inside) == "benchmarks/results/quick/vs_sb3.json"
    assert common.repo_relative(tmp_path / "x.json") == str((tmp_path / "x.json").resolve())
    rec = run_all.run_one(run_all.Benchmark("absent", "absent", "absent.py", quick_args=("--quick",)), True,
                          common.REPO_ROOT / "benchmarks" / "results" / "quick")
    assert rec["command"] == "python benchmarks/absent.py --quick --out benchmarks/results/quick/absent.json"


def test_tune_defaults_quick(tmp_path):
    """The defaults study: every finished trial's objective is the documented formula of its markets."""
    from benchmarks import tune_defaults

    out = tmp_path / "tune.json"
    assert tune_defaults.main(["--quick", "--trials", "2", "--out", str(out), "--plots", str(tmp_path / "plots")]) == 0
    doc = json.loads(out.read_text())
    assert doc["trials"][0]["params"] == tune_defaults.PREVIOUS_DEFAULTS  # the study starts from them
    for trial in doc["trials"]:
        if trial["state"] != "COMPLETE":
            continue
        m = trial["markets"]
        signal = np.mean([m["rho_0.2"]["held_fraction"], m["rho_0.1"]["held_fraction"]])
        penalty = tune_defaults.TURNOVER_WEIGHT * max(0.0, m["rho_0"]["held_turnover"] - tune_defaults.TURNOVER_GOAL)
        assert trial["objective"] == pytest.approx(signal - penalty)
        held = m["rho_0.2"]["curve_fraction"][-max(1, len(m["rho_0.2"]["curve_fraction"]) // 3):]
        assert m["rho_0.2"]["held_fraction"] == pytest.approx(np.mean(held))
    assert doc["best"]["objective"] == max(t["objective"] for t in doc["trials"] if t["objective"] is not None)
    assert all(Path(p).exists() for p in doc["plots"])


def test_learning_milestones_are_first_crossings():
    history = [{"seconds": 1.0, "val_sharpe_per_bar": 0.04}, {"seconds": 2.0, "val_sharpe_per_bar": 0.075},
               {"seconds": 3.0, "val_sharpe_per_bar": 0.05}, {"seconds": 4.0, "val_sharpe_per_bar": 0.085}]
    # oracle 0.1: 0.5 -> 0.05 first met at 2 s (0.075); 0.7 -> 0.07 at 2 s; 0.8 -> 0.08 at 4 s; 0.9 never
    assert learning_speed.milestones(history, 0.1) == {"0.5": 2.0, "0.6": 2.0, "0.7": 2.0, "0.8": 4.0, "0.9": None}


def test_best_third_is_the_best_stretch_as_long_as_the_held_third():
    # 9 evaluations: thirds of 3; windows 0.2, 0.4, 0.6, 0.7, 0.7, 0.6, 0.5 -> best 0.7, held (last 3) 0.5
    curve = [0.0, 0.3, 0.3, 0.6, 0.9, 0.6, 0.6, 0.6, 0.3]
    assert common.held(curve) == pytest.approx(0.5)
    assert common.best_third(curve) == pytest.approx(0.7)
    rising = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert common.best_third(rising) == pytest.approx(common.held(rising))  # no decay: the last third is best
    assert common.best_third([0.4]) == pytest.approx(0.4)


def test_budget_learning_rate_is_the_products_schedule_over_seconds():
    """Both learners' rate in a time-budgeted run: ppo.lr_schedule with the budget's seconds as its updates."""
    lr0, lr_min = common.PPO_SETTINGS["learning_rate"], common.DEFAULT_PPO.lr_min
    rate = learning_speed.budget_learning_rate
    assert rate(0.0, 60.0, "linear") == pytest.approx(lr0)
    assert rate(15.0, 60.0, "linear") == pytest.approx(lr_min + 0.75 * (lr0 - lr_min))  # a quarter spent
    assert rate(60.0, 60.0, "linear") == pytest.approx(lr_min)
    assert rate(90.0, 60.0, "linear") == pytest.approx(lr_min)  # past the end: lr_min, as after total_updates
    assert rate(15.0, 60.0, "constant") == pytest.approx(lr0)
    assert rate(15.0, 60.0, "linear", start=2 * lr0) == pytest.approx(lr_min + 0.75 * (2 * lr0 - lr_min))


def test_sb3_bar_encoder_equals_tbjax_bar_encoder():
    """The peer benchmarks give SB3 tbjax's per-bar encoder: same weights in, same codes out."""
    pytest.importorskip("stable_baselines3")
    import gymnasium
    import jax
    import torch

    from benchmarks.sb3_encoder import BarFeatures
    from tbjax.agent.bar_encoder import BarEncoder

    window, n_features, codes = 4, 3, 2
    obs = np.random.default_rng(0).normal(size=(5, 4 + window * n_features)).astype(np.float32)
    enc = BarEncoder(window, codes)
    params = enc.init(jax.random.PRNGKey(0), obs)
    space = gymnasium.spaces.Box(-np.inf, np.inf, (obs.shape[1],), np.float32)
    peer = BarFeatures(space, window, codes)
    with torch.no_grad():
        peer.per_bar.weight.copy_(torch.tensor(np.asarray(params["params"]["per_bar"]["kernel"]).T))
        peer.per_bar.bias.copy_(torch.tensor(np.asarray(params["params"]["per_bar"]["bias"])))
        got = peer(torch.tensor(obs)).numpy()
    assert peer.features_dim == 4 + window * codes
    (want,) = enc.apply(params, obs)
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-6)


def _git(root, *args) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_write_json_records_the_commit(tmp_path):
    """Every result names the code it measured: HEAD, +dirty when tracked code differs from it."""
    head = _git(ROOT, "rev-parse", "HEAD")
    changed = _git(ROOT, "status", "--porcelain", "--untracked-files=no", "--", "tbjax", "benchmarks",
                   ":(exclude)benchmarks/results")
    data = json.loads(common.write_json(tmp_path / "x.json", {"a": 1}).read_text())
    assert data == {"commit": head + ("+dirty" if changed else ""), "a": 1}


def test_code_commit_counts_only_modified_tracked_code(tmp_path):
    """+dirty for a modified file under tbjax/ or benchmarks/; not for untracked files, other folders
    or benchmarks/results/ (the outputs); None outside a repository."""
    assert common.code_commit(tmp_path) is None
    for name in ("tbjax/a.py", "benchmarks/results/r.json", "README.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "first")
    sha = _git(tmp_path, "rev-parse", "HEAD")
    assert common.code_commit(tmp_path) == sha
    for name in ("README.md", "benchmarks/results/r.json", "tbjax/untracked.py"):
        (tmp_path / name).write_text("y\n")
    assert common.code_commit(tmp_path) == sha
    (tmp_path / "tbjax" / "a.py").write_text("y\n")
    assert common.code_commit(tmp_path) == sha + "+dirty"


def _doc(path, doc) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def test_compare_flags_only_the_rate_that_dropped(tmp_path, capsys):
    """One rate up 10 %, one down 20 % (threshold 0.15): only the second is DROP, speed 0.8, exit 1."""
    def doc(commit, rate_64, rate_256, n_trials):
        return {"commit": commit, "device": "cpu (X)", "n_trials": n_trials,
                "results": [{"n_envs": 64, "steps_per_s": rate_64}, {"n_envs": 256, "steps_per_s": rate_256}]}

    old = _doc(tmp_path / "old.json", doc("abc", 1000.0, 2000.0, 8))
    new = _doc(tmp_path / "new.json", doc("def+dirty", 1100.0, 1600.0, 4))
    out = tmp_path / "table.json"
    assert compare.main([old, new, "--write", str(out)]) == 1
    table = json.loads(out.read_text())
    speed = {r["figure"]: r["speed"] for r in table["figures"]}
    assert speed == pytest.approx({"results[n_envs=64].steps_per_s": 1.1, "results[n_envs=256].steps_per_s": 0.8})
    assert table["dropped"] == ["results[n_envs=256].steps_per_s"]  # n_trials is a count, not a figure
    text = capsys.readouterr().out
    assert "commit abc" in text and "commit def+dirty" in text and "device cpu (X)" in text
    assert [line.split()[0] for line in text.splitlines() if line.endswith("DROP")] == ["results[n_envs=256].steps_per_s"]


def test_compare_matches_rows_by_their_keys_not_their_order(tmp_path):
    """The same table in another order is no change (by position it would read 4x and 0.25x)."""
    old = _doc(tmp_path / "old.json", {"results": [{"n_envs": 64, "steps_per_s": 100.0},
                                                   {"n_envs": 256, "steps_per_s": 400.0}]})
    new = _doc(tmp_path / "new.json", {"results": [{"n_envs": 256, "steps_per_s": 400.0},
                                                   {"n_envs": 64, "steps_per_s": 100.0}]})
    rows, not_compared = compare.compare(json.loads(Path(old).read_text()), json.loads(Path(new).read_text()), 0.15)
    assert {r["figure"]: r["speed"] for r in rows} == {"results[n_envs=64].steps_per_s": 1.0,
                                                        "results[n_envs=256].steps_per_s": 1.0}
    assert not_compared == 0 and compare.main([old, new]) == 0


def test_compare_flags_a_duration_that_got_slower(tmp_path):
    """Durations: speed = old / new; 30 % longer is speed 1/1.3 < 0.85, DROP; 10 % shorter is not."""
    old = _doc(tmp_path / "old.json", {"compile_s": 10.0, "sweeps": [{"batch": 8, "wall_s": 10.0}]})
    new = _doc(tmp_path / "new.json", {"compile_s": 13.0, "sweeps": [{"batch": 8, "wall_s": 9.0}]})
    rows, _ = compare.compare(json.loads(Path(old).read_text()), json.loads(Path(new).read_text()), 0.15)
    assert [(r["figure"], r["kind"], r["drop"]) for r in rows] == [("compile_s", "duration", True),
                                                                   ("sweeps[batch=8].wall_s", "duration", False)]
    assert rows[0]["speed"] == pytest.approx(1 / 1.3) and rows[1]["speed"] == pytest.approx(10 / 9)
    assert compare.main([old, new]) == 1


def test_compare_identical_files_pass(tmp_path):
    """A shipped result against itself: every figure at speed 1, exit 0."""
    shipped = json.loads((ROOT / "benchmarks" / "results" / "train_throughput.json").read_text())
    old, new = _doc(tmp_path / "old.json", shipped), _doc(tmp_path / "new.json", shipped)
    rows, _ = compare.compare(shipped, shipped, 0.15)
    assert rows and all(r["speed"] == 1.0 and not r["drop"] for r in rows)
    assert compare.main([old, new]) == 0


def test_compare_missing_file_exits_2_with_its_path(tmp_path, capsys):
    present = _doc(tmp_path / "present.json", {"steps_per_s": 1.0})
    missing = tmp_path / "absent.json"
    assert compare.main([present, str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_generalization_quick_reads_the_walkforward_it_ran(tmp_path):
    """One market through the walk-forward driver: K folds, each fold's best update inside its budget,
    and the stitched figures equal the ones recomputed here from walkforward.json's own series."""
    from benchmarks import generalization

    out, runs = tmp_path / "generalization.json", tmp_path / "runs"
    assert generalization.main(["--quick", "--markets", "nosignal", "--out", str(out), "--keep-runs", str(runs)]) == 0
    data = _check_json(out, ["device", "results", "folds", "synthetic"])
    (row,) = data["results"]
    assert row["market"] == "nosignal" and row["folds"] == data["folds"] == 2 and len(row["fold_rows"]) == 2
    assert row["position_levels"] == [-1.0, 0.0, 1.0]
    for f in row["best_update_fractions"]:
        assert 0.0 < f <= 1.0
    assert row["abstained_folds"] is None or 0 <= row["abstained_folds"] <= 2
    for key in ("buy_and_hold_sharpe", "buy_and_hold_sortino", "turnover", "seconds"):
        assert row[key] is not None and math.isfinite(row[key]), key

    doc = json.loads((runs / "nosignal" / "walkforward.json").read_text())
    assert len(doc["folds"]) == 2
    st = doc["stitched"]
    t = np.asarray(st["time_ms"], np.int64)
    bpy = 365 * 86_400_000 / float(np.median(np.diff(t)))  # 24/7 hourly bars: 8,760 a year
    assert bpy == pytest.approx(8760.0)
    bh = np.asarray(st["buy_and_hold_returns"], np.float64)
    assert len(bh) == row["stitched_bars"] == len(t)
    assert row["buy_and_hold_sharpe"] == pytest.approx(bh.mean() / bh.std() * math.sqrt(bpy), rel=1e-9)
    r = np.asarray(st["returns"], np.float64)
    if r.std() > 0:
        assert row["sharpe"] == pytest.approx(r.mean() / r.std() * math.sqrt(bpy), rel=1e-9)
        for key in ("sortino", "psr_vs_zero", "psr_vs_buy_and_hold"):
            assert row[key] is not None and math.isfinite(row[key]), key
        for key in ("sharpe_ci", "sortino_ci"):
            assert len(row[key]) == 2 and row[key][0] <= row[key][1]
    else:  # every fold held flat out of sample: no Sharpe to speak of, none invented
        assert row["sharpe"] is None and row["sortino"] is None and row["turnover"] == 0.0
    # the stitched turnover is what the env charged on each bar (walkforward.json's "turnover" series),
    # which re-balancing a drifted partial or short position adds to |change of the pooled position|
    traded = np.asarray(st["turnover"], np.float64)
    assert len(traded) == len(t) and np.all(traded >= 0.0)
    assert row["turnover"] == pytest.approx(traded.mean(), rel=1e-9)
