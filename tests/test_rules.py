"""One home for every rule (tbjax/config_rules.py): a setting is judged the same way, with the same
message naming the key a user writes, whether it arrives in a config (``load_config``) or directly
at a constructor (``make_env_params``, ``make_hparams``, ``TrainerSpec.validate``, ...).

The cases are the rules whose copies used to disagree; each pins the rule chosen (why: in
tbjax/config_rules.py) at every door.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from tbjax import config_rules
from tbjax.config import load_config
from tbjax.errors import InputError

PACKAGE = Path(__file__).resolve().parents[1] / "tbjax"


def message(fn, *args, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def env_params(**kw):
    from tbjax.run.assembly import make_env_params
    return make_env_params(**kw)


def hparams(**kw):
    from tbjax.run.assembly import make_hparams
    return make_hparams(None, **kw)


def spec(**kw):
    from tbjax.run.assembly import make_spec
    return make_spec(**kw).validate()


def pipeline(**kw):
    from tbjax.data.pipeline import FeaturePipeline
    return FeaturePipeline(["logret_1"], **kw)


def action_mode(mode):
    from tbjax.agent.policy import check_action_mode
    return check_action_mode(mode)


# (config overrides, the same settings at a lower door, a fragment of the one message)
SAME_RULE = [
    # min == max: the continuous range is empty and baseline_action divides by max - min ("<", not "<=")
    (["env.min_position=0.5", "env.max_position=0.5"], lambda: env_params(min_position=0.5, max_position=0.5),
     "env.min_position = 0.5 must be below env.max_position = 0.5"),
    # one level leaves the policy one action (">= 2", not ">= 1")
    (["env.position_levels=[1.0]"], lambda: env_params(position_levels=(1.0,)), "at least two target positions"),
    (["env.position_levels=[1, 0]"], lambda: env_params(position_levels=(1.0, 0.0)), "sorted, distinct"),
    (["env.action_mode=box"], lambda: env_params(action_mode="box"), "env.action_mode must be one of"),
    (["env.action_mode=box"], lambda: action_mode("box"), "env.action_mode must be one of"),
    (["env.symbol_sampling=volume"], lambda: env_params(symbol_sampling="volume"), "env.symbol_sampling"),
    (["env.fee_bps=-1"], lambda: env_params(fee_bps=-1.0), "env.fee_bps must be >= 0, got -1.0"),
    # every reward-shaping weight by the one rule config_rules.SHAPING_WEIGHT
    (["env.turnover_penalty=-1"], lambda: env_params(turnover_penalty=-1.0), "env.turnover_penalty must be >= 0"),
    (["env.equity_floor=1"], lambda: env_params(equity_floor=1.0), "env.equity_floor must lie in [0, 1)"),
    (["env.capital=0"], lambda: env_params(capital=0.0), "env.capital must be > 0"),
    (["env.episode_len=0"], lambda: env_params(episode_len=0), "env.episode_len must be an integer >= 1"),
    # the policy list was a literal in one place and POLICIES in another
    (["ppo.policy=transformer"], lambda: spec(policy="transformer"), "ppo.policy must be one of 'mlp', 'gru', 'lstm'"),
    (["ppo.lr_schedule=cosine"], lambda: spec(lr_schedule="cosine"), "ppo.lr_schedule must be one of"),
    (["train.precision=float16"], lambda: spec(precision="float16"), "train.precision must be one of"),
    (["ppo.n_minibatches=7"], lambda: spec(n_minibatches=7), "is not divisible by ppo.n_minibatches = 7"),
    (["ppo.policy=gru", "ppo.n_envs=6", "ppo.n_steps=4", "ppo.n_minibatches=4"],
     lambda: spec(policy="gru", n_envs=6, n_steps=4, n_minibatches=4), "must divide ppo.n_envs = 6"),
    (["ppo.hidden_sizes=[]"], lambda: spec(hidden_sizes=()), "ppo.hidden_sizes must be a non-empty list"),
    (["ppo.bar_features=-1"], lambda: spec(bar_features=-1), "ppo.bar_features must be 0"),
    (["ppo.n_epochs=0"], lambda: spec(n_epochs=0), "ppo.n_epochs must be an integer >= 1"),
    (["ppo.obs_clip=0"], lambda: spec(obs_clip=0.0), "ppo.obs_clip must be > 0"),
    # make_hparams accepted [0, 1] / >= 0 / [1e-6, 1] where the config refused: the config's rule won
    (["ppo.gamma=0"], lambda: hparams(gamma=0.0), "ppo.gamma must lie in (0, 1], got 0.0"),
    (["ppo.learning_rate=0"], lambda: hparams(learning_rate=0.0), "ppo.learning_rate must be > 0"),
    (["ppo.clip_eps=1"], lambda: hparams(clip_eps=1.0), "ppo.clip_eps must lie in (0, 1)"),
    (["ppo.cvar_alpha=1"], lambda: hparams(cvar_alpha=1.0), "ppo.cvar_alpha must lie in (0, 1)"),
    (["ppo.popart_beta=0"], lambda: hparams(popart_beta=0.0), "ppo.popart_beta must lie in (0, 1]"),
    (["ppo.max_grad_norm=0"], lambda: hparams(max_grad_norm=0.0), "ppo.max_grad_norm must be > 0"),
    (["ppo.learning_rate=1e-4", "ppo.lr_min=1e-3"], lambda: hparams(learning_rate=1e-4, lr_min=1e-3),
     "ppo.lr_min must lie in [0, ppo.learning_rate = 0.0001]"),
    (["ppo.weight_decay=-1"], lambda: hparams(weight_decay=-1.0), "ppo.weight_decay must be >= 0 (0 = plain Adam)"),
    # the pipeline said "clip must be > 0", naming no key, and the config did not check it at all
    (["features.clip=0"], lambda: pipeline(clip=0.0), "features.clip must be > 0, got 0.0"),
    (["features.std_floor=0"], lambda: pipeline(std_floor=0.0), "features.std_floor must be > 0"),
]


@pytest.mark.parametrize("overrides, lower, fragment", SAME_RULE, ids=[" ".join(c[0]) for c in SAME_RULE])
def test_config_and_constructor_refuse_with_the_same_message(overrides, lower, fragment):
    from_config = message(load_config, None, overrides)
    assert fragment in from_config
    assert message(lower) == from_config


def test_what_both_doors_accept():
    env_params(min_position=-0.5, max_position=0.5, position_levels=(0.0, 1.0))
    env_params(window_size=1)  # the env's own rule; env.window_size >= 26 is the config's (indicator span)
    hparams(gamma=1.0, gae_lambda=0.0, cvar_alpha=0.5, learning_rate=1e-3, lr_min=1e-3)
    load_config(None, ["ppo.gamma=1", "ppo.gae_lambda=0", "env.position_levels=[0, 1]"])
    assert "env.window_size >= 26" in message(load_config, None, ["env.window_size=1"])


def test_cvar_alpha_floor_is_one_over_the_quantile_count():
    assert config_rules.cvar_floor(32) == 1 / 32
    msg = message(load_config, None, ["ppo.cvar_weight=1", "ppo.cvar_alpha=0.02"])
    assert "ppo.cvar_alpha = 0.02 is below 1/ppo.num_quantiles = 1/32" in msg and ">= 50" in msg
    load_config(None, ["ppo.cvar_weight=0", "ppo.cvar_alpha=0.02"])  # no CVaR term: the floor does not apply
    from tbjax.hpo import space
    assert space.cvar_floor is config_rules.cvar_floor  # one definition, imported


def test_rules_the_config_now_checks_before_any_work():
    assert "hpo.objective_every must be an integer >= 1" in message(load_config, None, ["hpo.objective_every=0"])
    assert "hpo.timeout must be null or > 0" in message(load_config, None, ["hpo.timeout=0"])


def test_lists_of_choices_match_what_uses_them():
    from tbjax.agent import networks, recurrent
    from tbjax.hpo.study import make_pruner
    from tbjax.data.features import macd_lines
    from tbjax.evaluation.deployment import BASELINE_POSITION

    assert config_rules.POLICIES == ("mlp", *recurrent.CELLS) and networks.POLICIES is config_rules.POLICIES
    assert set(config_rules.BASELINES) == {"auto", *BASELINE_POSITION}
    for name in config_rules.PRUNERS:
        assert make_pruner(name, 10) is not None
    assert inspect.signature(macd_lines).parameters["slow"].default == config_rules.SLOWEST_INDICATOR_WINDOW


def test_each_list_of_choices_is_written_once():
    """No module but config_rules spells out a list of choices (the old copies drifted apart)."""
    choices = {frozenset(v) for k, v in vars(config_rules).items() if k.isupper() and isinstance(v, tuple)
               and len(v) > 1 and all(isinstance(c, str) for c in v)}
    copies = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "config_rules.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) > 1 and all(
                    isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
                if frozenset(e.value for e in node.elts) in choices:
                    copies.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not copies, f"copies of a list of choices (import it from tbjax.config_rules): {copies}"
