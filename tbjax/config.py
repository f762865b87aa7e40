"""Typed configuration: frozen dataclasses loaded from YAML with ``--set a.b=c`` overrides.

Every problem is reported as one :class:`~tbjax.errors.InputError` that names the key, the value
and what to change; an unknown key suggests the nearest valid one (``ppo.learnig_rate`` → "did you
mean ppo.learning_rate?"). Fields split into static shapes (hashable, part of the compiled
program) and continuous values (traced float leaves of ``HParams``; docs/DESIGN.md).

The ONLY place where defaults live, and where a setting is declared traced or static: the env and
the learner never read this module; tbjax.run.assembly builds their EnvParams, HParams and
TrainerSpec from these declarations (``traced()`` / ``static()`` below), so their fields are not
written a second time. configs/base.yaml shows the same values (a test loads an empty YAML and compares).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from tbjax.config_rules import validate  # noqa: F401 (re-exported: tbjax.config.validate)
from tbjax.errors import InputError



def traced(default: Any, doc: str = "", shaping: bool = False):
    """A continuous setting compiled as a float32 leaf: a new value never recompiles (HParams / EnvParams).

    ``doc``: why it exists (every traced ppo.* key has one). ``shaping``: an env.* reward-shaping
    weight (tbjax.env.costs.shaping_penalty), a learner choice HPO may search, unlike a market cost.
    """
    return field(default=default, metadata={"kind": "traced", "doc": doc, "shaping": shaping})


def static(default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING):
    """A setting that fixes a shape or the program's structure: a new value compiles a new program."""
    return field(default=default, default_factory=factory, metadata={"kind": "static"})


def keys_of_kind(kind: str, section: str) -> tuple[str, ...]:
    """Field names of ``section`` (``env``, ``ppo``, ``train``) declared ``traced`` or ``static`` above,
    or (kind ``shaping``) the traced reward-shaping weights."""
    cls = typing.get_type_hints(Config)[section]
    if kind == "shaping":
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("shaping"))
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("kind") == kind)


@dataclass(frozen=True)
class DataConfig:
    processed_dir: str = "data/sample/processed"
    symbols: Optional[list[str]] = None  # None: every <SYMBOL>.feather in processed_dir
    train_start: Any = "2000-03-01"
    train_end: Any = "2009-12-31"
    val_start: Any = "2010-01-01"
    val_end: Any = "2011-06-30"
    test_start: Any = "2011-07-01"
    test_end: Any = "2013-03-31"
    embargo_bars: Optional[int] = None  # None: the warm-up length
    bars_per_year: Optional[float] = None  # None: inferred from timestamps


@dataclass(frozen=True)
class FeaturesConfig:
    columns: Optional[list[str]] = None  # None: every raw feature column of the processed files
    std_floor: float = 1e-8
    clip: float = 10.0


@dataclass(frozen=True)
class EnvConfig:
    window_size: int = static(32)
    episode_len: int = static(256)
    action_mode: str = static("discrete")
    position_levels: list[float] = static(factory=lambda: [0.0, 0.5, 1.0])
    min_position: float = traced(-1.0)
    max_position: float = traced(1.0)
    symbol_sampling: str = static("uniform")
    fee_bps: float = traced(1.0)
    half_spread_bps: float = traced(1.0)
    slippage_k: float = traced(0.0)
    impact_coef: float = traced(0.0)
    borrow_bps_per_bar: float = traced(0.0)
    turnover_penalty: float = traced(2.5e-4, "reward shaping per unit of |change in position| (not a cost)",
                                     shaping=True)
    equity_floor: float = traced(0.5)
    capital: float = traced(100_000.0)
    liquidity_seasonality: Optional[str] = None  # JSON file of 168 hour-of-week multipliers


