"""tbjax.load_policy: a tiny trained run, restored from its directory alone, decides exactly as the
backtest of the same checkpoint does on the test split."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pytest

import jax

import tbjax
from tbjax.evaluation.backtest import backtest
from tbjax.run.checkpoint import RunCheckpoints
from tbjax.config import config_to_dict, dump_config, load_config
from tbjax.data.export import export_dataset
from tbjax.data.prepare import prepare
from tbjax.data.synthetic_dump import write_synthetic_dump
from tbjax.data.market import ROLE_TEST, ROLE_TRAIN
from tbjax.errors import InputError
from tbjax.run.assembly import env_params_from_config, hparams_from_config, spec_from_config
from tbjax.run.experiment import build_experiment
from tbjax.env.protocol import MarketEnv
from tbjax.learner.trainer import make_trainer

WINDOW = 32


def tiny_config(processed_dir) -> list[str]:
    """--set overrides of a run small enough for a unit test (1h synthetic bars from 2020-01-01)."""
    return [f"data.processed_dir={processed_dir}", "data.train_start=2020-01-01", "data.train_end=2020-01-24",
            "data.val_start=2020-01-25", "data.val_end=2020-01-31", "data.test_start=2020-02-01",
            "data.test_end=2020-02-28", f"env.window_size={WINDOW}", "env.episode_len=16",
            "env.position_levels=[-1.0, 0.0, 0.5, 1.0]", "ppo.n_envs=8", "ppo.n_steps=16", "ppo.n_epochs=1",
            "ppo.n_minibatches=2", "ppo.hidden_sizes=[16]", "ppo.num_quantiles=8", "ppo.learning_rate=3e-3",
            "train.updates_per_chunk=2", "train.total_env_steps=512", "output.tensorboard=false",
            "train.population=1",  # _train_tiny_run trains one learner by hand (population runs: test_population)
            "eval.edge_confidence=0", "train.patience=0"]  # the agent's policy (abstention: tests/run/test_do_no_harm.py)


def _train_tiny_run(root, extra: tuple[str, ...] = ()):
    """Prepared synthetic data → experiment → 2 chunks of training → run directory with the best
    checkpoint after chunk 1 and the latest after chunk 2 (the files train.py writes)."""
    write_synthetic_dump(root / "raw", symbols=2, bars=1000, timeframe="1h", seed=3, signal=0.3)
    prepare(root / "raw", root / "processed", window_size=WINDOW, log=lambda *_: None)
    cfg = load_config(None, tiny_config(root / "processed") + list(extra))
    exp = build_experiment(cfg, with_regimes=False)
    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(cfg))
    exp.pipeline.save(str(run / "feature_pipeline.json"))
    export_dataset(run / "dataset", exp.tables, exp.roles, exp.bounds, config_to_dict(cfg)["features"],
                   exp.data_hashes)

    env_params = env_params_from_config(cfg, ROLE_TRAIN)
    hp = hparams_from_config(cfg, env_params)
    trainer = make_trainer(spec_from_config(cfg, len(exp.symbols)), MarketEnv(), env_params)
    carry = trainer.init(jax.random.PRNGKey(cfg.train.seed), hp, exp.market)
    ckpt = RunCheckpoints(run)
    carry, _ = trainer.train_chunk(carry, hp, exp.market)
    ckpt.save_best(2, carry, {"update": 2, "objective": 0.5})
    best = jax.device_get((carry.params, carry.obs_stats))  # host copies: train_chunk donates the carry
    carry, _ = trainer.train_chunk(carry, hp, exp.market)
    ckpt.save_latest(4, carry, {"update": 4})
    latest = jax.device_get((carry.params, carry.obs_stats))
    ckpt.close()

    def reference(params, obs_stats):
        _, series = backtest(trainer.policy_apply, params, obs_stats, exp.market, env_params, ROLE_TEST,
                             exp.bars_per_year)
        return {sym: s["position"] for sym, s in series.items()}

    return {"run": run, "exp": exp, "cfg": cfg, "best": reference(*best), "latest": reference(*latest),
            "trainer": trainer, "best_state": best, "env_params": env_params}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return _train_tiny_run(tmp_path_factory.mktemp("policy"))


@pytest.fixture(scope="module")
def tiny_gru_run(tmp_path_factory):
    """The same run with a GRU policy (separate actor and critic cores)."""
    return _train_tiny_run(tmp_path_factory.mktemp("policy_gru"), ("ppo.policy=gru", "ppo.rnn_size=8"))


def split_bars(exp, sym: str) -> dict[str, np.ndarray]:
    """One symbol's processed rows of the test split (what a user would pass in)."""
    s = exp.symbols.index(sym)
    start, end = np.asarray(exp.market.role_start)[s, ROLE_TEST], np.asarray(exp.market.role_end)[s, ROLE_TEST]
    return {c: np.asarray(v)[start:end] for c, v in exp.tables[sym].items()}




