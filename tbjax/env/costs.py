"""One bar of account arithmetic: gap move -> fill (costs) -> intrabar move -> borrow.

Everything is a fraction of equity, so the account is scale-free; ``capital`` (quote currency)
enters only through market-impact participation. The order and every formula, for a decision
on bar t's close with position p (fraction of equity held at close_t) and target a:

1. Gap move, close_t -> open_{t+1}:
       g          = (open_{t+1} - close_t) / close_t
       gap_growth = 1 + p*g                           (equity factor)
       p_open     = p*(1 + g) / (1 + p*g)             (the fraction drifts with the price)
2. Fill at open_{t+1} (only if tradable[t+1]; otherwise the action is ignored, p_filled = p_open):
       p_filled      = a
       turnover      = |p_filled - p_open|
       participation = turnover * equity_open * capital / (volume_{t+1} * open_{t+1})
       cost_rate     = fee_bps*1e-4
                       + m * (half_spread_bps*1e-4 + slippage_k * volatility_t)
                       + impact_coef * sqrt(participation)
       trade_cost    = turnover * cost_rate              (fraction of equity at the open)
   with m = liquidity_multipliers[hour_of_week_{t+1}]. Equity at the open is equity_t*gap_growth.
   The square-root impact law is from Almgren, Thum, Hauptmann & Li (2005) "Direct estimation of
   equity market impact" and Toth et al. (2011) "Anomalous price impact and the critical nature of
   liquidity in financial markets"; the linear spread + volatility-scaled slippage is the usual
   Almgren & Chriss (2000) temporary-impact form.
3. Intrabar move, open_{t+1} -> close_{t+1}:
       r               = (close_{t+1} - open_{t+1}) / open_{t+1}
       intrabar_growth = 1 + p_filled*r
       p_close         = p_filled*(1 + r) / (1 + p_filled*r)
4. Borrow on short exposure at the close:
       borrow_cost = borrow_bps_per_bar*1e-4 * max(-p_close, 0)

   equity_{t+1} = equity_t * gap_growth * (1 - trade_cost) * intrabar_growth * (1 - borrow_cost)
   log_return   = log1p(p*g) + log1p(-trade_cost) + log1p(p_filled*r) + log1p(-borrow_cost)

Costs are charged pro rata from cash and holdings, so they scale equity and leave the held
fraction unchanged (p_close is the position carried into bar t+1). Each growth factor is floored
at GROWTH_FLOOR so a wipe-out cannot produce log(<=0); the equity floor ends such an episode.

5. Reward shaping (:func:`shaping_penalty`): terms the agent is penalised by that the account never
   pays, subtracted from log_return to give the reward:
       reward = log_return - turnover_penalty * turnover
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

BPS = 1e-4
GROWTH_FLOOR = 1e-6
MIN_QUOTE_VOLUME = 1e-12  # guards participation on a zero-volume bar (never tradable in MarketData)


class BarOutcome(NamedTuple):
    """Per-env results of one bar of accounting (all float32 scalars, tradable is bool)."""

    position: jnp.ndarray        # p_close, carried into the next decision
    position_filled: jnp.ndarray  # p_filled, held over the intrabar move
    position_open: jnp.ndarray   # p_open, drifted fraction before the fill
    equity_open: jnp.ndarray     # equity_t * gap_growth (before the fill's costs)
    equity: jnp.ndarray          # equity_{t+1}
    log_return: jnp.ndarray      # log(equity_{t+1} / equity_t)
    gross_log_return: jnp.ndarray  # log1p(p*g) + log1p(p_filled*r): price moves only
    cost: jnp.ndarray            # 1 - (1 - trade_cost)(1 - borrow_cost): fraction of equity paid
    turnover: jnp.ndarray        # |p_filled - p_open|


def settle_bar(position, target, equity, tradable_next, close_t, open_next, close_next,
               volatility_t, volume_next, liquidity_mult, params) -> BarOutcome:
    """Apply steps 1-4 of the module docstring for one env (vmap for many)."""
    gap = (open_next - close_t) / close_t
    gap_move = jnp.maximum(position * gap, GROWTH_FLOOR - 1.0)
    position_open = position * (1.0 + gap) / (1.0 + gap_move)
    equity_open = equity * (1.0 + gap_move)

    position_filled = jnp.where(tradable_next, target, position_open)
    turnover = jnp.abs(position_filled - position_open)
    quote_volume = jnp.maximum(volume_next * open_next, MIN_QUOTE_VOLUME)
    participation = turnover * equity_open * params.capital / quote_volume
    cost_rate = (params.fee_bps * BPS
                 + liquidity_mult * (params.half_spread_bps * BPS + params.slippage_k * volatility_t)
                 + params.impact_coef * jnp.sqrt(participation))
    trade_cost = jnp.minimum(turnover * cost_rate, 1.0 - GROWTH_FLOOR)

    intrabar = (close_next - open_next) / open_next
    intrabar_move = jnp.maximum(position_filled * intrabar, GROWTH_FLOOR - 1.0)
    position_close = position_filled * (1.0 + intrabar) / (1.0 + intrabar_move)
    borrow_cost = jnp.minimum(params.borrow_bps_per_bar * BPS * jnp.maximum(-position_close, 0.0),
                              1.0 - GROWTH_FLOOR)

    equity_next = equity * (1.0 + gap_move) * (1.0 - trade_cost) * (1.0 + intrabar_move) * (1.0 - borrow_cost)
    gross = jnp.log1p(gap_move) + jnp.log1p(intrabar_move)
    log_return = gross + jnp.log1p(-trade_cost) + jnp.log1p(-borrow_cost)
    cost = trade_cost + borrow_cost - trade_cost * borrow_cost
    return BarOutcome(position_close, position_filled, position_open, equity_open, equity_next,
                      log_return, gross, cost, turnover)


def shaping_penalty(bar: BarOutcome, params):
    """The reward-shaping terms of one bar (step 5 of the module docstring): what the reward subtracts
    from the bar's log return besides what the account paid. Every term is a traced env.* setting
    (declared ``shaping=True`` in tbjax/config.py, so HPO may search it) times a value of ``bar``.

    Written once for both envs: the JAX env (:func:`tbjax.env.market.market_step`) passes its float32
    arrays, the NumPy twin (:class:`tbjax.env.gym.MarketGymEnv`) its float32 scalars, so a new term
    is one line here and nowhere else.
    """
    return params.turnover_penalty * bar.turnover