@dataclass(frozen=True)
class PPOConfig:
    n_envs: int = static(64)
    n_steps: int = static(64)
    n_epochs: int = static(4)
    n_minibatches: int = static(4)
    hidden_sizes: list[int] = static(factory=lambda: [64, 64])
    policy: str = static("mlp")  # tbjax.config_rules.POLICIES: mlp, or a recurrent core after the MLP encoder
    rnn_size: int = static(64)
    bar_features: int = static(2)  # > 0: each bar of the window encoded by one shared layer first
    num_quantiles: int = static(32)
    non_crossing: bool = static(True)
    shared_torso: bool = static(False)
    huber_kappa: float = static(1.0)
    obs_clip: float = static(10.0)
    learning_rate: float = traced(4e-4, "Adam step of PPO (Schulman et al. 2017)")
    lr_schedule: str = static("linear")
    lr_min: float = traced(0.0, "end point of the linear decay (lr_schedule='linear')")
    gamma: float = traced(0.8, "discount per decision (bar)")
    gae_lambda: float = traced(0.7, "GAE bias/variance trade-off (Schulman et al. 2016)")
    clip_eps: float = traced(0.2, "PPO ratio clip")
    ent_coef: float = traced(0.025, "entropy bonus: keeps the first policy near uniform long enough to explore")
    vf_coef: float = traced(0.5, "weight of the quantile-Huber critic loss")
    max_grad_norm: float = traced(0.5, "global-norm gradient clip")
    cvar_alpha: float = traced(0.1, "tail probability of CVaR_alpha")
    cvar_weight: float = traced(0.0, "0 = risk-neutral PPO; > 0 adds the Rockafellar-Uryasev CVaR term")
    popart_beta: float = traced(3e-4, "PopArt moment step per update (van Hasselt et al. 2016)")
    weight_decay: float = traced(0.6, "decoupled weight decay per unit of learning rate (AdamW, Loshchilov & "
                                      "Hutter 2019): shrinks weights the noise features cannot justify")
    obs_noise: float = traced(0.0, "training-rollout jitter: sigma of Gaussian noise on the z-scored market window "
                                   "(Um et al. 2017); never applied to val/test")
    obs_scale: float = traced(0.0, "training-rollout magnitude scaling: window x exp(U(-s, s)) per env and rollout "
                                   "(Um et al. 2017); never val/test")
    mirror: float = traced(0.0, "training mirror: probability that a training episode trades the mirrored market "
                                "(prices inverted, buyers and sellers swapped; tbjax.learner.mirror); long-short only, "
                                "never val/test")


@dataclass(frozen=True)
class TrainConfig:
    total_env_steps: int = 1_000_000
    updates_per_chunk: int = static(10)
    eval_every: int = 20  # updates between validation evaluations (rounded up to whole chunks)
    seed: int = 0
    precision: str = static("float32")
    population: int = 8  # members trained as ONE compiled program, seeds seed .. seed+P-1; > 1: an ensemble policy
    ensemble_top_k: Optional[int] = None  # None: every member whose val objective beats flat's (0), at least the best
    population_jitter: float = 0.0  # sigma of log-normal jitter of ppo.learning_rate and ppo.ent_coef (member 0: none)
    patience: int = 4  # evaluations without a new best val objective before a member stops; 0 = never stop early


@dataclass(frozen=True)
class EvalConfig:
    deterministic: bool = True
    w_val: float = 0.5
    w_choppy: float = 0.3
    w_trend: float = 0.2
    regime_bars: int = 1500
    regime_seed: int = 2024
    baseline: str = "auto"  # what is deployed when val shows no edge: flat, buy_and_hold, auto (flat if shorts allowed)
    edge_confidence: float = 0.95  # deploy the agent only if P(agent beats the baseline on val) >= this
    edge_deflation: bool = False  # test that P against the best of the val evaluations compared (DSR), not 0


@dataclass(frozen=True)
class HPOConfig:
    n_trials: int = 20
    timeout: Optional[float] = None
    batch: int = 1
    sampler_seed: int = 0
    pruner: str = "successive_halving"
    objective_every: int = 1
    storage: Optional[str] = None
    study_name: str = "tbjax"
    space: dict = field(default_factory=dict)
    # metrics of the trial's val backtest, each 'name' or 'name:maximize|minimize' (tbjax.hpo.objectives);
    # two or three: a multi-objective (Pareto) study
    objectives: list[str] = field(default_factory=lambda: ["objective"])


@dataclass(frozen=True)
class WalkForwardConfig:
    folds: int = 4
    train_mode: str = "expanding"  # expanding: train from the first bar; rolling: the last train_bars
    # Spans: bars (int) or a duration ('90d', '12w', '720h') turned into bars at the data's average bar rate
    train_bars: Any = None  # None: expanding, everything before val; rolling: fold 0's train length
    val_bars: Any = None  # None: the data's bars // (folds + 4)
    test_bars: Any = None  # None: the data's bars // (folds + 4)
    step_bars: Any = None  # None: test_bars (test segments tile the end of the data)
    embargo_bars: Any = None  # None: the warm-up length
    seeds: Optional[int] = None  # learners per fold (train.seed .. + seeds - 1); None: train.population


@dataclass(frozen=True)
class FrontierConfig:
    """``python -m tbjax.frontier``: a grid of risk settings trained as one population (tbjax.run.frontier)."""

    cvar_weight: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0, 2.0])
    cvar_alpha: Optional[list[float]] = None  # None: ppo.cvar_alpha alone
    turnover_penalty: Optional[list[float]] = None  # None: env.turnover_penalty alone
    seeds: int = 2  # members per grid point, seeds train.seed .. train.seed + seeds - 1
    return_metric: str = "sortino"  # the Pareto set's return measure (a pooled metric key)
    tail_metric: str = "cvar_5"  # its tail measure, as a loss (cvar_5, var_5: minus the return)


