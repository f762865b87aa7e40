"""Walk-forward folds (tbjax.walkforward.folds, tbjax.walkforward.driver, python -m tbjax.walkforward), tiny budget.

Checks: K folds vmapped equal K sequential runs; one compile of the vmapped chunk for K folds; each
fold's feature statistics come from its own train rows only; the stitched out-of-sample series has no
gaps or overlaps; each fold's saved policy (MLP and GRU) trades as the walk-forward did; `tbjax.evaluate`
on a fold's folder gives the walk-forward's val/test numbers for that fold; the stitched turnover is
what the env charged; bad plans exit 2 with one message.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from tbjax.cli import walkforward as wf_cli
from tbjax.config import load_config
from tbjax.data.processed import load_processed
from tbjax.run.chunks import Chunk
from tbjax.run.member_book import MemberBook
from tbjax.walkforward import driver as wfm
from tbjax.walkforward.folds import union_times
from tiny_run_config import synthetic_market

TINY = [
    "ppo.n_envs=8", "ppo.n_steps=16", "ppo.n_epochs=2", "ppo.n_minibatches=2", "ppo.hidden_sizes=[16, 16]",
    "ppo.num_quantiles=8", "env.episode_len=64", "train.total_env_steps=512", "train.updates_per_chunk=2",
    "train.eval_every=2", "walkforward.seeds=1", "walkforward.folds=2",
    "eval.edge_confidence=0", "train.patience=0",  # the folds' agents (abstention: tests/run/test_do_no_harm.py)
]


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf")
    return synthetic_market(root, "proc", symbols=2, bars=1500, timeframe="1h", seed=0)


def config(processed, *extra):
    return load_config("configs/base.yaml", TINY + [f"data.processed_dir={processed}", *extra])


@pytest.fixture(scope="module")
def trained(processed):
    wf = wfm.build_folds(config(processed))
    wfm.train_vmapped(wf)
    vmapped = [(b[0], b[1]) for b in wf.best]
    rows, stitched = wfm.fold_results(wf)
    return wf, vmapped, rows, stitched


def test_vmapped_equals_sequential(trained, processed):
    vmapped = trained[1]
    seq = wfm.build_folds(config(processed))
    wfm.train_sequential(seq)
    for (v_score, v_update), (s_score, s_update, *_) in zip(vmapped, seq.best):
        assert v_update == s_update
        assert v_score == pytest.approx(s_score, rel=1e-3, abs=1e-3)


def test_best_carry_is_chosen_by_the_val_objective(trained):
    wf, rows = trained[0], trained[2]
    for k, (fd, row) in enumerate(zip(wf.folds, rows)):
        assert fd.regimes is not None and fd.regimes.features.shape[-1] == fd.market.features.shape[-1]
        objective = wfm.objective_of(wf.cfg, row["val_sortino"], row["regime_sortino"])
        assert set(row["regime_sortino"]) == {"choppy", "trend"}
        assert row["val_objective"] == pytest.approx(objective, rel=1e-5, abs=1e-6) == pytest.approx(wf.best[k][0])


def test_regime_markets_use_each_folds_pipeline_and_zero_weights_skip_them(trained, processed):
    wf = trained[0]
    assert wf.folds[0].regimes.features is wf.folds[1].regimes.features  # same raw regime bars, once
    for fd in wf.folds:
        np.testing.assert_array_equal(np.asarray(fd.regimes.scaling.shift), fd.pipeline.scaling()[0])
    a, b = (np.asarray(fd.regimes.scaling.shift) for fd in wf.folds)
    assert not np.allclose(a, b)  # two folds' z-scores
    plain = wfm.build_folds(config(processed, "eval.w_choppy=0", "eval.w_trend=0"))
    assert all(fd.regimes is None for fd in plain.folds)


def test_one_compile_for_k_folds(trained):
    wf = trained[0]
    chunk = wfm.fold_program(wf)[0].chunk
    assert len(wf.folds) == 2 and chunk._cache_size() == 1
    from tbjax.learner.walk import walk

    carry = wf.best[0][2]
    wfm.evaluate_fold(wf, 0, carry.params, carry.obs_stats, wfm.ROLE_VAL)
    compiled = walk._cache_size()
    for k in range(len(wf.folds)):  # the folds' train splits differ in length; their walks do not
        for role in (wfm.ROLE_VAL, wfm.ROLE_TEST):
            wfm.evaluate_fold(wf, k, carry.params, carry.obs_stats, role)
    assert walk._cache_size() == compiled


def test_the_vmapped_folds_share_one_market_and_stack_only_their_statistics(trained):
    """The folds' program gets the market's arrays once (no fold axis) and, per fold, only its role
    ranges and the z-score statistics fit on that fold's train rows (refit here by hand)."""
    wf = trained[0]
    data = wfm.fold_program(wf)[1]
    one = wf.folds[0].market
    k = len(wf.folds)
    for name in ("features", "open", "close", "volatility", "volume", "tradable", "hour_of_week", "lengths"):
        assert getattr(data, name).shape == getattr(one, name).shape, name  # no fold axis
        assert all(getattr(fd.market, name) is getattr(one, name) for fd in wf.folds), name  # one copy
    assert data.role_start.shape == data.role_end.shape == (k, one.n_symbols, 3)
    assert data.scaling.shift.shape == data.scaling.scale.shape == (k, one.n_features)
    cols = [c.removesuffix("_z") for c in one.feature_names]
    for i, fd in enumerate(wf.folds):
        train = np.concatenate([np.stack([np.asarray(t[c], np.float64) for c in cols], 1)[slice(*fd.ranges[s][0])]
                                for s, t in wf.tables.items()])
        mean, std = train.mean(0), np.maximum(train.std(0), wf.cfg.features.std_floor)
        np.testing.assert_allclose(np.asarray(data.scaling.shift[i]), mean.astype(np.float32), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(np.asarray(data.scaling.scale[i]), (1.0 / std).astype(np.float32), rtol=1e-5)
        np.testing.assert_array_equal(np.asarray(data.role_start[i])[:, 0], [fd.ranges[s][0][0] for s in one.symbols])
        np.testing.assert_array_equal(np.asarray(data.role_end[i])[:, 2], [fd.ranges[s][2][1] for s in one.symbols])


def test_fold_statistics_use_only_that_folds_train_rows(processed):
    cfg = config(processed)
    tables, columns = load_processed(cfg)[:2]
    base = wfm.build_folds(cfg, (tables, columns))
    cut = base.folds[0].fold.train[1]  # union bars after fold 0's train end
    union = union_times(tables)
    perturbed = {}
    for s, t in tables.items():
        t = dict(t)
        late = np.asarray(t["open_time"], np.int64) >= union[cut]
        for c in columns:
            t[c] = np.where(late, np.asarray(t[c], np.float64) * 3.0 + 7.0, t[c])
        perturbed[s] = t
    other = wfm.build_folds(cfg, (perturbed, columns))
    np.testing.assert_array_equal(base.folds[0].pipeline.mean, other.folds[0].pipeline.mean)
    np.testing.assert_array_equal(base.folds[0].pipeline.std, other.folds[0].pipeline.std)
    assert not np.allclose(base.folds[1].pipeline.mean, other.folds[1].pipeline.mean)


def test_stitched_series_has_no_gaps_or_overlaps(trained):
    wf, stitched = trained[0], trained[3]
    times = stitched["time_ms"]
    assert np.all(np.diff(times) > 0)
    union = union_times(wf.tables)
    expected = np.concatenate([union[fd.fold.segment[0]:fd.fold.segment[1]] for fd in wf.folds])
    np.testing.assert_array_equal(times, expected)
    assert expected[-1] == union[-1]  # the segments reach the last bar
    assert len(stitched["returns"]) == len(stitched["buy_and_hold_returns"]) == len(times)


def test_cli_writes_outputs(processed, tmp_path):
    argv = ["--config", "configs/base.yaml", "--run-dir", str(tmp_path / "run"), "--quiet"]
    for s in TINY + [f"data.processed_dir={processed}"]:
        argv += ["--set", s]
    assert wf_cli.main(argv) == 0
    doc = json.loads((tmp_path / "run" / "walkforward.json").read_text())
    assert len(doc["folds"]) == 2 and "is_it_real" in doc["stitched"]
    assert "stitched" in (tmp_path / "run" / "report.md").read_text()
    assert (tmp_path / "run" / "walkforward_equity.png").stat().st_size > 0


@pytest.mark.parametrize("bad", [["--folds", "40"], ["--set", "walkforward.step_bars=10", "--set",
                                                      "walkforward.test_bars=100"],
                                 ["--set", "walkforward.val_bars=10"]])
def test_bad_plans_exit_2_with_one_message(processed, tmp_path, capsys, bad):
    argv = ["--config", "configs/base.yaml", "--run-dir", str(tmp_path / "run"), "--quiet",
            "--set", f"data.processed_dir={processed}"] + bad
    assert wf_cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "walkforward." in err[0]
    assert not (tmp_path / "run").exists()


def test_plan_tiles_the_end_and_rolling_keeps_train_length(processed):
    from tbjax.walkforward.folds import plan_folds

    cfg = config(processed, "walkforward.folds=3")
    folds = plan_folds(cfg, 2000)
    assert folds[-1].segment[1] == 2000 and all(a.segment[1] == b.segment[0] for a, b in itertools.pairwise(folds))
    assert all(f.train[0] == 0 and f.train[1] < f.val[0] < f.val[1] < f.test[0] for f in folds)
    assert all(f.test[0] == f.segment[0] - cfg.env.window_size for f in folds)
    rolling = plan_folds(config(processed, "walkforward.folds=3", "walkforward.train_mode=rolling",
                                "walkforward.train_bars=300"), 2000)
    assert {f.train[1] - f.train[0] for f in rolling} == {300}


def test_a_diverged_fold_stops_alone(trained):
    wf = trained[0]
    saved_book, saved_div = wf.book, dict(wf.diverged)
    try:
        hooks = wfm.BestByVal(wf, 0, None, len(wf.folds))
        hooks.diverged(1, RuntimeError("loss is NaN"), Chunk(0, 2, True, False))
        assert hooks.alive() == [True, False]
        wf.book = MemberBook(len(wf.folds), keep_first=True)  # fold 1 diverged before its first evaluation
        wf.book.offer(0, *saved_book.best(0))
        with pytest.raises(wfm.InputError, match="walkforward fold 1 diverged"):
            wfm.fold_results(wf)
    finally:
        wf.book, wf.diverged = saved_book, saved_div


def test_spans_given_as_durations_are_bars_at_the_datas_rate(processed):
    from tbjax.walkforward.folds import bars_per_day, plan_folds

    union = union_times(load_processed(config(processed))[0])
    per_day = bars_per_day(union)
    assert per_day == pytest.approx(24.0)  # synthetic hourly bars without gaps
    in_bars = plan_folds(config(processed, "walkforward.test_bars=120", "walkforward.val_bars=96",
                                "walkforward.embargo_bars=48"), len(union), per_day)
    as_time = plan_folds(config(processed, "walkforward.test_bars=5d", "walkforward.val_bars=96h",
                                "walkforward.embargo_bars=2d"), len(union), per_day)
    assert in_bars == as_time
    with pytest.raises(wfm.InputError, match="walkforward.test_bars '5x' is not a length of time"):
        plan_folds(config(processed, "walkforward.test_bars=5x"), len(union), per_day)


@pytest.fixture(scope="module")
def trained_gru(processed):
    """The same plan with a recurrent policy (ppo.policy=gru), trained vmapped over the folds."""
    wf = wfm.build_folds(config(processed, "ppo.policy=gru", "ppo.rnn_size=8"))
    wfm.train_vmapped(wf)
    return wf, None, *wfm.fold_results(wf)


@pytest.mark.parametrize("run", ["trained", "trained_gru"])
def test_each_folds_saved_policy_trades_as_the_walkforward_did(run, request, tmp_path):
    """folds/fold_<k> restores with tbjax.load_policy and decides on fold k's test bars exactly as the
    walk-forward's backtest of that fold's best carry (the stitched series' positions). With a GRU,
    load_policy must carry the hidden state through each symbol's bars in order from its start, as
    the walk-forward's backtest did, or the positions drift apart after the first bar."""
    import tbjax
    from tbjax.walkforward.outputs import save_fold_runs

    wf, stitched = request.getfixturevalue(run)[0], request.getfixturevalue(run)[3]
    assert (wf.cfg.ppo.policy == "gru") == (run == "trained_gru")
    window = wf.cfg.env.window_size
    folders = save_fold_runs(tmp_path, wf)
    for k, (fd, folder) in enumerate(zip(wf.folds, folders)):
        policy = tbjax.load_policy(folder)
        assert policy.checkpoint == "best" and policy.meta["fold"] == k and policy.meta["update"] == wf.best[k][1]
        carry = wf.best[k][2]
        _, series = wfm.evaluate_fold(wf, k, carry.params, carry.obs_stats, wfm.ROLE_TEST)
        for sym, table in wf.tables.items():
            lo, hi = fd.ranges[sym][2]
            positions = policy.target_positions({c: np.asarray(v)[lo:hi] for c, v in table.items()})
            expected = series[sym]["position"]
            np.testing.assert_array_equal(positions[window - 1: window - 1 + len(expected)], expected)
            in_stitched = np.isin(stitched["time_ms"], series[sym]["time_ms"])
            assert in_stitched.sum() == len(expected)  # one symbol: the stitched bars are this fold's bars
        meta = json.loads((folder / "fold.json").read_text())
        assert meta["time_ms"]["segment"][0] == union_times(wf.tables)[fd.fold.segment[0]]


def test_walkforward_seeds_1_trains_lone_folds_and_null_follows_train_population(processed):
    """``walkforward.seeds: 1`` trains ONE learner per fold whatever train.population says: the folds'
    config (saved as folds/fold_<k>/config.yaml) must say population 1, or evaluating a fold's folder
    would build a population's carry for a lone learner's checkpoint. ``null`` takes
    train.population: each fold then trains that many seeds, as tbjax.train would."""
    from tbjax.config import dump_config, lone_learner

    cfg = config(processed, "train.population=4", "train.ensemble_top_k=2", "train.population_jitter=0.1")
    wf = wfm.build_folds(cfg)
    assert wf.seeds == 1 and wf.n_members == len(wf.folds)
    assert (wf.cfg.train.population, wf.cfg.train.ensemble_top_k, wf.cfg.train.population_jitter) == (1, None, 0.0)
    assert wf.cfg.ppo == cfg.ppo and wf.cfg.data == cfg.data and wf.cfg.train.seed == cfg.train.seed
    assert dump_config(lone_learner(cfg)) == dump_config(wf.cfg)
    follows = wfm.build_folds(config(processed, "train.population=3", "walkforward.seeds=null"))
    assert follows.seeds == 3 and follows.n_members == 3 * len(follows.folds)
    assert follows.cfg.train.population == 3  # each fold folder is a population run of 3


# a base split over the synthetic bars (2020-01-01 .. 2020-03-03), as a user's config for tbjax.train would
# have: its val and test overlap the folds' TRAIN and test rows, so a fold folder must not keep it
BASE_SPLIT = {"train_start": "2020-01-01", "train_end": "2020-02-09", "val_start": "2020-02-10",
              "val_end": "2020-02-20", "test_start": "2020-02-21", "test_end": "2020-03-03"}


def test_each_fold_folder_evaluates_its_own_val_and_test_as_the_walkforward_did(trained, tmp_path, capsys):
    """Issue 27 item 4: `python -m tbjax.evaluate --run-dir folds/fold_<k>` scores exactly fold k's val
    and test bars with its own statistics: every val/test number in walkforward.json, the first and
    last bar of each, and the deployment decision come out again (the same compiled walk, so equal
    to float precision), while the config's own data.* split (BASE_SPLIT) is ignored."""
    import dataclasses

    from tbjax.cli import evaluate as evaluate_cli
    from tbjax.run.reevaluate import evaluate_run
    from tbjax.walkforward.outputs import save_fold_runs, write_outputs

    wf, _, rows, stitched = trained
    user = dataclasses.replace(wf, cfg=dataclasses.replace(wf.cfg, data=dataclasses.replace(wf.cfg.data, **BASE_SPLIT)))
    save_fold_runs(tmp_path, user, rows)  # what python -m tbjax.walkforward writes
    write_outputs(tmp_path, rows, stitched, "vmapped")
    doc = json.loads((tmp_path / "walkforward.json").read_text())
    union = union_times(wf.tables)
    for k, row in enumerate(doc["folds"]):
        folder = tmp_path / "folds" / f"fold_{k}"
        assert evaluate_cli.main(["--run-dir", str(folder)]) == 0, capsys.readouterr().err
        _, series = evaluate_run(folder, "best", ("val", "test"))
        for split in ("val", "test"):
            ev = json.loads((folder / "eval" / f"{split}.json").read_text())
            for key in wfm.SUMMARY_KEYS:
                assert ev["pooled"][key] == pytest.approx(row[split][key], rel=1e-9, abs=1e-12), (k, split, key)
                for sym, m in row[split]["per_symbol"].items():
                    assert ev["per_symbol"][sym][key] == pytest.approx(m[key], rel=1e-9, abs=1e-12), (k, split, sym)
            assert ev["deployed"]["policy"] == row["deployed"]
            times = np.concatenate([s["time_ms"] for s in series[split].values()])
            assert (times.min(), times.max()) == (row[f"{split}_start_ms"], row[f"{split}_end_ms"]), (k, split)
        assert json.loads((folder / "eval" / "val.json").read_text())["objective"] == pytest.approx(
            row["val_objective"], rel=1e-9, abs=1e-12)
        fd = wf.folds[k]
        assert row["test_start_ms"] == union[fd.fold.segment[0]] and row["test_end_ms"] == union[fd.fold.segment[1] - 1]
        assert row["val_start_ms"] == union[fd.fold.val[0] + wf.cfg.env.window_size]  # the first marked val bar


def test_stitched_turnover_is_what_the_env_charged(trained):
    """Issue 27 item 5: a fold holding a constant 0.5 long trades every bar (the env rebalances the
    fraction the price drift moved), though its target position never changes. The stitched turnover
    must be the env's: per symbol 0.5 on fold 0's first bar (from flat), then
    0.5 - p_open with p_open = 0.5 (1 + R) / (1 + 0.5 R), R = open_{t+1} / open_t - 1 (costs scale
    equity pro rata and leave the fraction alone; tbjax/env/costs.py), averaged over the symbols.
    The stitched series is one account rolled through the folds, so a later fold's first bar is no
    entry from flat but the same drift rebalance (its account arrives holding the drifted 0.5); each
    fold's own row is walked from flat and pays the 0.5 entry.
    """
    import dataclasses
    from types import SimpleNamespace

    from tbjax.evaluation.deployment import ConstantPolicy

    wf = trained[0]
    assert list(wf.cfg.env.position_levels) == [0.0, 0.5, 1.0] and wf.cfg.eval.edge_confidence == 0
    half = dataclasses.replace(wf, trainer=SimpleNamespace(policy_apply=ConstantPolicy("discrete", 1)))
    rows, stitched = wfm.fold_results(half)
    window, expected, ends = wf.cfg.env.window_size, [], {}
    for k, fd in enumerate(wf.folds):
        per_symbol = []
        for sym, table in wf.tables.items():
            o = np.asarray(table["open"], np.float64)
            lo, hi = fd.ranges[sym][2]
            start, n = lo + window - 1, hi - 1 - (lo + window - 1)
            assert np.all(np.asarray(table["tradable"])[start + 1:start + n + 1])
            assert k == 0 or start == ends[sym]  # this fold's first fill bar follows the previous fold's last
            ends[sym] = start + n
            # 1 + R for every decision; a later fold's first fill follows the previous fold's last one
            growth = o[start + 1:start + n + 1] / o[start:start + n]
            rebalance = 0.5 - 0.5 * growth / (1.0 + 0.5 * (growth - 1.0))
            per_symbol.append(np.concatenate([[0.5], rebalance[1:]]) if k == 0 else rebalance)
        expected.append(np.mean(np.abs(per_symbol), axis=0))  # the synthetic symbols share their bar times
    firsts = sum(e[0] for e in expected[1:])  # later folds' first bars in the rolled account
    expected = np.concatenate(expected)
    assert np.all(stitched["position"] == 0.5)  # |delta position| would be 0.5 once, then 0
    m = stitched["metrics"]
    assert m["turnover_total"] == pytest.approx(expected.sum(), rel=1e-4)
    assert m["turnover"] == pytest.approx(expected.mean(), rel=1e-4)
    np.testing.assert_allclose(stitched["turnover"], expected, rtol=2e-3, atol=2e-7)
    # the folds' own test turnovers (each from flat) add up to the stitched ones plus one 0.5 entry
    # for every later fold, less the drift rebalance its first bar has in the rolled account
    per_fold = sum(r["test"]["turnover"] * r["test"]["n_bars"] for r in rows)
    assert m["turnover_total"] == pytest.approx(per_fold - 0.5 * (len(wf.folds) - 1) + firsts, rel=1e-6, abs=1e-5)
    delta = np.abs(np.diff(np.concatenate([[0.0], stitched["position"]]))).sum()
    # the |delta position| fallback would see one trade; the env charged it plus every drift rebalance
    assert delta == 0.5 and m["turnover_total"] - delta == pytest.approx(expected[1:].sum(), rel=1e-4)
    assert expected[1:].sum() > 2 * delta


def test_folds_holding_buy_and_hold_stitch_to_buy_and_hold_with_one_entry(trained):
    """Folds that all hold 1.0 long (what a long-only run deploys when val finds no edge) are one
    buy-and-hold account: the stitched series enters once, on fold 0's first bar, and from then on
    earns exactly buy-and-hold's close-to-close return on every bar, fold boundaries included (at a
    position of 1 the price drift leaves the fraction at 1, so nothing is traded again). Each fold's
    own row is walked from flat and pays its own entry."""
    import dataclasses
    from types import SimpleNamespace

    from tbjax.evaluation.deployment import ConstantPolicy

    wf = trained[0]
    assert list(wf.cfg.env.position_levels)[2] == 1.0 and len(wf.folds) >= 2
    held = dataclasses.replace(wf, trainer=SimpleNamespace(policy_apply=ConstantPolicy("discrete", 2)))
    rows, stitched = wfm.fold_results(held)
    assert np.all(stitched["position"] == 1.0)
    np.testing.assert_allclose(stitched["returns"][1:], stitched["buy_and_hold_returns"][1:], rtol=1e-4, atol=1e-7)
    assert stitched["turnover"][0] == pytest.approx(1.0) and np.all(np.abs(stitched["turnover"][1:]) < 1e-6)
    assert stitched["returns"][0] < stitched["buy_and_hold_returns"][0]  # the one entry: no gap, a fee
    for r in rows:
        assert r["test"]["turnover"] * r["test"]["n_bars"] == pytest.approx(1.0, abs=1e-5)
