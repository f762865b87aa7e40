"""YAML search space → Optuna suggestions: bounds honoured, user-set keys fixed, bad spaces rejected."""

import dataclasses
import math

import optuna
import pytest
import yaml

from tbjax.config import load_config
from tbjax.errors import InputError
from tbjax.hpo.space import DEFAULT_SPACE, build_search_space, parse_param, user_set_keys

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _config(tmp_path, body: dict, overrides=None):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(body))
    cfg = load_config(path, overrides)
    return cfg, user_set_keys(path, overrides)


def _samples(space, n=60, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(space.suggest(trial))
        study.tell(trial, 0.0)
    return out


def test_default_risk_space_and_user_bounds(tmp_path):
    cfg, keys = _config(tmp_path, {"hpo": {"space": {
        "ppo.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
        "ppo.n_steps": {"type": "int", "low": 16, "high": 64, "step": 16}}}})
    space = build_search_space(cfg, keys)
    assert space.keys == ["ppo.cvar_alpha", "ppo.cvar_weight", "ppo.learning_rate", "ppo.n_steps"]
    assert space.static_keys == ["ppo.n_steps"]
    draws = _samples(space)
    alphas = [d["ppo.cvar_alpha"] for d in draws]
    weights = [d["ppo.cvar_weight"] for d in draws]
    lrs = [d["ppo.learning_rate"] for d in draws]
    assert all(0.01 <= a <= 0.20 for a in alphas)
    assert all(0.1 <= w <= 2.0 for w in weights)
    assert all(1e-5 <= lr <= 1e-3 for lr in lrs)
    assert {d["ppo.n_steps"] for d in draws} <= {16, 32, 48, 64}
    # log scale: the median of log-uniform draws on [1e-5, 1e-3] sits near 1e-4, not near 5e-4
    lrs.sort()
    assert 10 ** -4.6 < lrs[len(lrs) // 2] < 10 ** -3.4
    # a suggestion lands in the trial's config
    trial_cfg = space.apply(cfg, draws[0])
    assert trial_cfg.ppo.learning_rate == draws[0]["ppo.learning_rate"]
    assert trial_cfg.ppo.n_steps == draws[0]["ppo.n_steps"]


def test_user_set_keys_are_not_suggested(tmp_path):
    cfg, keys = _config(tmp_path, {"ppo": {"cvar_alpha": 0.05}, "hpo": {"space": {
        "ppo.gamma": {"type": "float", "low": 0.9, "high": 0.99}}}}, overrides=["ppo.gamma=0.97"])
    assert {"ppo.cvar_alpha", "ppo.gamma"} <= keys and "ppo.cvar_weight" not in keys
    assert "hpo.space" in keys and not any(k.startswith("hpo.space.") for k in keys)
    space = build_search_space(cfg, keys)
    assert space.keys == ["ppo.cvar_weight"]
    assert set(space.fixed) == {"ppo.cvar_alpha", "ppo.gamma"}
    draw = _samples(space, n=1)[0]
    trial_cfg = space.apply(cfg, draw)
    assert trial_cfg.ppo.cvar_alpha == 0.05 and trial_cfg.ppo.gamma == 0.97
    assert DEFAULT_SPACE["ppo.cvar_weight"]["log"] is True


def test_list_choices_round_trip(tmp_path):
    cfg, keys = _config(tmp_path, {"hpo": {"space": {
        "ppo.hidden_sizes": {"type": "categorical", "choices": [[16], [32, 32]]}}}})
    space = build_search_space(cfg, keys)
    seen = {tuple(d["ppo.hidden_sizes"]) for d in _samples(space, n=30)}
    assert seen == {(16,), (32, 32)}
    assert space.apply(cfg, {"ppo.hidden_sizes": [32, 32]}).ppo.hidden_sizes == [32, 32]


@pytest.mark.parametrize("key, entry, words", [
    ("ppo.learning_rate", {"type": "float", "low": 1e-3, "high": 1e-4}, "must be below high"),
    ("ppo.learning_rate", {"type": "float", "low": 0.0, "high": 1e-3, "log": True}, "needs low > 0"),
    ("ppo.learnig_rate", {"type": "float", "low": 1e-5, "high": 1e-3}, "unknown or non-searchable"),
    ("env.fee_bps", {"type": "float", "low": 0.0, "high": 5.0}, "market costs are not searchable"),
    ("ppo.gamma", {"type": "float", "low": 0.9, "high": 1.5}, "breaks a config rule"),
    ("ppo.n_envs", {"type": "float", "low": 8, "high": 16}, "integer setting"),
    ("ppo.hidden_sizes", {"type": "categorical", "choices": [[16], "wide"]}, "does not fit"),
    ("ppo.gamma", {"type": "uniform", "low": 0.9, "high": 0.99}, "type must be"),
    ("ppo.n_steps", {"type": "int", "low": 8, "high": 64, "step": 8, "log": True}, "cannot combine"),
])
def test_invalid_entries_are_config_errors(tmp_path, key, entry, words):
    cfg, keys = _config(tmp_path, {"hpo": {"space": {key: entry}}})
    with pytest.raises(InputError) as err:
        build_search_space(cfg, keys)
    assert words in str(err.value) and key in str(err.value)


def test_minibatch_divisibility_is_checked_on_every_combination(tmp_path):
    # n_envs * n_steps in {3*5, 3*7, 5*5, 5*7} = {15, 21, 25, 35}: none divisible by 2 or 4
    cfg, keys = _config(tmp_path, {"hpo": {"space": {
        "ppo.n_envs": {"type": "categorical", "choices": [3, 5]},
        "ppo.n_steps": {"type": "categorical", "choices": [5, 7]},
        "ppo.n_minibatches": {"type": "categorical", "choices": [2, 4]}}}})
    with pytest.raises(InputError) as err:
        build_search_space(cfg, keys)
    assert "the combination ppo.n_envs = 3, ppo.n_minibatches = 2, ppo.n_steps = 5 breaks" in str(err.value)
    assert "(no combination of the space passes)" in str(err.value)
    # 15 = 3*5 is divisible by 5, but a trial can still sample 3*7 with 5 (or 5*5 with 2): refused
    cfg, keys = _config(tmp_path, {"hpo": {"space": {
        "ppo.n_envs": {"type": "categorical", "choices": [3, 5]},
        "ppo.n_steps": {"type": "categorical", "choices": [5, 7]},
        "ppo.n_minibatches": {"type": "categorical", "choices": [2, 5]}}}})
    with pytest.raises(InputError, match="hpo.space.ppo.n_minibatches: the combination"):
        build_search_space(cfg, keys)
    # powers of two: every combination divides
    cfg, keys = _config(tmp_path, {"hpo": {"space": {
        "ppo.n_envs": {"type": "categorical", "choices": [4, 8]},
        "ppo.n_steps": {"type": "int", "low": 8, "high": 32, "step": 8},
        "ppo.n_minibatches": {"type": "categorical", "choices": [2, 4, 8]}}}})
    assert "ppo.n_minibatches" in build_search_space(cfg, keys).keys


@pytest.mark.parametrize("space, config, message", [
    # each value passes alone, the pair does not: lr_min above the low end of the learning rate
    ({"ppo.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3},
      "ppo.lr_min": {"type": "float", "low": 0.0, "high": 1e-4}}, {},
     ("hpo.space.ppo.lr_min: the combination ppo.learning_rate = 1e-05, ppo.lr_min = 0.0001 breaks a config rule "
      "(ppo.lr_min must lie in [0, ")),
    # a recurrent policy needs n_minibatches | n_envs (whole env sequences): only with policy gru
    ({"ppo.policy": {"type": "categorical", "choices": ["mlp", "gru"]},
      "ppo.n_envs": {"type": "categorical", "choices": [8, 12]}}, {"n_minibatches": 8},
     "hpo.space.ppo.n_envs, hpo.space.ppo.policy: the combination ppo.n_envs = 12, ppo.policy = 'gru' breaks"),
    # alone (the config's cvar_weight 0 turns the CVaR term off) num_quantiles 4 passes; with the searched
    # cvar_weight (default range [0.1, 2]) the fixed cvar_alpha 0.2 is below its floor 1/4
    ({"ppo.num_quantiles": {"type": "categorical", "choices": [4, 8]}}, {"cvar_alpha": 0.2},
     "hpo.space.ppo.num_quantiles: value 4 breaks a config rule (ppo.cvar_alpha = 0.2 is below 1/ppo.num_quantiles"),
])
def test_space_combinations_that_break_a_rule_are_refused(tmp_path, space, config, message):
    cfg, keys = _config(tmp_path, {"ppo": config, "hpo": {"space": space}})
    with pytest.raises(InputError) as err:
        build_search_space(cfg, keys)
    assert message in str(err.value) and "change the choices or narrow the ranges" in str(err.value)


def test_intended_adjustments_are_not_refused(tmp_path):
    # cvar_alpha below 1/num_quantiles of a trial is raised by resolve (the 'adjusted' attr), not an error
    cfg, keys = _config(tmp_path, {"hpo": {"space": {
        "ppo.num_quantiles": {"type": "categorical", "choices": [4, 8, 32]},
        "ppo.cvar_alpha": {"type": "float", "low": 0.03125, "high": 0.2}}}})
    assert build_search_space(cfg, keys).keys == ["ppo.cvar_alpha", "ppo.cvar_weight", "ppo.num_quantiles"]


def test_a_large_space_is_checked_by_key_sets_within_the_budget(tmp_path, monkeypatch):
    from tbjax.hpo import space as space_module
    from tbjax.hpo import space_check

    # 512 * 16 * 4 combinations of the shapes (x 2^3 float ends): above COMBINATION_LIMIT
    space = {"ppo.n_envs": {"type": "int", "low": 8, "high": 4096, "step": 8},
             "ppo.n_steps": {"type": "int", "low": 16, "high": 256, "step": 16},
             "ppo.n_minibatches": {"type": "categorical", "choices": [1, 2, 4, 8]},
             "ppo.gamma": {"type": "float", "low": 0.9, "high": 0.99}}
    cfg, keys = _config(tmp_path, {"hpo": {"space": space}})
    checks = []

    def counted(params, resolve):  # the checks made, not their time (timings live in benchmarks/)
        return space_check.check_combinations(params, lambda values: checks.append(1) or resolve(values))

    monkeypatch.setattr(space_module, "check_combinations", counted)
    assert len(build_search_space(cfg, keys).keys) == 6
    assert 0 < len(checks) <= space_check.CHECK_BUDGET + len(space) + 1  # key sets within the budget
    monkeypatch.undo()
    space["ppo.n_minibatches"]["choices"] = [1, 2, 3]
    cfg, keys = _config(tmp_path, {"hpo": {"space": space}})
    with pytest.raises(InputError, match="ppo.n_envs = 8, ppo.n_minibatches = 3, ppo.n_steps = 16 breaks"):
        build_search_space(cfg, keys)


@pytest.fixture(scope="module")
def tiny_processed(tmp_path_factory):
    from tiny_run_config import tiny_market

    return tiny_market(tmp_path_factory.mktemp("space_cli"))


def test_cli_refuses_a_breaking_space_before_any_trial(tiny_processed, tmp_path, capsys):
    """Issue 27, item 7: n_minibatches 3 does not divide n_steps * n_envs = 128. It used to be found
    by the trial that sampled it (failed as infeasible); now the study never starts."""
    from tiny_run_config import tiny_body

    from tbjax.cli.hpo import main

    body = tiny_body(tiny_processed, total_env_steps=256)
    body["hpo"] = {"n_trials": 2, "pruner": "none", "space": {
        "ppo.n_minibatches": {"type": "categorical", "choices": [2, 3]}}}
    del body["ppo"]["n_minibatches"]  # written in the YAML it would be fixed, not searched
    config = tmp_path / "hpo.yaml"
    config.write_text(yaml.safe_dump(body))
    run_dir = tmp_path / "run"
    assert main(["--config", str(config), "--run-dir", str(run_dir)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: hpo.space.ppo.n_minibatches: value 3 breaks a config rule ")
    assert "ppo.n_steps * ppo.n_envs = 128 is not divisible by ppo.n_minibatches = 3" in err[0]
    assert "Traceback" not in err[0]
    assert not run_dir.exists()  # no study.db, no trial folder, no jax_cache


def test_everything_fixed_is_an_error(tmp_path):
    cfg, keys = _config(tmp_path, {"ppo": {"cvar_alpha": 0.1, "cvar_weight": 0.5}})
    with pytest.raises(InputError, match="nothing to search"):
        build_search_space(cfg, keys)


def test_parse_int_range_enumerates_candidates():
    spec = parse_param("ppo.n_steps", {"type": "int", "low": 8, "high": 32, "step": 8})
    assert spec.candidates() == [8, 16, 24, 32]
    spec = parse_param("ppo.learning_rate", {"type": "float", "low": "1e-5", "high": 1e-3, "log": True})
    assert math.isclose(spec.low, 1e-5) and spec.log


def test_default_cvar_alpha_range_starts_at_one_over_num_quantiles(tmp_path):
    # below 1/N the CVaR of N equal-mass quantiles is the lowest quantile: alpha would only rescale the weight
    cfg, keys = _config(tmp_path, {"ppo": {"num_quantiles": 16}, "hpo": {"space": {}}})
    space = build_search_space(cfg, keys)
    (alpha,) = [p for p in space.params if p.key == "ppo.cvar_alpha"]
    assert alpha.low == 1 / 16 and alpha.high == 0.20 and space.notes == ()
    assert all(d["ppo.cvar_alpha"] >= 1 / 16 for d in _samples(space))
    assert DEFAULT_SPACE["ppo.cvar_alpha"]["high"] == 0.20


def test_user_cvar_alpha_range_below_the_floor_is_an_error(tmp_path):
    cfg, keys = _config(tmp_path, {"hpo": {"space": {
        "ppo.cvar_alpha": {"type": "float", "low": 0.01, "high": 0.2}}}})
    with pytest.raises(InputError) as err:
        build_search_space(cfg, keys)
    msg = str(err.value)
    assert msg.startswith("hpo.space.ppo.cvar_alpha:") and "1/ppo.num_quantiles = 1/32 = 0.03125" in msg
    # at the floor it is accepted
    cfg, keys = _config(tmp_path, {"hpo": {"space": {
        "ppo.cvar_alpha": {"type": "float", "low": 0.03125, "high": 0.2}}}})
    assert build_search_space(cfg, keys).keys[0] == "ppo.cvar_alpha"


def test_cvar_alpha_is_raised_per_trial_when_num_quantiles_is_searched(tmp_path):
    body = {"hpo": {"space": {"ppo.num_quantiles": {"type": "categorical", "choices": [8, 32]},
                              "ppo.cvar_alpha": {"type": "float", "low": 0.03125, "high": 0.2}}}}
    cfg, keys = _config(tmp_path, body)
    space = build_search_space(cfg, keys)
    assert len(space.notes) == 1 and "raised to that floor" in space.notes[0] and "1/8" in space.notes[0]
    trial_cfg, notes = space.resolve(cfg, {"ppo.num_quantiles": 8, "ppo.cvar_alpha": 0.05, "ppo.cvar_weight": 1.0})
    assert trial_cfg.ppo.cvar_alpha == 0.125 and len(notes) == 1 and "raised to 1/ppo.num_quantiles" in notes[0]
    trial_cfg, notes = space.resolve(cfg, {"ppo.num_quantiles": 32, "ppo.cvar_alpha": 0.05, "ppo.cvar_weight": 1.0})
    assert trial_cfg.ppo.cvar_alpha == 0.05 and notes == []
    # the bound for the range is 1/N of the largest N searched
    body["hpo"]["space"]["ppo.cvar_alpha"]["low"] = 0.02
    cfg, keys = _config(tmp_path, body)
    with pytest.raises(InputError, match=r"hpo.space.ppo.cvar_alpha: .*largest ppo.num_quantiles searched \(N = 32\)"):
        build_search_space(cfg, keys)


def test_default_cvar_alpha_is_not_searched_when_its_floor_is_above_the_range(tmp_path):
    cfg, keys = _config(tmp_path, {"hpo": {"space": {}}})
    cfg = dataclasses.replace(cfg, ppo=dataclasses.replace(cfg.ppo, num_quantiles=4, cvar_alpha=0.3))
    space = build_search_space(cfg, keys)
    assert space.keys == ["ppo.cvar_weight"]
    assert len(space.notes) == 1 and "add hpo.space.ppo.cvar_alpha with low >= 0.25" in space.notes[0]