@dataclass(frozen=True)
class OutputConfig:
    runs_dir: str = "runs"
    run_name: Optional[str] = None
    tensorboard: bool = True


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    hpo: HPOConfig = field(default_factory=HPOConfig)
    walkforward: WalkForwardConfig = field(default_factory=WalkForwardConfig)
    frontier: FrontierConfig = field(default_factory=FrontierConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    @property
    def batch_size(self) -> int:
        return self.ppo.n_envs * self.ppo.n_steps

    @property
    def n_updates(self) -> int:
        """Whole chunks of updates covering ``total_env_steps`` (at least one chunk)."""
        per_chunk = self.batch_size * self.train.updates_per_chunk
        return max(1, math.ceil(self.train.total_env_steps / per_chunk)) * self.train.updates_per_chunk


def lone_learner(cfg: Config) -> Config:
    """``cfg`` for ONE learner: ``train.population`` 1, no ensemble settings. HPO trials and
    walk-forward folds each train one learner (their own axis is the population); the config.yaml
    they save must say so, or ``tbjax.evaluate`` / ``load_policy`` on their folders would build a
    population's carry for a lone learner's checkpoint."""
    train = dataclasses.replace(cfg.train, population=1, ensemble_top_k=None, population_jitter=0.0)
    return dataclasses.replace(cfg, train=train)


def with_population(cfg: Config, n_members: int) -> Config:
    """``cfg`` with ``train.population = n_members``: the config a group of seeds saves (a frontier's
    point, a walk-forward fold with ``walkforward.seeds`` > 1), so ``tbjax.evaluate`` and
    ``load_policy`` on its folder build that many members."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, population=n_members))


def default_config() -> Config:
    """Every default, as an empty YAML gives it (configs/base.yaml shows the same values)."""
    return Config()


# --------------------------------------------------------------------------- conversion


def _all_keys(cls, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        keys.append(path)
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _all_keys(hints[f.name], path + ".")
    return keys


def _unknown_key(path: str) -> InputError:
    known = _all_keys(Config)
    close = difflib.get_close_matches(path, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else f"valid sections: {', '.join(f.name for f in dataclasses.fields(Config))}"
    return InputError(f"unknown config key '{path}': {hint}")


def _coerce(value: Any, hint: Any, path: str) -> Any:
    """Check ``value`` against a field's type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if hint is Any or (value is None and origin in (typing.Union, types.UnionType)):
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce(value, [a for a in typing.get_args(hint) if a is not type(None)][0], path)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise InputError(f"config key '{path}' must be a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"config key '{path}' must be a mapping, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise InputError(f"config key '{path}' must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise InputError(f"config key '{path}' must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"config key '{path}' must be a number, got {value!r}")
        if not math.isfinite(value):
            raise InputError(f"config key '{path}' must be finite, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise InputError(f"config key '{path}' must be a string, got {value!r}")
        return value
    return value


def _build(cls, raw: dict, prefix: str = ""):
    if not isinstance(raw, dict):
        raise InputError(f"config section '{prefix.rstrip('.') or 'root'}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise _unknown_key(f"{prefix}{key}")
    kwargs = {}
    for name in names & raw.keys():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, raw[name] or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(raw[name], hint, f"{prefix}{name}")
    return cls(**kwargs)


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one ``a.b=c`` override to a nested dict; the value is parsed as YAML (``1e-4``, ``[1,2]``)."""
    if "=" not in assignment:
        raise InputError(f"--set '{assignment}' must look like section.key=value, e.g. --set ppo.learning_rate=1e-4")
    path, text = assignment.split("=", 1)
    parts = path.strip().split(".")
    if path.strip() not in _all_keys(Config):
        raise _unknown_key(path.strip())
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load YAML (or defaults when ``path`` is None), apply overrides, validate."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"config file '{p}' not found: pass an existing YAML file, e.g. --config configs/base.yaml")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            where = f" at line {line + 1}" if line is not None else ""
            raise InputError(f"config file '{p}' is not valid YAML{where}: fix the syntax") from None
        if not isinstance(raw, dict):
            raise InputError(f"config file '{p}' must hold a mapping of sections (data:, env:, ppo:, ...)")
    for assignment in overrides or []:
        apply_override(raw, assignment)
    cfg = _build(Config, raw)
    validate(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
