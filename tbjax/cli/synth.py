"""python -m tbjax.synth: write synthetic symbols as Binance kline CSV dumps.

    python -m tbjax.synth --out DIR --symbols K --bars N --timeframe 1h [--seed S] [--signal RHO]
                          [--regime NAME] [--crash PROB [--crash-size DROP] [--crash-premium MU]
                          [--crash-levels L]]

Writes DIR/SYN0.csv .. DIR/SYN<K-1>.csv in the layout of data.binance.vision dumps: 12 columns,
no header (open_time ms, open, high, low, close, volume, close_time, quote_volume, n_trades,
taker_buy_base, taker_buy_quote, ignore=0), so ``python -m tbjax.prepare`` reads them like real
downloads. Symbol k uses random stream k of the seed. Model: :mod:`tbjax.data.synthetic`.
``--crash PROB`` plants a tail (:class:`tbjax.data.synthetic.Crash`): fragile spells at a level L
in 1..``--crash-levels``, announced a bar ahead by a taker-buy ratio that falls with L, in which
each bar crashes by ``--crash-size`` with probability PROB x L and earns ``--crash-premium`` more
drift (the market the risk frontier's test trains on, docs/TUNING.md).

Arguments are checked before anything is generated: counts must be positive, the seed
non-negative, and the memory one symbol needs (``tbjax.data.synthetic_dump.BYTES_PER_BAR`` per bar;
symbols are generated one at a time) and the disk all files need must be available. Files are
written atomically (``tbjax.atomic``), so a full disk leaves no partial CSV, and every failure is one
line, exit 2.

The dump is :func:`tbjax.data.synthetic_dump.write_synthetic_dump`; this module parses and prints.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tbjax.cli.common import OneLineParser, run_main
from tbjax.data.synthetic import REGIME_NAMES, Crash
from tbjax.data.synthetic_dump import write_synthetic_dump


def _parser() -> OneLineParser:
    p = OneLineParser(prog="python -m tbjax.synth", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--symbols", type=int, default=1, help="number of symbols SYN0..SYN<K-1>")
    p.add_argument("--bars", type=int, required=True, help="bars per symbol")
    p.add_argument("--timeframe", default="1h", help="bar length: 15m, 1h, 4h, 1d, ...")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--signal", type=float, default=0.0,
                   help="planted correlation rho of taker_buy_ratio with the next return")
    p.add_argument("--regime", default=None, help=f"force one regime: {', '.join(REGIME_NAMES)}")
    p.add_argument("--crash", type=float, default=None, metavar="PROB",
                   help=f"plant a tail: crash probability per fragile bar and level (off when not given; "
                        f"{Crash.prob:g} is the test's)")
    p.add_argument("--crash-size", type=float, default=Crash.size, metavar="DROP",
                   help=f"log-return drop of a crash (default {Crash.size:g})")
    p.add_argument("--crash-premium", type=float, default=Crash.premium, metavar="MU",
                   help=f"extra drift per fragile bar (default {Crash.premium:g})")
    p.add_argument("--crash-levels", type=int, default=Crash.levels, metavar="L",
                   help=f"fragile levels 1..L, crash probability PROB x level (default {Crash.levels})")
    return p


def crash_of(args) -> Crash | None:
    """The planted tail the flags ask for (None without ``--crash``); checked with the rest."""
    if args.crash is None:
        return None
    return Crash(prob=args.crash, size=args.crash_size, premium=args.crash_premium, levels=args.crash_levels)


def run(argv: list[str] | None = None) -> list[Path]:
    """Parse arguments, write the files (:func:`tbjax.data.synthetic_dump.write_synthetic_dump`),
    print a line per file and return their paths (raises InputError)."""
    args = _parser().parse_args(argv)
    crash = crash_of(args)
    tail = "" if crash is None else (f", crash {crash.prob:g} x level (1..{crash.levels}) of "
                                     f"{crash.size:g} in fragile spells")

    def written(path: Path) -> None:
        print(f"wrote {path}: {args.bars} bars of {args.timeframe}, signal rho {args.signal:g}, "
              f"regime {args.regime or 'markov'}{tail}")

    return write_synthetic_dump(args.out, args.symbols, args.bars, args.timeframe, args.seed, args.signal,
                                args.regime, crash, on_written=written)


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        run(argv)
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
