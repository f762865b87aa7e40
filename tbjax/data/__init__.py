"""Market data: raw klines, causal features, splits, MarketData."""
