"""Synthetic symbols written as Binance kline CSV dumps: what ``python -m tbjax.synth`` does.

:func:`write_synthetic_dump` writes ``OUT/SYN0.csv`` .. ``OUT/SYN<K-1>.csv`` in the layout of
data.binance.vision dumps: 12 columns, no header (open_time ms, open, high, low, close, volume,
close_time, quote_volume, n_trades, taker_buy_base, taker_buy_quote, ignore=0), so
:func:`tbjax.data.prepare.prepare` reads them like real downloads. Symbol k uses random stream k of
the seed. Model: :mod:`tbjax.data.synthetic`.

Why the checks come first: a request this machine cannot hold or store must fail before any
allocation or file, with one line. Memory is needed for one symbol at a time (``BYTES_PER_BAR`` per
bar; each is generated, written and freed), disk for all of them. Files are written atomically
(``tbjax.atomic``), so a full disk leaves no partial CSV. The errors name the ``python -m
tbjax.synth`` flags, as :func:`tbjax.data.prepare.prepare`'s name ``python -m tbjax.prepare``'s:
the command is how users reach this function.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from tbjax.atomic import disk_errors, write_with
from tbjax.data.synthetic import Crash, generate_klines, regime_index
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
CRASH_FLAGS = {"prob": "--crash", "size": "--crash-size", "premium": "--crash-premium",
               "levels": "--crash-levels"}  # how a Crash setting is written on the command line


def write_kline_csv(path: str | Path, klines: dict[str, np.ndarray]) -> None:
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


def check_size(bars: int, symbols: int, timeframe: str, out: str | Path) -> None:
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


def check_request(out: str | Path, symbols: int, bars: int, timeframe: str, seed: int, signal: float,
                  regime: str | None, crash: Crash | None) -> int:
    """Every argument checked, in the order the flags are documented; the bar length in ms."""
    if symbols < 1:
        raise InputError(f"--symbols must be >= 1, got {symbols}")
    if bars < 2:
        raise InputError(f"--bars must be >= 2, got {bars}")
    if seed < 0:
        raise InputError(f"--seed must be >= 0, got {seed}; pass a non-negative integer")
    if not -1.0 <= signal <= 1.0:
        raise InputError(f"--signal must lie in [-1, 1], got {signal}")
    timeframe_ms = parse_timeframe(timeframe)
    if regime is not None:
        regime_index(regime)
    if crash is not None:
        crash.check(CRASH_FLAGS)
    check_size(bars, symbols, timeframe, out)
    return timeframe_ms


def write_synthetic_dump(out: str | Path, symbols: int, bars: int, timeframe: str = "1h", seed: int = 0,
                         signal: float = 0.0, regime: str | None = None, crash: Crash | None = None,
                         on_written: Callable[[Path], None] | None = None) -> list[Path]:
    """Write ``out/SYN<k>.csv`` for k < ``symbols`` and return their paths (raises InputError).

    ``bars`` bars of ``timeframe`` per symbol from 2020-01-01, ``signal``: the planted correlation
    rho, ``regime``: one forced regime (None: the Markov chain), ``crash``: the planted tail.
    Everything is checked before the folder is created; ``on_written(path)`` runs after each file
    (the command prints a line per symbol, so a long dump shows progress).
    """
    timeframe_ms = check_request(out, symbols, bars, timeframe, seed, signal, regime, crash)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise InputError(f"--out {str(out)!r}: cannot create the folder ({err.strerror})") from None
    paths = []
    for k in range(symbols):
        klines = generate_klines(bars, timeframe_ms, seed, signal, regime, stream=k, crash=crash)
        path = os.path.join(out, f"SYN{k}.csv")
        with disk_errors(path):
            write_kline_csv(path, klines)
        del klines
        paths.append(Path(path))
        if on_written is not None:
            on_written(paths[-1])
    return paths
