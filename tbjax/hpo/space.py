"""The HPO search space: YAML entries under ``hpo.space`` → validated Optuna suggestions.

Each entry names a config key and a distribution::

    ppo.learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
    ppo.n_steps:       {type: int, low: 16, high: 64, step: 16}
    ppo.hidden_sizes:  {type: categorical, choices: [[64, 64], [128, 128]]}

Two kinds of keys are searchable. Continuous learner settings (every traced ``ppo.*`` key and the
reward-shaping ``env.*`` weights such as ``env.turnover_penalty``) become traced HParams leaves, so
a new trial reuses the compiled trainer (docs/DESIGN.md invariant 4). Shape and structure
settings (``ppo.n_envs``, ``ppo.hidden_sizes``, ...) change the static TrainerSpec: trials are
grouped per signature and each signature compiles once. Market costs (fees, spread, slippage, ...) describe the market,
not the agent, and are not searchable: tuning them would fit the costs away.

"Set by the user" means present in the YAML file or in ``--set`` (not a default): such a key is
used as given and never suggested, even when the space lists it. Two risk keys are searched by
default unless fixed that way: ``ppo.cvar_alpha`` in [1/ppo.num_quantiles, 0.20] and
``ppo.cvar_weight`` in [0.1, 2.0] (log scale). Every problem in the space is an InputError before
the first trial, including a combination of values a trial could sample that breaks a config rule
(every combination is resolved as a trial would resolve it: :mod:`tbjax.hpo.space_check`).

The CVaR floor. The critic's N = ``ppo.num_quantiles`` quantiles carry mass 1/N each, so for
alpha < 1/N both VaR_alpha and CVaR_alpha equal the lowest quantile and alpha only rescales
``ppo.cvar_weight`` (the shaping term is weighted by cvar_weight / alpha; docs/ALGORITHMS.md).
Searching there is wasted trials, so a user range for ``ppo.cvar_alpha`` must start at 1/N or
above. When ``ppo.num_quantiles`` is searched too, the range must start at or above 1/N of the
largest N searched, and a trial with a smaller N whose sampled alpha lies below its own 1/N runs
with alpha raised to 1/N: the trial's config holds the value used and the user attr
``adjusted`` says so (Optuna keeps the sampled value in ``params``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tbjax.config import Config, EnvConfig, PPOConfig, apply_override, keys_of_kind, lone_learner, validate
from tbjax.config_rules import cvar_floor
from tbjax.errors import InputError
from tbjax.hpo.space_check import check_combinations

# What a search may vary, read from the config's traced/static declarations: every traced ppo.*
# key and the reward shaping (env.* keys declared shaping=True; no recompile), and the learner's
# static shapes plus the episode length (one program per shape signature). Env costs and the action
# space describe the market and the account, not the learner, so they are not searched.
TRACED_KEYS = tuple(f"ppo.{k}" for k in keys_of_kind("traced", "ppo")) + tuple(
    f"env.{k}" for k in keys_of_kind("shaping", "env"))
STATIC_KEYS = tuple(f"ppo.{k}" for k in keys_of_kind("static", "ppo")) + ("env.episode_len",)
SEARCHABLE_KEYS = TRACED_KEYS + STATIC_KEYS
CVAR_ALPHA_KEY, NUM_QUANTILES_KEY = "ppo.cvar_alpha", "ppo.num_quantiles"
# "low" of ppo.cvar_alpha is 1/ppo.num_quantiles (the largest N searched), filled in per config
DEFAULT_SPACE = {
    CVAR_ALPHA_KEY: {"type": "float", "low": None, "high": 0.20},
    "ppo.cvar_weight": {"type": "float", "low": 0.1, "high": 2.0, "log": True},
}
_SECTIONS = {"ppo": PPOConfig, "env": EnvConfig}
_ENUMERATION_LIMIT = 4096  # int ranges longer than this are checked at their end points only


@dataclass(frozen=True)
class ParamSpec:
    """One searchable key and its distribution (``choices`` holds the YAML values)."""

    key: str
    kind: str  # "float" | "int" | "categorical"
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple = ()

    @property
    def traced(self) -> bool:
        return self.key in TRACED_KEYS

    def candidates(self) -> list:
        """Values to check before any trial: both ends of a range, every choice."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int" and (self.high - self.low) // (self.step or 1) < _ENUMERATION_LIMIT:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        return [self.low, self.high]

    def suggest(self, trial) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step or 1)
        encoded = [_encode_choice(c) for c in self.choices]
        return _decode_choice(trial.suggest_categorical(self.key, encoded))


