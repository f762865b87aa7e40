"""The one assembly (tbjax.run.assembly): every env.* key reaches EnvParams, no module but the
assembly builds a trainer from a Config, and training, HPO and walk-forward take their trainer from
it, the same cached object for the same config (``load_policy``: tests/cli/test_policy.py)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from tiny_run_config import tiny_body, tiny_market
from tbjax.config import EnvConfig, load_config
from tbjax.run.assembly import Assembly, assemble, env_params_from_config

PACKAGE = Path(__file__).resolve().parents[2] / "tbjax"

# a valid value other than the default for every env.* key that names an EnvParams field
CHANGED = {"window_size": 48, "episode_len": 100, "action_mode": "continuous", "position_levels": [-1.0, 0.0, 1.0],
           "symbol_sampling": "length", "min_position": -0.5, "max_position": 0.75, "fee_bps": 3.0,
           "half_spread_bps": 2.0, "slippage_k": 0.1, "impact_coef": 0.2, "borrow_bps_per_bar": 0.01,
           "turnover_penalty": 1e-3, "equity_floor": 0.25, "capital": 5_000.0}


def test_every_env_params_field_with_a_config_key_is_set_from_the_config():
    config_keys = {f.name for f in dataclasses.fields(EnvConfig)}
    default = env_params_from_config(load_config(None))
    with_key = ({*default.traced, *default.static}) & config_keys
    assert set(CHANGED) == with_key, "a new env.* key of EnvParams: give it a changed value here"
    changed = env_params_from_config(load_config(None, [f"env.{k}={v}" for k, v in CHANGED.items()]))
    for name in sorted(with_key):
        want, got, before = CHANGED[name], getattr(changed, name), getattr(default, name)
        if isinstance(want, str):
            assert before != want and got == want, name
        else:  # numbers and levels, compared as the float32 / int the env holds
            assert np.asarray(before, np.float64).tolist() != pytest.approx(want), name  # the test changes it
            assert np.asarray(got, np.float64).tolist() == pytest.approx(want, rel=1e-6), name


def _calls(tree: ast.AST, names: set[str]) -> list[int]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None) in names:
                out.append(node.lineno)
    return out


def test_only_the_assembly_builds_a_trainer_from_a_config():
    """Calls of the assembly's pieces anywhere else in the package would be a second assembly."""
    pieces = {"trainer_for", "make_trainer", "spec_from_config", "hparams_from_config"}
    others = {str(p.relative_to(PACKAGE.parent)): lines for p in sorted(PACKAGE.rglob("*.py"))
              if p.name != "assembly.py" and (lines := _calls(ast.parse(p.read_text()), pieces))}
    assert not others, f"trainers assembled outside tbjax/run/assembly.py: {others}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("assembly")
    body = tiny_body(tiny_market(root), total_env_steps=512)
    body["train"]["population"] = 1
    body["walkforward"] = {"folds": 2}
    body["hpo"] = {"space": {"ppo.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}}}
    (root / "tiny.yaml").write_text(yaml.safe_dump(body))
    return root, load_config(root / "tiny.yaml")


def test_train_hpo_and_walkforward_take_one_cached_trainer_from_the_assembly(tiny, monkeypatch):
    from tbjax.hpo.runner import TrialRunner
    from tbjax.hpo.space import build_search_space, user_set_keys
    from tbjax.walkforward import driver as walkforward
    from tbjax.run.session import TrainingSession

    root, cfg = tiny
    asked = []
    real = Assembly.trainer
    monkeypatch.setattr(Assembly, "trainer", property(lambda self: asked.append(self) or real.fget(self)))

    session = TrainingSession(cfg, root / "run", write=False, quiet=True)
    assert len(asked) == 1 and asked[0].hparams is session.hparams and asked[0].spec == session.spec

    wf = walkforward.build_folds(cfg)
    assert len(asked) == 2 and wf.trainer is session.trainer and asked[1].hparams is wf.hparams

    runner = TrialRunner(cfg, session.exp, build_search_space(cfg, user_set_keys(root / "tiny.yaml")), root / "hpo")
    member = runner.plan(optuna.trial.FixedTrial({"ppo.cvar_weight": 0.3, "ppo.learning_rate": 3e-4}))
    assert len(asked) == 2  # planned, not built: a trial's trainer is built when its group trains
    program = runner.program(member, 1)
    assert len(asked) == 3 and asked[2] is member.assembly and program.trainer is session.trainer

    assert assemble(cfg, len(session.exp.symbols)).trainer is session.trainer  # the shared cache
