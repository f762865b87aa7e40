"""Processed bars → MarketData: the one path from per-symbol tables to the device arrays.

Used by a run's setup (its symbols and the regime markets), walk-forward, ``load_policy`` on a
user's bars and the benchmarks' synthetic markets, so all of them carry the raw features with the
same train-fitted scaling (applied by the env, :mod:`tbjax.data.scaling`) and derive the env's
volatility and hour-of-week columns the same way.
"""

from __future__ import annotations

import numpy as np

from tbjax.data import features as feats
from tbjax.data.market import MarketData, market_data_from_arrays
from tbjax.data.pipeline import FeaturePipeline

BAR_COLUMNS = ("open_time", "open", "high", "low", "close", "volume")  # every processed table has these


def market_from_tables(pipeline: FeaturePipeline, tables: dict[str, dict[str, np.ndarray]],
                       ranges: dict[str, list[tuple[int, int]]], columns: list[str]) -> MarketData:
    """MarketData of ``tables`` (symbol → processed columns incl. ``tradable``) with ``pipeline``.

    ``ranges[symbol]`` holds the (start, end) rows of train, val and test; ``columns`` are the raw
    feature columns, stored in that order as float32 with the pipeline's scaling (the env sees
    them as the ``<name>_z`` features).
    """
    syms = list(tables)
    if list(pipeline.columns) != list(columns):
        raise ValueError(f"market_from_tables: columns {columns} differ from the pipeline's {pipeline.columns}")
    return market_data_from_arrays(
        symbols=syms,
        features=[np.stack([np.asarray(tables[s][c], np.float32) for c in columns], axis=1) for s in syms],
        open_=[tables[s]["open"] for s in syms],
        close=[tables[s]["close"] for s in syms],
        volatility=[np.nan_to_num(feats.parkinson_volatility_per_bar(tables[s]["high"], tables[s]["low"]))
                    for s in syms],
        volume=[tables[s]["volume"] for s in syms],
        tradable=[np.asarray(tables[s]["tradable"], bool) for s in syms],
        hour_of_week=[feats.hour_of_week(np.asarray(tables[s]["open_time"], np.int64)) for s in syms],
        role_ranges=[ranges[s] for s in syms],
        feature_names=[f"{c}_z" for c in columns],
        scaling=pipeline.scaling(),
    )
