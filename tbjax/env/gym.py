"""The market env's rules as a single-env Gymnasium env in NumPy, for peers such as SB3.

Same rules, same MarketData arrays, same float32 arithmetic as :mod:`tbjax.env.market` (the
formulas are listed in :mod:`tbjax.env.costs`), written again in plain NumPy so the parity tests
compare two independent implementations (except the feature z-score: the one shared float32
:func:`tbjax.data.scaling.standardize`, applied once to the whole feature block at construction,
as every compiled program of the env applies it once; elementwise, so bit-identical per window;
and the reward shaping, :func:`tbjax.env.costs.shaping_penalty`, one formula over the bar's outcome
that both envs evaluate, so a new shaping term is written once). Differences that
are conventions of Gymnasium, not of the market: ``step`` does not auto-reset (call ``reset``),
the start is sampled with the env's own ``np_random`` (seeded through ``reset(seed=...)``), and
``reset(options={"symbol": s, "bar": t})`` starts deterministically like
:func:`tbjax.env.market.reset_at`.
"""

from __future__ import annotations

from types import SimpleNamespace

import gymnasium
import numpy as np
from gymnasium import spaces

from tbjax.data.market import MarketData
from tbjax.data.scaling import standardize
from tbjax.env.costs import BPS, GROWTH_FLOOR, MIN_QUOTE_VOLUME, BarOutcome, shaping_penalty
from tbjax.env.market import EnvParams, check_data, n_actions, observation_size

F32 = np.float32


