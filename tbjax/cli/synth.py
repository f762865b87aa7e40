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
non-negative, and the memory one symbol needs (``BYTES_PER_BAR`` per bar; symbols are generated
one at a time) and the disk all files need must be available. Files are written atomically
(``tbjax.atomic``), so a full disk leaves no partial CSV, and every failure is one line, exit 2.
"""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np

from tbjax.atomic import disk_errors, write_with
from tbjax.cli.common import OneLineParser, run_main
from tbjax.data.synthetic import REGIME_NAMES, Crash, generate_klines, regime_index
from tbjax.data.tables import parse_timeframe
from tbjax.errors import InputError

KLINE_COLUMNS = ("open_time", "open", "high", "low", "close", "volume", "close_time",
                 "quote_volume", "n_trades", "taker_buy_base", "taker_buy_quote")
# Peak memory of generate_klines + write_kline_csv for one symbol, per bar: about 320 bytes
# measured (tracemalloc, 1e5 and 4e5 bars), rounded up for the allocator and the interpreter.
BYTES_PER_BAR = 400
CSV_BYTES_PER_BAR = 200     # one CSV row: about 150-165 bytes measured, rounded up
START_MS = 1_577_836_800_000  # generate_klines' default start, 2020-01-01T00:00Z
LAST_MS = 253_402_300_799_000  # 9999-12-31T23:59:59Z: later open times have no calendar date


def write_kline_csv(path: str, klines: dict[str, np.ndarray]) -> None:
    """Write one Binance-layout CSV (no header) atomically (``tbjax.atomic.write_with``)."""
    n = len(klines["open_time"])
    matrix = np.column_stack([klines[c].astype(np.float64) for c in KLINE_COLUMNS] + [np.zeros(n)])
    formats = ["%d", "%.12g", "%.12g", "%.12g", "%.12g", "%.12g", "%d", "%.12g", "%d", "%.12g",
               "%.12g", "%d"]
    write_with(path, lambda tmp: np.savetxt(tmp, matrix, fmt=formats, delimiter=","))


def available_memory_bytes() -> int | None:
    """Memory a new allocation can get now: MemAvailable (free + reclaimable cache) on Linux,
    else free physical pages; None where neither is known (then nothing is refused)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n_bytes: float) -> str:
    """Bytes as GiB with one decimal, the unit a user compares with free memory or disk."""
    return f"{n_bytes / 2**30:,.1f} GiB"


def check_size(bars: int, symbols: int, timeframe: str, out: str) -> None:
    """Refuse, before allocating anything, a request this machine cannot hold or store.

    Memory is needed for one symbol at a time (each is generated, written and freed); disk for
    all of them. Also refuses open times past the year 9999, which no date type can represent.
    """
    need = bars * BYTES_PER_BAR
    have = available_memory_bytes()
    if have is not None and need > have:
        raise InputError(f"--bars {bars} needs about {_gib(need)} of memory per symbol "
                         f"({BYTES_PER_BAR} bytes per bar) but {_gib(have)} is available; "
                         f"lower --bars to at most {max(2, have // BYTES_PER_BAR):,}")
    if START_MS + (bars - 1) * parse_timeframe(timeframe) > LAST_MS:
        raise InputError(f"--bars {bars} of --timeframe {timeframe} would run past the year 9999 "
                         f"(bars start 2020-01-01); lower --bars or --timeframe")
    disk = bars * symbols * CSV_BYTES_PER_BAR
    folder = os.path.abspath(out)
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if disk > free:
        raise InputError(f"--bars {bars} x --symbols {symbols} writes about {_gib(disk)} of CSV "
                         f"({CSV_BYTES_PER_BAR} bytes per bar) but {folder} has {_gib(free)} "
                         f"free; lower --bars or --symbols, or choose another --out")


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
    """The planted tail the flags ask for (None without ``--crash``); InputError naming the flag."""
    if args.crash is None:
        return None
    crash = Crash(prob=args.crash, size=args.crash_size, premium=args.crash_premium, levels=args.crash_levels)
    crash.check({"prob": "--crash", "size": "--crash-size", "premium": "--crash-premium",
                 "levels": "--crash-levels"})
    return crash


def run(argv: list[str] | None = None) -> list[str]:
    """Parse arguments, write the files and return their paths (raises InputError)."""
    args = _parser().parse_args(argv)
    if args.symbols < 1:
        raise InputError(f"--symbols must be >= 1, got {args.symbols}")
    if args.bars < 2:
        raise InputError(f"--bars must be >= 2, got {args.bars}")
    if args.seed < 0:
        raise InputError(f"--seed must be >= 0, got {args.seed}; pass a non-negative integer")
    if not -1.0 <= args.signal <= 1.0:
        raise InputError(f"--signal must lie in [-1, 1], got {args.signal}")
    timeframe_ms = parse_timeframe(args.timeframe)
    if args.regime is not None:
        regime_index(args.regime)
    crash = crash_of(args)
    check_size(args.bars, args.symbols, args.timeframe, args.out)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as err:
        raise InputError(f"--out {args.out!r}: cannot create the folder ({err.strerror})") from None
    paths = []
    for k in range(args.symbols):
        klines = generate_klines(args.bars, timeframe_ms, args.seed, args.signal, args.regime,
                                 stream=k, crash=crash)
        path = os.path.join(args.out, f"SYN{k}.csv")
        with disk_errors(path):
            write_kline_csv(path, klines)
        del klines
        tail = "" if crash is None else (f", crash {crash.prob:g} x level (1..{crash.levels}) of "
                                         f"{crash.size:g} in fragile spells")
        print(f"wrote {path}: {args.bars} bars of {args.timeframe}, signal rho {args.signal:g}, "
              f"regime {args.regime or 'markov'}{tail}")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        run(argv)
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
