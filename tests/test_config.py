"""Config: YAML + overrides, unknown keys with suggestions, types, ranges and cross-field rules."""

import pytest

from tbjax.config import Config, dump_config, load_config
from tbjax.errors import InputError


def test_base_yaml_loads_and_round_trips(tmp_path):
    cfg = load_config("configs/base.yaml")
    assert isinstance(cfg, Config)
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_empty_yaml_gives_exactly_base_yaml(tmp_path):
    # base.yaml's header promises "a missing key takes the default shown here".
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == load_config("configs/base.yaml")


def test_every_layer_reads_its_defaults_from_the_config():
    from tbjax.agent.hparams import HPARAM_DEFAULTS, TrainerSpec, make_hparams
    from tbjax.env.market import make_env_params
    from tbjax.run.setup import env_params_from_config, hparams_from_config, spec_from_config

    cfg = load_config(None)
    bare_env, from_cfg = make_env_params(), env_params_from_config(cfg)
    for name in ("fee_bps", "half_spread_bps", "slippage_k", "impact_coef", "borrow_bps_per_bar",
                 "turnover_penalty", "min_position", "max_position", "equity_floor", "capital"):
        assert float(getattr(bare_env, name)) == pytest.approx(getattr(cfg.env, name)), name
        assert float(getattr(from_cfg, name)) == pytest.approx(getattr(cfg.env, name)), name
    assert (bare_env.window_size, bare_env.episode_len, bare_env.position_levels) == (
        cfg.env.window_size, cfg.env.episode_len, tuple(cfg.env.position_levels))
    bare_hp, hp = make_hparams(), hparams_from_config(cfg, None)
    for name in HPARAM_DEFAULTS:
        assert float(getattr(bare_hp, name)) == pytest.approx(getattr(cfg.ppo, name)), name
        assert float(getattr(hp, name)) == pytest.approx(getattr(cfg.ppo, name)), name
    spec = spec_from_config(cfg, n_groups=1)
    assert TrainerSpec() == spec


def test_traced_and_static_settings_are_declared_once_in_the_config():
    import dataclasses

    from tbjax.agent.hparams import HPARAM_DOCS, HParams
    from tbjax.config import keys_of_kind
    from tbjax.env.market import EnvParams

    traced_ppo, traced_env = keys_of_kind("traced", "ppo"), keys_of_kind("traced", "env")
    # every traced ppo.* key is an HParams leaf, every traced env.* key an EnvParams leaf, and nothing else
    assert [f.name for f in dataclasses.fields(HParams) if f.name != "env"] == list(traced_ppo)
    assert set(HPARAM_DOCS) == set(traced_ppo)
    env_leaves = {f.name for f in dataclasses.fields(EnvParams) if f.metadata.get("pytree_node", True)}
    assert env_leaves - {"liquidity_multipliers"} == set(traced_env)
    env_static = {f.name for f in dataclasses.fields(EnvParams) if not f.metadata.get("pytree_node", True)}
    assert env_static - {"role"} == set(keys_of_kind("static", "env")) | {"position_levels"}


def test_cvar_alpha_below_one_quantile_is_refused_when_it_matters():
    with pytest.raises(InputError, match=r"ppo.cvar_alpha = 0.02 is below 1/ppo.num_quantiles = 1/32.*>= 50"):
        load_config(None, ["ppo.cvar_alpha=0.02", "ppo.cvar_weight=0.5"])
    assert load_config(None, ["ppo.cvar_alpha=0.02", "ppo.cvar_weight=0.0"]).ppo.cvar_alpha == 0.02
    assert load_config(None, ["ppo.cvar_alpha=0.02", "ppo.cvar_weight=0.5", "ppo.num_quantiles=64"])


def test_overrides_parse_yaml_values():
    cfg = load_config(None, ["ppo.learning_rate=1e-4", "env.position_levels=[-1, 0, 1]", "ppo.non_crossing=false"])
    assert cfg.ppo.learning_rate == pytest.approx(1e-4)
    assert cfg.env.position_levels == [-1.0, 0.0, 1.0]
    assert cfg.ppo.non_crossing is False


def test_n_updates_covers_budget_in_whole_chunks():
    cfg = load_config(None, ["ppo.n_envs=8", "ppo.n_steps=16", "train.updates_per_chunk=3", "train.total_env_steps=1000"])
    # 1000 steps / (128 per update * 3 per chunk) = 2.6 → 3 chunks → 9 updates
    assert cfg.n_updates == 9


@pytest.mark.parametrize("override, fragment", [
    ("ppo.learnig_rate=1", "did you mean ppo.learning_rate?"),
    ("env.windw_size=32", "did you mean env.window_size?"),
    ("ppo.n_envs=abc", "'ppo.n_envs' must be an integer"),
    ("ppo.non_crossing=3", "'ppo.non_crossing' must be true or false"),
    ("ppo.n_minibatches=7", "not divisible by ppo.n_minibatches = 7"),
    ("env.window_size=10", "set env.window_size >= 26"),
    ("ppo.gamma=1.5", "ppo.gamma must lie in (0, 1]"),
    ("env.position_levels=[1, 0]", "sorted, distinct"),
    ("ppo.cvar_alpha=0", "ppo.cvar_alpha must lie in (0, 1)"),
    ("nothing", "must look like section.key=value"),
])
def test_bad_values_have_one_clear_message(override, fragment):
    with pytest.raises(InputError) as info:
        load_config(None, [override])
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ppo:\n  learnig_rate: 0.1\n")
    with pytest.raises(InputError, match="did you mean ppo.learning_rate"):
        load_config(path)


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(bad)
