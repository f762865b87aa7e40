"""Do no harm: deploy the agent only where VALIDATION shows an edge over the trivial policy.

A trained policy that validation cannot tell apart from holding flat (long-short) or buying and
holding (long-only) is not deployed: the run's policy is then that baseline, and its test is
scored for that choice. The edge is the PAIRED test of the per-bar active return, strategy minus
baseline on the same val bars (:func:`tbjax.evaluation.significance.paired_edge`): the agent is
deployed when PSR(active > 0) >= ``eval.edge_confidence`` (0: always deploy the agent, the
behaviour before this rule). Only val bars are read here.

The checkpoint (and, in a population, the members) being judged were CHOSEN on those same val
bars, among every evaluation of every member: the best of many looks shows an edge by luck. The
decision therefore also states the deflated probability, tested not against 0 but against SR0, the
Sharpe the best of N zero-skill looks would show (the Deflated Sharpe Ratio of Bailey & López de
Prado 2014, as HPO's selection statistics use it): N = the val looks the selection compared, V[SR]
= the variance of their per-bar active Sharpes against the baseline (a look that trades as the
baseline does, zero active variance, counts as 0). With ``eval.edge_deflation`` the decision uses
it. It is off by default, as measured on walk-forward folds (docs/TUNING.md): successive
checkpoints of one learner are neither independent nor zero-skill (their spread is partly real
learning), so SR0 overstates luck; it rejected folds with a real edge (planted rho 0.1: stitched
Sharpe 1.49 -> 1.16) and flipped none of the sample's losing folds.

The baseline (``eval.baseline``): ``flat`` holds position 0, ``buy_and_hold`` position 1;
``auto`` is flat when the action space can go short, else buy-and-hold. It trades through the
same env as the agent (fills, costs), as a :class:`ConstantPolicy`.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from tbjax.errors import InputError
from tbjax.evaluation.significance import MIN_ACTIVE_BARS, expected_max_sharpe, psr_from_moments

BASELINE_POSITION = {"flat": 0.0, "buy_and_hold": 1.0}
BASELINE_WORDS = {"flat": "holding flat", "buy_and_hold": "buying and holding"}


def resolve_baseline(baseline: str, action_mode: str, position_levels, min_position: float) -> str:
    """``eval.baseline`` with ``auto`` resolved: flat where the agent may short, else buy-and-hold."""
    if baseline != "auto":
        return baseline
    lowest = min(position_levels) if action_mode == "discrete" else min_position
    return "flat" if lowest < 0 else "buy_and_hold"


def baseline_action(name: str, action_mode: str, position_levels, min_position: float, max_position: float):
    """The action that targets the baseline's position: a level's index, or the continuous value
    in [-1, 1] that maps to it. InputError (naming the keys) when the action space cannot hold it."""
    target = BASELINE_POSITION[name]
    if action_mode == "discrete":
        levels = [float(v) for v in position_levels]
        if target not in levels:
            raise InputError(f"eval.baseline = {name} holds position {target}, which env.position_levels = "
                             f"{levels} does not offer; add {target} to env.position_levels or set eval.baseline")
        return levels.index(target)
    if not min_position <= target <= max_position:
        raise InputError(f"eval.baseline = {name} holds position {target}, outside [env.min_position, "
                         f"env.max_position] = [{min_position}, {max_position}]; widen them or set eval.baseline")
    return 2.0 * (target - min_position) / (max_position - min_position) - 1.0


@dataclasses.dataclass(frozen=True)
class ConstantPolicy:
    """An acting function (``policy_apply``'s signature) that always takes one action: the baseline."""

    action_mode: str
    action: float

    def __call__(self, params, obs_stats, obs, deterministic: bool = True, key=None):
        batch = obs.shape[:-1]
        if self.action_mode == "discrete":
            return jnp.full(batch, int(self.action), jnp.int32)
        return jnp.full(batch + (1,), self.action, jnp.float32)


def baseline_name(cfg) -> str:
    """A config's ``eval.baseline`` with ``auto`` resolved against its action space."""
    e = cfg.env
    return resolve_baseline(cfg.eval.baseline, e.action_mode, e.position_levels, e.min_position)


def baseline_policy(cfg) -> tuple[str, ConstantPolicy]:
    """(baseline name, its constant policy) for a config."""
    e, name = cfg.env, baseline_name(cfg)
    return name, ConstantPolicy(e.action_mode, baseline_action(name, e.action_mode, e.position_levels,
                                                                e.min_position, e.max_position))


def val_look(val_eval: dict, baseline: str) -> float | None:
    """One val evaluation's per-bar active Sharpe against ``baseline`` (a look the selection took);
    0 for a policy that trades as the baseline does; None when the eval holds no paired test."""
    edge = (val_eval.get("vs_baselines") or {}).get(baseline)
    if not edge or not edge.get("n_bars"):
        return None
    sr = edge.get("active_sharpe")
    return float(sr) if sr is not None and math.isfinite(sr) else 0.0


def deflated_threshold(looks) -> tuple[int, float]:
    """(N, SR0): the val looks counted and the per-bar Sharpe the best of them shows by luck."""
    kept = np.array([x for x in looks if x is not None and math.isfinite(x)], np.float64)
    if kept.size < 2:
        return int(kept.size), 0.0
    return int(kept.size), expected_max_sharpe(kept.size, float(kept.var(ddof=1)))


def decide(val_eval: dict, baseline: str, confidence: float, looks=(), deflate: bool = False) -> dict:
    """The deployment decision from a VAL eval dict (its ``vs_baselines`` entry, see backtest) and
    the ``looks`` the selection compared on val (:func:`val_look` of each evaluation; module
    docstring); ``deflate`` (``eval.edge_deflation``): decide on the deflated probability.

    Returns {"policy": "agent" | "baseline", "baseline", "val_edge": paired stats, "looks": N,
    "sr0", "psr_deflated", "deflated", "confidence", "reason"}: plain words a report can show.
    """
    edge = dict((val_eval.get("vs_baselines") or {}).get(baseline) or {})
    n_looks, sr0 = deflated_threshold(looks)
    plain = psr_deflated = edge.get("psr")
    if n_looks > 1 and plain is not None and "active_skew" in edge:
        psr_deflated = psr_from_moments(edge["active_sharpe"], edge["active_skew"], edge["active_kurtosis"],
                                        edge["n_bars"], sr0)
    psr = psr_deflated if deflate else plain
    has_edge = confidence == 0 or (psr is not None and math.isfinite(psr) and psr >= confidence)
    words = BASELINE_WORDS[baseline]
    shown = _prob(psr)
    if n_looks > 1:
        shown += (f" (deflated for the {n_looks} val evaluations compared; undeflated {_prob(plain)})" if deflate else
                  f" ({_prob(psr_deflated)} once deflated for the {n_looks} val evaluations compared)")
    few = edge.get("active_bars")
    if has_edge:
        reason = f"edge found on val: P(agent beats {words}) = {shown} >= {confidence:.2f}; deploying the agent"
    elif few is not None and few < MIN_ACTIVE_BARS:
        reason = (f"no edge found on val: the agent's returns differ from those of {words} on {few} val bar"
                  f"{'' if few == 1 else 's'} only, too few to test (at least {MIN_ACTIVE_BARS}); {words} instead")
    else:
        reason = (f"no edge found on val: P(agent beats {words}) = {shown} < {confidence:.2f}; "
                  f"{words} instead")
    return {"policy": "agent" if has_edge else "baseline", "baseline": baseline,
            "position": BASELINE_POSITION[baseline], "val_edge": edge, "looks": n_looks, "sr0": sr0,
            "psr_deflated": psr_deflated, "deflated": deflate, "confidence": confidence, "reason": reason}


def _prob(p) -> str:
    return "undefined" if p is None or not math.isfinite(p) else f"{p:.2f}"


def deployed_decision(evals: dict) -> dict | None:
    """The deployment decision the splits' evaluations carry (every split holds the same one, made
    on val); None for evaluations written before abstention existed."""
    return next((ev["deployed"] for ev in evals.values() if ev and ev.get("deployed")), None)


def deployment_lines(evals: dict) -> list[str]:
    """What the run deploys, in plain words, first on the page (tbjax.evaluation.deployment)."""
    decision = deployed_decision(evals)
    if decision is None:
        return []
    who = "the trained agent" if decision["policy"] == "agent" else f"the baseline ({decision['baseline']})"
    lines = [f"**Deployed: {who}.** {decision['reason'][0].upper()}{decision['reason'][1:]}."]
    if decision["policy"] == "baseline":
        lines += ["", "The val and test tables below score the baseline traded through the same env; the agent's "
                  "own figures are in eval/*.json under \"agent\"."]
    return lines + [""]