def test_target_positions_equal_backtest_positions_of_the_same_checkpoint(tiny_run):
    exp = tiny_run["exp"]
    policy = tbjax.load_policy(tiny_run["run"])
    assert policy.checkpoint == "best" and policy.meta["step"] == 2
    assert policy.symbols == sorted(exp.symbols) and policy.window_size == WINDOW
    assert policy.feature_columns == exp.raw_features and policy.position_levels == [-1.0, 0.0, 0.5, 1.0]
    for sym in exp.symbols:
        bars = split_bars(exp, sym)
        positions = policy.target_positions(bars)
        expected = tiny_run["best"][sym]
        n = len(expected)
        assert len(positions) == len(bars["close"]) == n + WINDOW
        assert np.all(np.isnan(positions[:WINDOW - 1]))
        np.testing.assert_array_equal(positions[WINDOW - 1: WINDOW - 1 + n], expected)
        assert positions[-1] in policy.position_levels  # the decision on the last close, for the next open
    # The comparison is meaningful only if the policy actually changes its mind across bars.
    assert len(np.unique(np.concatenate(list(tiny_run["best"].values())))) >= 2


def test_load_policy_takes_trainings_cached_trainer_from_the_assembly(tiny_run, monkeypatch):
    """One assembly (tbjax.run.assembly): load_policy asks it once for the trainer, and the trainer is
    the one a training run of the same config gets from the shared cache (no second compile)."""
    from tbjax.run.assembly import Assembly, assemble

    asked = []
    real = Assembly.trainer
    monkeypatch.setattr(Assembly, "trainer", property(lambda self: asked.append(self) or real.fget(self)))
    policy = tbjax.load_policy(tiny_run["run"])
    assert len(asked) == 1
    assert policy.trainer is assemble(tiny_run["cfg"], len(tiny_run["exp"].symbols)).trainer


def test_recurrent_target_positions_equal_backtest_positions(tiny_gru_run):
    """load_policy carries the GRU state through the bars in order, from zero at the first
    decision, as the backtest does through the split."""
    exp = tiny_gru_run["exp"]
    policy = tbjax.load_policy(tiny_gru_run["run"])
    assert policy.config.ppo.policy == "gru" and policy.checkpoint == "best"
    for sym in exp.symbols:
        positions = policy.target_positions(split_bars(exp, sym))
        expected = tiny_gru_run["best"][sym]
        np.testing.assert_array_equal(positions[WINDOW - 1: WINDOW - 1 + len(expected)], expected)
    assert len(np.unique(np.concatenate(list(tiny_gru_run["best"].values())))) >= 2


def test_checkpoint_path_selects_latest_and_inputs_may_be_table_or_feather(tiny_run, tmp_path):
    exp = tiny_run["exp"]
    sym = exp.symbols[0]
    policy = tbjax.load_policy(tiny_run["run"] / "checkpoints" / "latest")
    assert policy.checkpoint == "latest" and policy.meta["step"] == 4
    bars = split_bars(exp, sym)
    n = len(tiny_run["latest"][sym])
    from_dict = policy.target_positions(bars)
    np.testing.assert_array_equal(from_dict[WINDOW - 1: WINDOW - 1 + n], tiny_run["latest"][sym])
    table = pa.table(bars)
    path = tmp_path / f"{sym}.feather"
    feather.write_feather(table, path)
    np.testing.assert_array_equal(policy.target_positions(table), from_dict)
    np.testing.assert_array_equal(policy.target_positions(str(path)), from_dict)


def test_untradable_fill_bars_keep_the_position_held_on_entry(tiny_run):
    exp = tiny_run["exp"]
    policy = tbjax.load_policy(tiny_run["run"])
    bars = split_bars(exp, exp.symbols[0])
    closed = 20  # the first 20 decisions cannot fill: the env ignores them and keeps the position
    open_market = policy.target_positions(bars, position=0.5)
    assert np.any(open_market[WINDOW - 1: WINDOW - 1 + closed] != 0.5)  # the policy would have traded
    bars["tradable"] = bars["tradable"].copy()
    bars["tradable"][WINDOW: WINDOW + closed] = False
    positions = policy.target_positions(bars, position=0.5)
    np.testing.assert_array_equal(positions[WINDOW - 1: WINDOW - 1 + closed], np.full(closed, 0.5))
    assert np.all(np.isin(positions[WINDOW - 1:], policy.position_levels))


