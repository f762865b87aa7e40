"""Evaluation: backtests with frozen statistics, risk metrics, the regime objective, oracle, report."""