def _encode_choice(value: Any) -> Any:
    """Optuna stores only None/bool/int/float/str choices: lists travel as JSON text."""
    return json.dumps(value) if isinstance(value, (list, tuple)) else value


def _decode_choice(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) and value.startswith("[") else value


@functools.cache
def _field_hint(key: str):
    section, name = key.split(".", 1)
    return typing.get_type_hints(_SECTIONS[section])[name]


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[ParamSpec, ...]
    fixed: tuple[str, ...]  # keys listed in the space (or default space) but set by the user
    notes: tuple[str, ...] = ()  # how the space was adapted to the config; printed once by tbjax.hpo

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    @property
    def static_keys(self) -> list[str]:
        return [p.key for p in self.params if not p.traced]

    def suggest(self, trial) -> dict[str, Any]:
        return {p.key: p.suggest(trial) for p in self.params}

    def apply(self, cfg: Config, values: dict[str, Any]) -> Config:
        """The trial's config: ``values`` written into their sections, then the config rules checked."""
        return self.resolve(cfg, values)[0]

    def resolve(self, cfg: Config, values: dict[str, Any]) -> tuple[Config, list[str]]:
        """The trial's config plus a line for each value changed on the way (empty when none).

        The one change: a searched ``ppo.cvar_alpha`` below 1/``ppo.num_quantiles`` of the trial is
        raised to that floor (only possible when num_quantiles is searched too, or for an
        enqueued value outside the range), so the trial runs a CVaR that alpha actually shapes.
        """
        trial_cfg = _replace(cfg, values)
        notes = []
        if CVAR_ALPHA_KEY in values:
            trial_cfg, note = _raise_to_cvar_floor(trial_cfg)
            notes += [note] if note else []
        return _validated(trial_cfg), notes


def _raise_to_cvar_floor(cfg: Config) -> tuple[Config, str | None]:
    floor = cvar_floor(cfg.ppo.num_quantiles)
    if cfg.ppo.cvar_alpha >= floor:
        return cfg, None
    note = (f"ppo.cvar_alpha {cfg.ppo.cvar_alpha:.4g} raised to 1/ppo.num_quantiles = 1/{cfg.ppo.num_quantiles} "
            f"= {floor:.4g}: below it VaR and CVaR both equal the lowest quantile")
    return dataclasses.replace(cfg, ppo=dataclasses.replace(cfg.ppo, cvar_alpha=floor)), note


def _replace(cfg: Config, values: dict[str, Any]) -> Config:
    by_section: dict[str, dict] = {}
    for key, value in values.items():
        section, name = key.split(".", 1)
        hint = _field_hint(key)
        if hint is float:
            value = float(value)
        by_section.setdefault(section, {})[name] = value
    return dataclasses.replace(cfg, **{s: dataclasses.replace(getattr(cfg, s), **kw) for s, kw in by_section.items()})


def _validated(cfg: Config) -> Config:
    validate(cfg)
    return cfg


# --------------------------------------------------------------------------- user-set keys


def _leaf_paths(node: Any, prefix: str = "") -> set[str]:
    if not isinstance(node, dict) or prefix == "hpo.space.":
        return {prefix.rstrip(".")} if prefix else set()
    out: set[str] = set()
    for key, value in node.items():
        out |= _leaf_paths(value, f"{prefix}{key}.")
    return out


def user_set_keys(config_path: str | Path | None, overrides: list[str] | None = None) -> set[str]:
    """Dotted keys the user wrote (YAML file or ``--set``), as opposed to defaults.

    Re-reads the YAML because the typed Config cannot tell a default from an explicit value;
    ``load_config`` has already validated the file, so this only collects key paths.
    """
    raw: dict = {}
    if config_path is not None and Path(config_path).is_file():
        raw = yaml.safe_load(Path(config_path).read_text()) or {}
    for assignment in overrides or []:
        apply_override(raw, assignment)
    return _leaf_paths(raw)