def test_bad_bars_and_bad_run_dirs_raise_input_error(tiny_run, tmp_path):
    exp = tiny_run["exp"]
    policy = tbjax.load_policy(tiny_run["run"])
    bars = split_bars(exp, exp.symbols[0])
    missing = {k: v for k, v in bars.items() if k != exp.raw_features[0]}
    with pytest.raises(InputError, match=f"lack column.*{exp.raw_features[0]}"):
        policy.target_positions(missing)
    short = {k: v[: WINDOW - 1] for k, v in bars.items()}
    with pytest.raises(InputError, match=f"{WINDOW - 1} rows.*window_size = {WINDOW}"):
        policy.target_positions(short)
    with pytest.raises(InputError, match="not found"):
        policy.target_positions(tmp_path / "nope.feather")
    with pytest.raises(InputError, match="neither a run directory"):
        tbjax.load_policy(tmp_path)
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    for name in ("config.yaml", "feature_pipeline.json"):
        (empty_run / name).write_bytes((tiny_run["run"] / name).read_bytes())
    with pytest.raises(InputError, match="no best or latest checkpoint"):
        tbjax.load_policy(empty_run)


def test_relative_liquidity_file_is_found_where_the_run_was_trained(tiny_run, tmp_path, monkeypatch):
    """load_policy resolves a relative env.liquidity_seasonality like training and evaluate do: the
    folder in run_info.json's cwd, then the current one; the processed data is never needed."""
    import json
    import shutil

    origin, elsewhere, run = tmp_path / "trained_here", tmp_path / "elsewhere", tmp_path / "run"
    origin.mkdir()
    elsewhere.mkdir()
    (origin / "liquidity.json").write_text(json.dumps([1.0] * 168))
    shutil.copytree(tiny_run["run"], run)
    cfg = load_config(run / "config.yaml", ["env.liquidity_seasonality=liquidity.json",
                                            "data.processed_dir=gone/processed"])
    (run / "config.yaml").write_text(dump_config(cfg))
    (run / "run_info.json").write_text(json.dumps({"cwd": str(origin)}))
    monkeypatch.chdir(elsewhere)
    policy = tbjax.load_policy(run)
    assert policy.config.env.liquidity_seasonality == str(origin / "liquidity.json")
    assert policy.config.data.processed_dir == "gone/processed"  # not needed, kept as written
    exp = tiny_run["exp"]
    bars = split_bars(exp, exp.symbols[0])
    original = tbjax.load_policy(tiny_run["run"])  # all-ones multipliers trade as no seasonality
    np.testing.assert_array_equal(policy.target_positions(bars), original.target_positions(bars))
    (run / "run_info.json").unlink()  # neither the training folder nor the current one holds it
    with pytest.raises(InputError, match="env.liquidity_seasonality 'liquidity.json'.*relative path"):
        tbjax.load_policy(run)


@pytest.mark.parametrize("column, row, value, fragment", [
    ("close", 40, np.nan, "price column 'close' at row 40"),
    ("open", 3, -1.0, "price column 'open' at row 3"),
    ("FEATURE", 50, np.inf, "at row 50 is inf"),
    ("open_time", 45, "DUP", "row 45 .* is duplicated"),
    ("open_time", 45, "SWAP", "row 45 .* is out of order"),
])
def test_target_positions_refuse_nan_prices_features_and_unsorted_times(tiny_run, column, row, value, fragment):
    exp = tiny_run["exp"]
    policy = tbjax.load_policy(tiny_run["run"])
    bars = {k: np.array(v, copy=True) for k, v in split_bars(exp, exp.symbols[0]).items()}
    if column == "FEATURE":
        column = exp.raw_features[0]
        bars[column] = bars[column].astype(np.float64)
    if value == "DUP":
        bars["open_time"][row] = bars["open_time"][row - 1]
    elif value == "SWAP":
        bars["open_time"][[row - 1, row]] = bars["open_time"][[row, row - 1]]
    else:
        bars[column] = bars[column].astype(np.float64)
        bars[column][row] = value
    with pytest.raises(InputError, match=fragment):
        policy.target_positions(bars)


def test_stochastic_evaluation_from_the_config_is_seeded_and_reproducible(tiny_run):
    import dataclasses

    from tbjax.evaluation.scoring import evaluate_split

    cfg = load_config(None, tiny_config(tiny_run["cfg"].data.processed_dir) + ["eval.deterministic=false"])
    exp = dataclasses.replace(tiny_run["exp"], cfg=cfg)
    args = (tiny_run["trainer"].policy_apply, *tiny_run["best_state"], tiny_run["env_params"], ROLE_TEST)
    (first, s1), (second, s2) = evaluate_split(exp, *args), evaluate_split(exp, *args)
    assert first["deterministic"] is False
    assert first["pooled"] == second["pooled"]
    for sym in exp.symbols:
        np.testing.assert_array_equal(s1[sym]["position"], s2[sym]["position"])
    # sampling differs from the argmax policy somewhere (an untrained policy is far from certain)
    assert any(not np.array_equal(s1[sym]["position"], tiny_run["best"][sym]) for sym in exp.symbols)
