"""python -m tbjax.synth: write synthetic symbols as Binance kline CSV dumps.

    python -m tbjax.synth --out DIR --symbols K --bars N --timeframe 1h [--seed S] [--signal RHO]
                          [--regime NAME]

Writes DIR/SYN0.csv .. DIR/SYN<K-1>.csv in the layout of data.binance.vision dumps: 12 columns,
no header (open_time ms, open, high, low, close, volume, close_time, quote_volume, n_trades,
taker_buy_base, taker_buy_quote, ignore=0), so ``python -m tbjax.prepare`` reads them like real
downloads. Symbol k uses random stream k of the seed. Model: :mod:`tbjax.data.synthetic`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile

import numpy as np

from tbjax.data.synthetic import REGIME_NAMES, generate_klines, regime_index
from tbjax.errors import InputError

KLINE_COLUMNS = ("open_time", "open", "high", "low", "close", "volume", "close_time",
                 "quote_volume", "n_trades", "taker_buy_base", "taker_buy_quote")
_UNIT_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def timeframe_to_ms(text: str) -> int:
    """'15m', '1h', '4h', '1d', '1w' → milliseconds; InputError for anything else."""
    match = re.fullmatch(r"(\d+)([mhdw])", str(text).strip())
    if not match or int(match.group(1)) == 0:
        raise InputError(f"--timeframe {text!r} is not a bar length; use e.g. 15m, 1h, 4h or 1d")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def write_kline_csv(path: str, klines: dict[str, np.ndarray]) -> None:
    """Write one Binance-layout CSV (no header) atomically: temp file in the folder, then rename."""
    n = len(klines["open_time"])
    matrix = np.column_stack([klines[c].astype(np.float64) for c in KLINE_COLUMNS] + [np.zeros(n)])
    formats = ["%d", "%.12g", "%.12g", "%.12g", "%.12g", "%.12g", "%d", "%.12g", "%d", "%.12g",
               "%.12g", "%d"]
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp_")
    os.close(fd)
    try:
        np.savetxt(tmp, matrix, fmt=formats, delimiter=",")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one message through InputError, not usage text
        raise InputError(f"{message} (see python -m tbjax.synth --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m tbjax.synth", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--symbols", type=int, default=1, help="number of symbols SYN0..SYN<K-1>")
    p.add_argument("--bars", type=int, required=True, help="bars per symbol")
    p.add_argument("--timeframe", default="1h", help="bar length: 15m, 1h, 4h, 1d, ...")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--signal", type=float, default=0.0,
                   help="planted correlation rho of taker_buy_ratio with the next return")
    p.add_argument("--regime", default=None, help=f"force one regime: {', '.join(REGIME_NAMES)}")
    return p


def run(argv: list[str] | None = None) -> list[str]:
    """Parse arguments, write the files and return their paths (raises InputError)."""
    args = _parser().parse_args(argv)
    if args.symbols < 1:
        raise InputError(f"--symbols must be >= 1, got {args.symbols}")
    if args.bars < 2:
        raise InputError(f"--bars must be >= 2, got {args.bars}")
    if not -1.0 <= args.signal <= 1.0:
        raise InputError(f"--signal must lie in [-1, 1], got {args.signal}")
    timeframe_ms = timeframe_to_ms(args.timeframe)
    if args.regime is not None:
        regime_index(args.regime)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as err:
        raise InputError(f"--out {args.out!r}: cannot create the folder ({err.strerror})") from None
    paths = []
    for k in range(args.symbols):
        klines = generate_klines(args.bars, timeframe_ms, args.seed, args.signal, args.regime,
                                 stream=k)
        path = os.path.join(args.out, f"SYN{k}.csv")
        write_kline_csv(path, klines)
        print(f"wrote {path}: {args.bars} bars of {args.timeframe}, signal rho {args.signal:g}, "
              f"regime {args.regime or 'markov'}")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    try:
        run(argv)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
