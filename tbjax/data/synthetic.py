"""A regime-switching synthetic market, optionally with a planted predictive signal.

Used for the regime part of the HPO objective (docs/ALGORITHMS.md "Regime objective") and for
learning tests where the right answer is known (docs/ALGORITHMS.md "Planted-signal oracle").

Model, per bar t with regime s_t (parameters per bar: mu, sigma, kappa, avg volume, avg spread):

* Regimes follow a Markov chain: stay with probability ``STAY_PROBABILITY`` = 0.995 per bar
  (geometric durations, mean 200 bars), otherwise jump to one of the other three regimes uniformly.
  The first regime is uniform. ``regime=NAME`` forces one regime for every bar.
* Planted signal: z_t ~ N(0, 1) i.i.d., observable at bar t through the taker-buy ratio
  taker_buy_ratio_t = clip(0.5 + 0.1 z_t, 0.01, 0.99).
* Log return of bar t+1 (close-to-close, equal to open-to-close because open[t+1] = close[t]):
      b_{t+1} = mu + sigma (rho z_t + sqrt(1 - rho^2) eps_{t+1}) + shock_{t+1}
      r_{t+1} = b_{t+1} - kappa x_t
  eps ~ N(0, 1); shock = +-m with probability ``SHOCK_PROBABILITY`` = 0.01, m uniform over
  0.5 %, 1 %, 1.5 %, 2 % and a random sign (flash moves).
* Mean reversion: x_t = log close_t - a_t is the distance to a slowly moving anchor a_t, an EMA of
  log close with alpha = ``ANCHOR_ALPHA`` = 0.01 (half-life about 69 bars) restarted at the price
  whenever the regime changes (so entering CHOPPY_FLAT after a trend causes no artificial jump).
  Then x_{t+1} = (1 - alpha)(x_t + r_{t+1}) = phi x_t + (1 - alpha) b_{t+1},
  phi = (1 - alpha)(1 - kappa):
  an AR(1) within each regime, run with ``scipy.signal.lfilter`` per regime segment.
  With v = sigma^2 + 0.01 E[m^2] the stationary return variance is
      Var r = v (1 + kappa^2 (1 - alpha)^2 / (1 - phi^2))   (= v when kappa = 0),
  and corr(z_t, r_{t+1}) = rho sigma / sqrt(Var r): the planted correlation is rho diluted by the
  shocks (about 0.99 rho in NORMAL) and by mean reversion.
* Bars: open_0 = 100, close = open * exp(r); high/low extend max/min(open, close) by
  sigma/2 |N(0,1)|; volume = avg volume * lognormal(mean 1, s=0.5) * (0.5 + 0.5 |u| sqrt(pi/2))
  with u the standardised innovation (busier on larger moves, mean avg volume); n_trades ~
  Poisson(2 volume); quote volumes use the typical price (H + L + C) / 3.

* Planted tail (``crash=Crash(...)``, off by default): a second, independent chain of spells,
  calm (f_t = 0) or fragile at a level f_t = L in 1..``Crash.levels`` (drawn uniformly per spell).
  A calm spell ends with probability ``Crash.enter`` per bar, a fragile one with 1 - ``Crash.stay``
  (mean 1 / (1 - stay) bars); the fragile share of bars is enter / (enter + 1 - stay). A fragile
  bar's innovation gains the premium and, with probability ``Crash.prob`` x L, a crash:
      b_t += [f_t > 0] premium - size C_t,   C_t ~ Bernoulli(prob f_t)
  so a level-L bar's mean log return is mu + premium - prob L size (above calm's while premium >
  prob L size: a risk-neutral trader stays in) with a heavy left tail (drops of ``size``), the
  heavier the higher the level. The signal announces it one bar ahead, as z announces the return:
  sellers take over,
      taker_buy_ratio_t = clip(0.5 + 0.1 z_{t+1} - flag f_{t+1}, 0.01, 0.99),
  so a risk-averse policy can step aside before the crashes at the cost of the premium, at the
  levels its aversion cannot bear. The tail's random numbers come from their own stream: the
  rest of the market is the one without the tail.

The spread is not a Binance kline column: it is returned per bar as ``spread`` (the regime's
average spread), next to ``regime`` (index into ``REGIME_NAMES``) and ``fragile`` (f_t: 0 calm,
the level when fragile; 0 without a tail); none is written to files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

from tbjax.errors import InputError


@dataclass(frozen=True)
class Regime:
    """Per-bar parameters of one market regime."""

    mu: float        # drift of the log return per bar
    sigma: float     # scale of the Gaussian return innovation per bar
    kappa: float     # per-bar pull of log price toward the anchor (0: none)
    volume: float    # average volume per bar (base units)
    spread: float    # average relative bid-ask spread


REGIMES: dict[str, Regime] = {
    "NORMAL": Regime(0.0, 0.010, 0.0, 1000.0, 0.0005),
    "CHOPPY_FLAT": Regime(0.0, 0.004, 0.5, 800.0, 0.0007),
    "STRONG_TREND": Regime(0.0008, 0.012, 0.0, 1200.0, 0.0004),
    "ILLIQUID": Regime(0.0, 0.020, 0.0, 500.0, 0.0010),
}
REGIME_NAMES: list[str] = list(REGIMES)
STAY_PROBABILITY = 0.995
ANCHOR_ALPHA = 0.01
SHOCK_PROBABILITY = 0.01
SHOCK_SIZES = (0.005, 0.01, 0.015, 0.02)
START_PRICE = 100.0
TAKER_SIGNAL_SCALE = 0.1
CRASH_STREAM = 1  # the planted tail's random numbers: stream [seed, stream, 1], apart from the market's


@dataclass(frozen=True)
class Crash:
    """The planted tail (module docstring): fragile spells that the taker-buy ratio announces."""

    prob: float = 0.02       # crash probability per fragile bar, per level
    size: float = 0.05       # a crash: a drop of the log return by this much
    premium: float = 0.004   # extra drift per fragile bar (what a trader who steps aside gives up)
    levels: int = 3          # fragile levels L = 1..levels, one per spell, uniformly
    enter: float = 0.0133    # per-bar probability calm -> fragile (with stay 0.96: a quarter of the bars)
    stay: float = 0.96       # per-bar probability fragile stays fragile (mean spell 25 bars)
    flag: float = 0.1        # fall of the taker-buy ratio per level, one bar before each fragile bar

    def check(self, names: dict[str, str] | None = None) -> None:
        """InputError naming the first setting out of its range (``names``: how the user wrote it)."""
        top = max(int(self.levels), 1)
        for name, low, high in (("levels", 1, 10), ("prob", 0.0, 1.0 / top), ("size", 0.0, 1.0),
                                ("premium", 0.0, 1.0), ("enter", 0.0, 1.0), ("stay", 0.0, 1.0),
                                ("flag", 0.0, 0.49 / top)):
            value = getattr(self, name)
            if not (np.isfinite(value) and low <= value <= high) or (name == "levels" and value != int(value)):
                label = (names or {}).get(name, f"crash {name}")
                why = {"prob": f" (a probability times up to {top} levels)",
                       "flag": f" (the taker-buy ratio falls from 0.5 by it times up to {top} levels)"}
                raise InputError(f"{label} must lie in [{low:g}, {high:g}]{why.get(name, '')}, got {value}")

    @property
    def fragile_share(self) -> float:
        """Stationary share of fragile bars of the spell chain."""
        leave = 1.0 - self.stay
        return self.enter / (self.enter + leave) if self.enter + leave > 0 else 0.0


def regime_index(name: str) -> int:
    """Index of a regime name (case-insensitive) in ``REGIME_NAMES``; InputError otherwise."""
    key = str(name).upper()
    if key not in REGIMES:
        raise InputError(f"regime {name!r} is unknown; choose one of {', '.join(REGIME_NAMES)}")
    return REGIME_NAMES.index(key)


def return_std(regime: Regime) -> float:
    """Stationary std of the log return in a forced regime (formula in the module docstring)."""
    var_in = regime.sigma**2 + SHOCK_PROBABILITY * float(np.mean(np.square(SHOCK_SIZES)))
    phi = (1.0 - ANCHOR_ALPHA) * (1.0 - regime.kappa)
    gain = regime.kappa**2 * (1.0 - ANCHOR_ALPHA) ** 2 / (1.0 - phi**2)
    return float(np.sqrt(var_in * (1.0 + gain)))


def _regime_path(rng: np.random.Generator, n_bars: int, regime: str | None) -> np.ndarray:
    if regime is not None:
        return np.full(n_bars, regime_index(regime), np.int64)
    k = len(REGIME_NAMES)
    switch = rng.random(n_bars) >= STAY_PROBABILITY
    switch[0] = False
    step = np.where(switch, rng.integers(1, k, n_bars), 0)  # 1..k-1: always a different regime
    return (rng.integers(0, k) + np.cumsum(step)) % k


def _fragile_path(rng: np.random.Generator, n_bars: int, crash: Crash) -> np.ndarray:
    """f_t of the spell chain (module docstring), from its stationary law: alternating spells of
    geometric lengths, calm ones of mean 1 / enter bars, fragile ones of mean 1 / (1 - stay) bars
    at a level drawn uniformly from 1..levels."""
    leave = {False: crash.enter, True: 1.0 - crash.stay}  # per-bar probability of ending a spell
    fragile = bool(rng.random() < crash.fragile_share)
    spells, total = [], 0
    while total < n_bars:
        p = leave[fragile]
        length = int(rng.geometric(p)) if p > 0 else n_bars
        spells.append((int(rng.integers(1, crash.levels + 1)) if fragile else 0, length))
        total += length
        fragile = not fragile
    levels, lengths = zip(*spells)
    return np.repeat(np.asarray(levels, np.int8), lengths)[:n_bars]


def _anchor_distance(innovation: np.ndarray, regimes: np.ndarray, kappa: np.ndarray) -> np.ndarray:
    """x_t per bar: the AR(1) x_t = phi x_{t-1} + (1 - alpha) b_t, restarted at 0 per segment."""
    x = np.empty_like(innovation)
    edges = np.flatnonzero(np.diff(regimes)) + 1
    for start, end in zip(np.r_[0, edges], np.r_[edges, len(regimes)]):
        phi = (1.0 - ANCHOR_ALPHA) * (1.0 - kappa[start])
        x[start:end] = lfilter([1.0 - ANCHOR_ALPHA], [1.0, -phi], innovation[start:end])
    return x


def generate_klines(n_bars: int, timeframe_ms: int, seed: int, signal_rho: float = 0.0,
                    regime: str | None = None, start_ms: int = 1_577_836_800_000,
                    stream: int = 0, crash: Crash | None = None) -> dict[str, np.ndarray]:
    """Binance-kline columns of one synthetic symbol (model in the module docstring).

    Args:
        n_bars: number of bars (>= 2). timeframe_ms: bar length in ms (open times are spaced by it,
        24/7 with no gaps). seed, stream: random seed and an independent stream per symbol.
        signal_rho: correlation of z_t with the next bar's innovation (|rho| <= 1).
        regime: force one regime for every bar; None runs the Markov chain.
        crash: the planted tail (:class:`Crash`); None: none.
    Returns:
        open_time, close_time (int64 ms), open, high, low, close, volume, quote_volume, n_trades,
        taker_buy_base, taker_buy_quote (float64), regime (int8), spread (float64), fragile (int8).
    """
    if int(n_bars) < 2:
        raise InputError(f"n_bars must be >= 2, got {n_bars}")
    if int(timeframe_ms) <= 0:
        raise InputError(f"timeframe_ms must be > 0, got {timeframe_ms}")
    if not (np.isfinite(signal_rho) and abs(signal_rho) <= 1.0):
        raise InputError(f"signal_rho must lie in [-1, 1], got {signal_rho}")
    if crash is not None:
        crash.check()
    n, rho = int(n_bars), float(signal_rho)
    rng = np.random.default_rng([int(seed), int(stream)])
    regimes = _regime_path(rng, n, regime)
    table = np.array([[r.mu, r.sigma, r.kappa, r.volume, r.spread] for r in REGIMES.values()])
    mu, sigma, kappa, avg_volume, spread = table[regimes].T

    z_all = rng.standard_normal(n + 1)  # z_all[t] drives bar t's return; z_all[t+1] is seen at t
    u = rho * z_all[:-1] + np.sqrt(1.0 - rho**2) * rng.standard_normal(n)
    shock = np.where(rng.random(n) < SHOCK_PROBABILITY,
                     rng.choice(SHOCK_SIZES, n) * rng.choice([-1.0, 1.0], n), 0.0)
    innovation = mu + sigma * u + shock
    fragile = np.zeros(n + 1, np.int8)  # fragile[t] for bar t; fragile[n] is announced by the last bar
    if crash is not None:
        tail_rng = np.random.default_rng([int(seed), int(stream), CRASH_STREAM])
        fragile = _fragile_path(tail_rng, n + 1, crash)
        crashed = tail_rng.random(n) < crash.prob * fragile[:n]
        innovation = innovation + (fragile[:n] > 0) * crash.premium - crash.size * crashed
    x = _anchor_distance(innovation, regimes, kappa)
    x_before = np.r_[0.0, x[:-1]]
    x_before[np.r_[True, np.diff(regimes) != 0]] = 0.0  # anchor restarts at each regime change
    log_return = innovation - kappa * x_before

    close = START_PRICE * np.exp(np.cumsum(log_return))
    open_ = np.r_[START_PRICE, close[:-1]]
    high = np.maximum(open_, close) * np.exp(0.5 * sigma * np.abs(rng.standard_normal(n)))
    low = np.minimum(open_, close) * np.exp(-0.5 * sigma * np.abs(rng.standard_normal(n)))
    activity = 0.5 + 0.5 * np.abs(u) * np.sqrt(np.pi / 2.0)
    volume = avg_volume * np.exp(0.5 * rng.standard_normal(n) - 0.125) * activity
    flag = 0.0 if crash is None else crash.flag
    taker_ratio = np.clip(0.5 + TAKER_SIGNAL_SCALE * z_all[1:] - flag * fragile[1:], 0.01, 0.99)
    taker_base = taker_ratio * volume
    typical = (high + low + close) / 3.0
    open_time = int(start_ms) + np.arange(n, dtype=np.int64) * int(timeframe_ms)
    return {
        "open_time": open_time, "open": open_, "high": high, "low": low, "close": close,
        "volume": volume, "close_time": open_time + int(timeframe_ms) - 1,
        "quote_volume": volume * typical,
        "n_trades": np.maximum(rng.poisson(2.0 * volume), 1).astype(np.float64),
        "taker_buy_base": taker_base, "taker_buy_quote": taker_base * typical,
        "regime": regimes.astype(np.int8), "spread": spread, "fragile": fragile[:n],
    }
