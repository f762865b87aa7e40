"""``python -m tbjax.prepare``: raw klines → ``OUT/<SYMBOL>.feather`` + ``OUT/manifest.json``.

    python -m tbjax.prepare --raw-dir DIR --out DIR [--timeframe 1h] [--time-format FMT]
        [--fear-greed CSV] [--events CSV] [--no-trade-window HH:MM-HH:MM ...] [--window-size 32]
        [--earliest 1990-01-01] [--latest YYYY-MM-DD]

Reads every raw file, cleans it, computes causal features and side features, marks ``tradable``,
drops the warm-up rows and writes the tables and the manifest atomically, the manifest last
(docs/DESIGN.md invariant 6). Bad input: one ``error:`` line, exit 2.

The pipeline is :func:`tbjax.data.prepare.prepare`; this module parses and prints.
"""

from __future__ import annotations

import sys

from tbjax.cli.common import OneLineParser, run_main
from tbjax.data import timeparse
from tbjax.data.prepare import prepare


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="python -m tbjax.prepare", see_help="; see {prog} --help",
                           description="Read raw klines, clean them, compute causal features and "
                                       "write OUT/<SYMBOL>.feather plus OUT/manifest.json.")
    parser.add_argument("--raw-dir", required=True, help="folder with one kline file per symbol")
    parser.add_argument("--out", required=True, help="output folder for the processed tables")
    parser.add_argument("--timeframe", help="bar length such as 1h or 1d (default: inferred)")
    parser.add_argument("--time-format", help="strftime format of a text time column")
    parser.add_argument("--fear-greed", help="CSV with timestamp,value (0..100)")
    parser.add_argument("--events", help="CSV with timestamp,importance (low/medium/high or 1..3)")
    parser.add_argument("--no-trade-window", nargs="+", default=[], metavar="HH:MM-HH:MM",
                        help="daily UTC windows [start, end) in which bars are not tradable")
    parser.add_argument("--window-size", type=int, default=32,
                        help="observation window of the agent (sets the warm-up)")
    parser.add_argument("--earliest", metavar="YYYY-MM-DD",
                        help=f"earliest plausible time in any input (default "
                             f"{timeparse.EARLIEST_DEFAULT}); earlier rows stop the run")
    parser.add_argument("--latest", metavar="YYYY-MM-DD",
                        help="latest plausible time in any input (default: now + 1 year); later "
                             "rows stop the run")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; bad input → ``error: <one line>`` on stderr and exit status 2."""
    def body() -> int:
        args = build_parser().parse_args(argv)
        prepare(args.raw_dir, args.out, timeframe=args.timeframe, time_format=args.time_format,
                fear_greed=args.fear_greed, events=args.events,
                no_trade_windows=args.no_trade_window, window_size=args.window_size,
                earliest=args.earliest, latest=args.latest)
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