# --------------------------------------------------------------------------- parsing


def _number(entry: dict, name: str, where: str, required: bool = True):
    value = entry.get(name)
    if value is None:
        if required:
            raise InputError(f"{where}: '{name}' is missing; give a number, e.g. {{type: float, low: 0.01, high: 0.2}}")
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{where}: '{name}' must be a finite number, got {entry.get(name)!r}")
    return value


def _matches(value: Any, hint) -> bool:
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and bool(value) and all(_matches(v, item) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def parse_param(key: str, entry: Any) -> ParamSpec:
    """One ``hpo.space`` entry → ParamSpec; InputError naming the key, the problem and the fix."""
    where = f"hpo.space.{key}"
    if key not in SEARCHABLE_KEYS:
        if key in ("env.fee_bps", "env.half_spread_bps", "env.slippage_k", "env.impact_coef", "env.borrow_bps_per_bar"):
            raise InputError(f"{where}: market costs are not searchable (tuning them would fit the costs away); "
                             f"remove it. Searchable keys: {', '.join(SEARCHABLE_KEYS)}")
        raise InputError(f"{where}: unknown or non-searchable parameter; use one of {', '.join(SEARCHABLE_KEYS)}")
    if not isinstance(entry, dict):
        raise InputError(f"{where} must be a mapping such as {{type: float, low: 1.0e-5, high: 1.0e-3, log: true}}, got {entry!r}")
    unknown = set(entry) - {"type", "low", "high", "step", "log", "choices"}
    if unknown:
        raise InputError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: type, low, high, step, log, choices")
    kind = entry.get("type")
    hint = _field_hint(key)
    if kind == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices:
            raise InputError(f"{where}: categorical needs a non-empty list 'choices', got {choices!r}")
        if len({json.dumps(c) for c in choices}) != len(choices):
            raise InputError(f"{where}: choices {choices} repeat a value; list each choice once")
        for c in choices:
            if not _matches(c, hint):
                raise InputError(f"{where}: choice {c!r} does not fit the setting's type ({_type_name(hint)}); "
                                 "fix the choices")
        return ParamSpec(key, "categorical", choices=tuple(tuple(c) if isinstance(c, list) else c for c in choices))
    if kind not in ("float", "int"):
        raise InputError(f"{where}: type must be float, int or categorical, got {kind!r}")
    if hint not in (int, float):
        raise InputError(f"{where}: '{key}' is not a number; search it with type: categorical and choices")
    if kind == "float" and hint is int:
        raise InputError(f"{where}: '{key}' is an integer setting; use type: int")
    low, high = _number(entry, "low", where), _number(entry, "high", where)
    step = _number(entry, "step", where, required=False)
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise InputError(f"{where}: 'log' must be true or false, got {log!r}")
    if low >= high:
        raise InputError(f"{where}: low = {low} must be below high = {high}; swap them or widen the range")
    if log and low <= 0:
        raise InputError(f"{where}: a log-scale range needs low > 0, got low = {low}; raise low or drop log: true")
    if step is not None and step <= 0:
        raise InputError(f"{where}: step must be > 0, got {step}")
    if kind == "int":
        for name, v in (("low", low), ("high", high), ("step", step)):
            if v is not None and float(v) != int(v):
                raise InputError(f"{where}: {name} = {v} must be a whole number for type: int")
        low, high, step = int(low), int(high), (int(step) if step is not None else None)
        if log and step not in (None, 1):
            raise InputError(f"{where}: Optuna cannot combine log: true with step {step}; drop one of them")
    elif log and step is not None:
        raise InputError(f"{where}: Optuna cannot combine log: true with a step; drop one of them")
    return ParamSpec(key, kind, low=low, high=high, step=step, log=log)


def _searched_num_quantiles(cfg: Config, user_entries: dict, user_keys: set[str]) -> list[int]:
    """The ``ppo.num_quantiles`` values trials can have: the config's, or those of its space entry."""
    if NUM_QUANTILES_KEY in user_entries and NUM_QUANTILES_KEY not in user_keys:
        return [int(n) for n in parse_param(NUM_QUANTILES_KEY, user_entries[NUM_QUANTILES_KEY]).candidates()]
    return [cfg.ppo.num_quantiles]


def _default_space(n_quantiles: list[int]) -> tuple[dict, list[str]]:
    """DEFAULT_SPACE with ``ppo.cvar_alpha``'s low end at 1/N (N the largest ppo.num_quantiles).

    When that floor reaches the default top (N <= 5) the default alpha range would be empty, so
    alpha is not searched by default and a note says how to search it.
    """
    space = {k: dict(v) for k, v in DEFAULT_SPACE.items()}
    floor = cvar_floor(max(n_quantiles))
    alpha = space[CVAR_ALPHA_KEY]
    if floor >= alpha["high"]:
        del space[CVAR_ALPHA_KEY]
        return space, [f"ppo.cvar_alpha is not searched by default: 1/ppo.num_quantiles = {floor:.4g} is not below "
                       f"the default top {alpha['high']}; add hpo.space.ppo.cvar_alpha with low >= {floor:.4g} "
                       "to search it"]
    alpha["low"] = floor
    return space, []


def _check_cvar_floor(spec: ParamSpec, n_quantiles: list[int]) -> list[str]:
    """A ``ppo.cvar_alpha`` range must start at 1/N or above (see the module docstring).

    With ``ppo.num_quantiles`` searched the bound is 1/N of the largest N, and values between
    that and a smaller N's floor are raised per trial: returned as a note to print.
    """
    low = min(spec.candidates())
    floor, n_max = cvar_floor(max(n_quantiles)), max(n_quantiles)
    if low < floor:
        which = (f"1/ppo.num_quantiles = 1/{n_max}" if len(n_quantiles) == 1 else
                 f"1/N for the largest ppo.num_quantiles searched (N = {n_max})")
        raise InputError(f"hpo.space.{CVAR_ALPHA_KEY}: low end {low:.4g} is below {which} = {floor:.4g}: there VaR "
                         "and CVaR both equal the lowest quantile and alpha only rescales ppo.cvar_weight; "
                         f"start the range at {floor:.4g} or above (docs/ALGORITHMS.md)")
    n_min = min(n_quantiles)
    if low < cvar_floor(n_min):
        return [f"ppo.cvar_alpha values below 1/ppo.num_quantiles of a trial (up to 1/{n_min} = "
                f"{cvar_floor(n_min):.4g} when ppo.num_quantiles = {n_min}) are raised to that floor for the trial; "
                "the trial's user attr 'adjusted' records it"]
    return []


def build_search_space(cfg: Config, user_keys: set[str]) -> SearchSpace:
    """Default risk space + ``cfg.hpo.space``, minus user-set keys, validated against ``cfg``."""
    if not isinstance(cfg.hpo.space, dict):
        raise InputError("hpo.space must be a mapping of config keys to distributions")
    user_entries = {str(key): entry for key, entry in cfg.hpo.space.items()}
    n_quantiles = _searched_num_quantiles(cfg, user_entries, user_keys)
    raw, notes = _default_space(n_quantiles)
    raw.update(user_entries)
    parsed = [parse_param(key, entry) for key, entry in raw.items()]  # every entry checked, fixed or not
    fixed = tuple(p.key for p in parsed if p.key in user_keys)
    params = tuple(p for p in parsed if p.key not in user_keys)
    if not params:
        raise InputError("hpo.space: every parameter is fixed by the config (YAML or --set), nothing to search; "
                         "add an entry to hpo.space for a key you do not set")
    by_key = {p.key: p for p in params}
    if CVAR_ALPHA_KEY in by_key:
        notes += _check_cvar_floor(by_key[CVAR_ALPHA_KEY], n_quantiles)
    space = SearchSpace(params, fixed, tuple(notes))
    trial_base = lone_learner(cfg)  # what TrialRunner.plan resolves a trial's values on
    check_combinations(space.params, lambda values: space.resolve(trial_base, values))
    return space