class MarketGymEnv(gymnasium.Env):
    """One account trading one symbol of ``data`` under ``params`` (role = params.role)."""

    metadata = {"render_modes": []}

    def __init__(self, data: MarketData, params: EnvParams):
        check_data(params, data)
        self.params = params
        features = np.asarray(data.features, F32)
        if not data.features_scaled:
            scaling = (np.asarray(x, F32) for x in (data.scaling.shift, data.scaling.scale, data.scaling.clip))
            features = standardize(features, *scaling)
        self.features = features
        self.open = np.asarray(data.open, F32)
        self.close_price = np.asarray(data.close, F32)
        self.volatility = np.asarray(data.volatility, F32)
        self.volume = np.asarray(data.volume, F32)
        self.tradable = np.asarray(data.tradable, bool)
        self.hour_of_week = np.asarray(data.hour_of_week, np.int64)
        self.role_start = np.asarray(data.role_start)[:, params.role].astype(np.int64)
        self.role_end = np.asarray(data.role_end)[:, params.role].astype(np.int64)
        # every traced float setting (costs, shaping, bounds) as a float32 scalar, by its env.* name
        self.cost = SimpleNamespace(**{k: F32(np.asarray(v)) for k, v in params.traced.items()
                                       if k != "liquidity_multipliers"})
        # static settings read every step, as plain attributes (a SettingsTree lookup costs ~2 us)
        self.window_size, self.episode_len = int(params.window_size), int(params.episode_len)
        self.action_mode = params.action_mode
        self.liquidity = np.asarray(params.liquidity_multipliers, F32)
        self.levels = np.asarray(params.position_levels, F32)
        size = observation_size(params, data)
        self.observation_space = spaces.Box(-np.inf, np.inf, (size,), F32)
        if params.action_mode == "discrete":
            self.action_space = spaces.Discrete(n_actions(params))
        else:
            self.action_space = spaces.Box(-1.0, 1.0, (1,), F32)
        self._account = None

    # --- episode start -------------------------------------------------------------------
    def _sample_start(self) -> tuple[int, int]:
        rows = self.role_end - self.role_start
        if self.params.symbol_sampling == "length":
            symbol = int(self.np_random.choice(len(rows), p=rows / rows.sum()))
        else:
            symbol = int(self.np_random.integers(len(rows)))
        lo = self.role_start[symbol] + self.window_size - 1
        hi = self.role_end[symbol] - 1 - self.episode_len
        return symbol, int(self.np_random.integers(lo, max(hi, lo) + 1))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options and "symbol" in options:
            symbol = int(options["symbol"])
            lo = self.role_start[symbol] + self.window_size - 1
            bar = int(np.clip(int(options["bar"]), lo, self.role_end[symbol] - 2))
        else:
            symbol, bar = self._sample_start()
        self.symbol, self.bar = symbol, bar
        self.position, self.equity = F32(0.0), F32(1.0)
        self.peak_equity, self.entry_equity = F32(1.0), F32(1.0)
        self.bars_in_position, self.episode_step, self.episode_return = 0, 0, F32(0.0)
        return self._observe(), {"symbol": symbol, "bar": bar}

    def _observe(self) -> np.ndarray:
        w = self.window_size
        window = self.features[self.symbol, self.bar - w + 1:self.bar + 1].reshape(-1)
        account = np.array([
            self.position,
            np.log(self.equity / self.entry_equity),
            F32(self.bars_in_position) / F32(self.episode_len),
            F32(1.0) - self.equity / self.peak_equity,
        ], dtype=F32)
        return np.concatenate([account, window]).astype(F32)

    def _target(self, action) -> np.float32:
        if self.action_mode == "discrete":
            return self.levels[int(np.clip(int(np.asarray(action).reshape(())), 0, len(self.levels) - 1))]
        a = F32(np.clip(F32(np.asarray(action, F32).reshape(())), -1.0, 1.0))
        lo, hi = self.cost.min_position, self.cost.max_position
        return F32(lo + (a + F32(1.0)) * F32(0.5) * (hi - lo))

    # --- one bar: gap -> fill -> intrabar -> borrow (tbjax.env.costs) ---------------------
    def step(self, action):
        c, s, t = self.cost, self.symbol, self.bar
        p, equity, floor = self.position, self.equity, F32(GROWTH_FLOOR - 1.0)
        close_t, open_n, close_n = self.close_price[s, t], self.open[s, t + 1], self.close_price[s, t + 1]
        tradable = bool(self.tradable[s, t + 1])

        gap = (open_n - close_t) / close_t
        gap_move = max(p * gap, floor)
        p_open = F32(p * (F32(1.0) + gap) / (F32(1.0) + gap_move))
        equity_open = equity * (F32(1.0) + gap_move)

        p_filled = self._target(action) if tradable else p_open
        turnover = abs(p_filled - p_open)
        quote_volume = max(self.volume[s, t + 1] * open_n, F32(MIN_QUOTE_VOLUME))
        participation = turnover * equity_open * c.capital / quote_volume
        mult = self.liquidity[self.hour_of_week[s, t + 1]]
        cost_rate = (c.fee_bps * F32(BPS)
                     + mult * (c.half_spread_bps * F32(BPS) + c.slippage_k * self.volatility[s, t])
                     + c.impact_coef * np.sqrt(participation))
        trade_cost = min(turnover * cost_rate, F32(1.0 - GROWTH_FLOOR))

        intrabar = (close_n - open_n) / open_n
        intrabar_move = max(p_filled * intrabar, floor)
        p_close = F32(p_filled * (F32(1.0) + intrabar) / (F32(1.0) + intrabar_move))
        borrow = min(c.borrow_bps_per_bar * F32(BPS) * max(-p_close, F32(0.0)), F32(1.0 - GROWTH_FLOOR))

        new_equity = F32(equity * (F32(1.0) + gap_move) * (F32(1.0) - trade_cost)
                         * (F32(1.0) + intrabar_move) * (F32(1.0) - borrow))
        gross = np.log1p(gap_move) + np.log1p(intrabar_move)
        log_return = gross + np.log1p(-trade_cost) + np.log1p(-borrow)
        cost = F32(trade_cost + borrow - trade_cost * borrow)
        bar = BarOutcome(p_close, p_filled, p_open, equity_open, new_equity, log_return, gross, cost, F32(turnover))
        reward = F32(log_return - shaping_penalty(bar, c))

        flat = p_filled == 0.0
        new_entry = tradable and not flat and np.sign(p_filled) != np.sign(p_open)
        if flat:
            self.entry_equity, self.bars_in_position = new_equity, 0
        elif new_entry:
            self.entry_equity, self.bars_in_position = F32(equity_open), 1
        else:
            self.bars_in_position += 1
        self.position, self.equity = p_close, new_equity
        self.peak_equity = max(self.peak_equity, new_equity)
        self.episode_step += 1
        self.episode_return = F32(self.episode_return + reward)
        self.bar = t + 1

        terminated = bool(new_equity < c.equity_floor)
        truncated = bool(self.episode_step >= self.episode_len or t + 3 > self.role_end[s]) and not terminated
        obs = self._observe()
        info = {
            "symbol": s, "bar": t, "gross_log_return": F32(gross),
            "cost": cost, "turnover": F32(turnover),
            "tradable": tradable, "equity": new_equity, "terminated": terminated, "truncated": truncated,
            "episode_return": self.episode_return, "episode_length": self.episode_step,
            "final_equity": new_equity, "final_obs": obs,
        }
        return obs, float(reward), terminated, truncated, info
