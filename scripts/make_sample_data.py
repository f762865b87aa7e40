"""Write the shipped sample raw data: daily OHLCV of AAPL, IBM, MSFT and GOOG, 2000-2013.

Source: the ``stocks`` module of the PyPI package ``bokeh-sampledata`` (Quandl WIKI Prices,
public domain; see data/sample/SOURCE.md). Prices are the unadjusted open/high/low/close as
supplied; ``adj_close`` is left out because tbjax trades the prices that were quoted.

Output: data/sample/raw/<SYMBOL>.csv with header ``date,open,high,low,close,volume``: ISO dates,
prices with four decimals (exact for this source, whose prices have at most four), integer
volume, "\\n" line endings. The output depends only on the package data, so re-running it
reproduces the files byte for byte.

    python scripts/make_sample_data.py [--out data/sample/raw]
then
    python -m tbjax.prepare --raw-dir data/sample/raw --out data/sample/processed
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

SYMBOLS = ("AAPL", "IBM", "MSFT", "GOOG")
PRICE_COLUMNS = ("open", "high", "low", "close")


def sample_csv_text(series: dict) -> str:
    """One symbol's bokeh-sampledata dict → CSV text with fixed formatting."""
    lines = ["date,open,high,low,close,volume"]
    for i, date in enumerate(series["date"]):
        prices = ",".join(f"{series[c][i]:.4f}" for c in PRICE_COLUMNS)
        lines.append(f"{date},{prices},{int(series['volume'][i])}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data/sample/raw"))
    args = parser.parse_args(argv)
    from bokeh_sampledata import stocks  # imported here: only this script needs the package

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for symbol in SYMBOLS:
        series = getattr(stocks, symbol)
        for column in PRICE_COLUMNS:
            exact = all(float(f"{v:.4f}") == v for v in series[column])
            if not exact:
                print(f"error: {symbol} {column} has more than four decimals; widen the format",
                      file=sys.stderr)
                return 2
        target = out / f"{symbol}.csv"
        temp = out / f".{symbol}.csv.tmp"
        with open(temp, "w", newline="\n", encoding="utf-8") as handle:
            handle.write(sample_csv_text(series))
        os.replace(temp, target)
        print(f"{symbol}: {len(series['date'])} bars {series['date'][0]} .. "
              f"{series['date'][-1]} -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
