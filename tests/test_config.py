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
    from tbjax.config import keys_of_kind
    from tbjax.run.assembly import (env_params_from_config, hparams_from_config, make_env_params, make_hparams,
                                    make_spec, spec_from_config)

    cfg = load_config(None)
    bare_env, from_cfg = make_env_params(), env_params_from_config(cfg)
    for name in ("fee_bps", "half_spread_bps", "slippage_k", "impact_coef", "borrow_bps_per_bar",
                 "turnover_penalty", "min_position", "max_position", "equity_floor", "capital"):
        assert float(getattr(bare_env, name)) == pytest.approx(getattr(cfg.env, name)), name
        assert float(getattr(from_cfg, name)) == pytest.approx(getattr(cfg.env, name)), name
    assert (bare_env.window_size, bare_env.episode_len, bare_env.position_levels) == (
        cfg.env.window_size, cfg.env.episode_len, tuple(cfg.env.position_levels))
    bare_hp, hp = make_hparams(), hparams_from_config(cfg, None)
    for name in keys_of_kind("traced", "ppo"):
        assert float(getattr(bare_hp, name)) == pytest.approx(getattr(cfg.ppo, name)), name
        assert float(getattr(hp, name)) == pytest.approx(getattr(cfg.ppo, name)), name
    spec = spec_from_config(cfg, n_groups=1)
    assert make_spec() == spec
    assert (spec.n_envs, spec.hidden_sizes, spec.precision, spec.total_updates) == (
        cfg.ppo.n_envs, tuple(cfg.ppo.hidden_sizes), cfg.train.precision, cfg.n_updates)


def test_traced_and_static_settings_are_declared_once_in_the_config():
    import dataclasses

    from tbjax import config_rules
    from tbjax.agent.hparams import TrainerSpec
    from tbjax.config import PPOConfig, keys_of_kind
    from tbjax.env.market import STATIC_SETTINGS
    from tbjax.run.assembly import make_env_params, make_hparams

    traced_ppo, traced_env = keys_of_kind("traced", "ppo"), keys_of_kind("traced", "env")
    # every traced ppo.* key is an HParams leaf, every traced env.* key an EnvParams leaf, and nothing else
    assert set(make_hparams().traced) - {"env"} == set(traced_ppo)
    env = make_env_params()
    assert set(env.traced) - {"liquidity_multipliers"} == set(traced_env)
    assert set(env.static) - {"role"} == set(keys_of_kind("static", "env")) == set(STATIC_SETTINGS)
    # every traced float has its rule: the env requires exactly the ENV_FLOATS keys besides the shaping
    # weights, which share one rule (config_rules.SHAPING_WEIGHT); the learner's are checked
    shaping = keys_of_kind("shaping", "env")
    assert shaping and set(shaping) <= set(traced_env) and not set(shaping) & set(config_rules.ENV_FLOATS)
    assert set(config_rules.ENV_FLOATS) | set(shaping) == set(traced_env)
    assert set(traced_ppo) <= set(config_rules.PPO_FLOATS)
    # every traced ppo.* key says why it exists, where its default is declared
    undocumented = [f.name for f in dataclasses.fields(PPOConfig) if f.metadata.get("kind") == "traced"
                    and not f.metadata.get("doc")]
    assert not undocumented, f"traced ppo.* keys without a doc: {undocumented}"
    # TrainerSpec's config fields are exactly the static ppo.* and train.* keys
    spec_fields = {f.name for f in dataclasses.fields(TrainerSpec)}
    config_static = set(keys_of_kind("static", "ppo")) | set(keys_of_kind("static", "train"))
    assert config_static <= spec_fields
    assert spec_fields - config_static == {"total_updates", "popart_sigma_min", "holdout_size", "n_groups"}


def test_agent_and_env_never_read_the_config():
    """Issue 26: the layers below the assembly receive values; none imports tbjax.config."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "tbjax"
    readers = []
    for path in [*(package / "agent").rglob("*.py"), *(package / "env").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module, *(f"{node.module}.{a.name}" for a in node.names)] if isinstance(node, ast.ImportFrom)
                     else [])
            readers += [f"{path.relative_to(package.parent)}:{node.lineno}" for n in names if n == "tbjax.config"]
    assert not readers, f"agent/env modules importing tbjax.config: {readers}"


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
