"""Toy MarketData builders shared by the env tests and the throughput benchmark."""

from __future__ import annotations

import numpy as np

from tbjax.data.market import MarketData, market_data_from_arrays


def random_walk_symbol(rng: np.random.Generator, n_bars: int, n_features: int, vol: float = 0.01,
                       non_tradable_frac: float = 0.03):
    """One symbol's bars: log random-walk closes, gapped opens, random features and volumes."""
    log_close = np.cumsum(rng.normal(0.0, vol, n_bars)) + np.log(100.0)
    close = np.exp(log_close)
    prev_close = np.concatenate([[close[0]], close[:-1]])
    open_ = prev_close * np.exp(rng.normal(0.0, vol * 0.3, n_bars))
    volume = rng.uniform(50.0, 500.0, n_bars)
    tradable = rng.random(n_bars) >= non_tradable_frac
    volume[~tradable] = 0.0
    return {
        "features": rng.normal(size=(n_bars, n_features)).astype(np.float32),
        "open": open_.astype(np.float32),
        "close": close.astype(np.float32),
        "volatility": np.abs(rng.normal(vol, vol * 0.3, n_bars)).astype(np.float32),
        "volume": volume.astype(np.float32),
        "tradable": tradable,
        "hour_of_week": (np.arange(n_bars) % 168).astype(np.int32),
    }


def toy_market(lengths=(400, 300), n_features=3, seed=0, role_fracs=(0.6, 0.2, 0.2),
               vol: float = 0.01, non_tradable_frac: float = 0.03) -> MarketData:
    """Symbols of different lengths split into consecutive train/val/test row ranges."""
    rng = np.random.default_rng(seed)
    bars = [random_walk_symbol(rng, n, n_features, vol, non_tradable_frac) for n in lengths]
    role_ranges = []
    for n in lengths:
        a = int(n * role_fracs[0])
        b = a + int(n * role_fracs[1])
        role_ranges.append([(0, a), (a, b), (b, n)])
    return market_data_from_arrays(
        symbols=[f"SYM{i}" for i in range(len(lengths))],
        features=[b["features"] for b in bars],
        open_=[b["open"] for b in bars],
        close=[b["close"] for b in bars],
        volatility=[b["volatility"] for b in bars],
        volume=[b["volume"] for b in bars],
        tradable=[b["tradable"] for b in bars],
        hour_of_week=[b["hour_of_week"] for b in bars],
        role_ranges=role_ranges,
        feature_names=[f"f{i}_z" for i in range(n_features)],
    )


def explicit_market(open_, close, volatility, volume, tradable, n_features=1,
                    role_ranges=None) -> MarketData:
    """A one-symbol MarketData from hand-written bars (features = bar index, for lookahead checks)."""
    n = len(close)
    features = np.repeat(np.arange(n, dtype=np.float32)[:, None], n_features, axis=1)
    return market_data_from_arrays(
        symbols=["HAND"], features=[features], open_=[np.asarray(open_, np.float32)],
        close=[np.asarray(close, np.float32)], volatility=[np.asarray(volatility, np.float32)],
        volume=[np.asarray(volume, np.float32)], tradable=[np.asarray(tradable, bool)],
        hour_of_week=[np.zeros(n, np.int32)],
        role_ranges=[role_ranges or [(0, n), (n, n), (n, n)]],
        feature_names=[f"f{i}_z" for i in range(n_features)],
    )
