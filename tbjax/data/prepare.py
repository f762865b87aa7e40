"""The prepare pipeline: raw klines -> ``OUT/<SYMBOL>.feather`` + ``OUT/manifest.json``.

Steps per symbol: read (``data/klines.py``; separator and decimal mark sniffed, every row's field
count checked and numbers parsed strictly by ``data/textformat.py``, epoch units and the time
range checked by ``data/timeparse.py``), clean with counts (one summary line each), check that
the file holds one timeframe and that it fits ``--timeframe``, compute causal features
(``data/features.py``) and the as-of side features (``data/sidedata.py``), mark ``tradable``
(``data/tables.py``), drop the first ``warmup_bars(window_size)`` rows. Every file is read and
validated before anything is written; outputs go to temp files in OUT (``tbjax.atomic``) and are
renamed into place only when all of them are written, manifest.json last, so a failure (a full
disk included) never leaves a partial dataset (docs/DESIGN.md invariant 6). Only then are the
tables of an earlier run whose symbols are no longer in the raw folder removed, so OUT and its
manifest list the same symbols.

Timeframe: ``--timeframe`` or the median spacing of open times. A given timeframe longer than a
symbol's median spacing is refused: the decision time open_time + timeframe would then lie in
a later bar and side data would leak from the future.

The command (``python -m tbjax.prepare``, its flags and messages) is :mod:`tbjax.cli.prepare`;
bad input raises :class:`~tbjax.errors.InputError` naming the flag a user passes.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pandas as pd

import tbjax
from tbjax.atomic import atomic_path, disk_errors
from tbjax.data import features as feature_lib
from tbjax.data import klines, sidedata, tables, timeparse
from tbjax.errors import InputError

MAX_GAPS_LISTED = 10


def _iso(ms: int) -> str:
    return pd.Timestamp(int(ms), unit="ms", tz="UTC").isoformat()


def discover_files(raw_dir: Path) -> list[Path]:
    """Supported kline files in ``raw_dir`` (hidden files skipped), sorted by name.

    A symlink that does not resolve stops the run: skipping it would silently drop a symbol
    (a moved download folder breaks every link at once).
    """
    if not raw_dir.is_dir():
        raise InputError(f"raw directory {raw_dir} does not exist; pass --raw-dir pointing at a "
                         f"folder of kline files")
    try:
        entries = sorted(p for p in raw_dir.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise InputError(f"cannot list --raw-dir {raw_dir}: {exc.strerror or exc}; make the "
                         f"folder readable") from None
    for path in entries:
        if path.is_symlink() and not path.exists():
            raise InputError(f"--raw-dir {raw_dir}: symlink {path.name} points at "
                             f"{os.readlink(path)}, which does not exist (or loops); fix the "
                             f"link or remove it")
    files = [p for p in entries if p.is_file() and klines.table_suffix(p)]
    if not files:
        raise InputError(f"raw directory {raw_dir} holds no kline files; add one file per "
                         f"symbol ({', '.join(klines.TABLE_SUFFIXES)})")
    return files


def _check_one_timeframe(raw, bars, report, spacing_ms: int) -> None:
    """Stop on a file whose bars have more than one length (``tables.mixed_timeframe``).

    Its median would pick one timeframe and the other bars would become a string of gaps or
    overlapping bars, with every feature computed across the seam.
    """
    problem = tables.mixed_timeframe(bars["open_time"], spacing_ms)
    if problem is None:
        return
    first, last = report.source_row(problem["first"]), report.source_row(problem["last"])
    step, bar = tables.format_timeframe(problem["step_ms"]), tables.format_timeframe(spacing_ms)
    if problem["kind"] == "run":
        what = (f"data rows {first}-{last}: {problem['last'] - problem['first'] + 1} "
                f"consecutive bars are {step} apart while most of the file's bars are {bar} apart")
    else:
        what = (f"data row {last}: the bar at {_iso(bars['open_time'][problem['last']])} opens "
                f"{step} after the bar of data row {first}, less than half the file's bar "
                f"length {bar}")
    raise InputError(f"file {raw.path}, {what}: the file mixes timeframes (or has misaligned "
                     f"bars); keep one bar length per file: resample it, or split it and prepare "
                     f"each timeframe into its own --out")


def _load_symbols(files, time_format, timeframe_ms, warmup, bounds):
    """Read and clean every file; check symbols, lengths and timeframes. Returns (loaded, tf)."""
    loaded, origin = {}, {}
    for path in files:
        raw = klines.read_klines(path, time_format, bounds)
        if raw.symbol in origin:
            raise InputError(f"symbol {raw.symbol} comes from both {origin[raw.symbol].name} and "
                             f"{path.name}; keep one file per symbol")
        origin[raw.symbol] = path
        bars, report = klines.clean_bars(raw)
        if report.rows_clean < warmup + 1:
            raise InputError(f"symbol {raw.symbol} ({path.name}) has {report.rows_clean} clean rows "
                             f"({report.rows_raw} raw) but needs at least {warmup + 1} (warm-up "
                             f"{warmup} + 1); add history or lower --window-size")
        spacing = tables.median_spacing_ms(bars["open_time"])
        _check_one_timeframe(raw, bars, report, spacing)
        loaded[raw.symbol] = (raw, bars, report, spacing)
    spacings = {symbol: item[3] for symbol, item in loaded.items()}
    if timeframe_ms is None:
        if len(set(spacings.values())) > 1:
            found = ", ".join(f"{s} {tables.format_timeframe(m)}" for s, m in spacings.items())
            raise InputError(f"symbols have different bar spacings ({found}); prepare each "
                             f"timeframe into its own --out folder or pass --timeframe")
        return loaded, next(iter(spacings.values()))
    for symbol, spacing in spacings.items():
        if timeframe_ms > spacing:
            raise InputError(f"--timeframe {tables.format_timeframe(timeframe_ms)} is longer than "
                             f"{symbol}'s median bar spacing {tables.format_timeframe(spacing)}; "
                             f"pass --timeframe {tables.format_timeframe(spacing)} or resample")
    return loaded, timeframe_ms


def _symbol_table(raw, bars, report, timeframe_ms, warmup, windows, fear_greed, events):
    """One symbol's output columns, its manifest entry and its log line."""
    open_time = bars["open_time"]
    computed = feature_lib.compute_features(bars)
    computed.update(sidedata.side_features(open_time, timeframe_ms, fear_greed, events))
    tradable = tables.tradable_mask(open_time, bars["volume"], timeframe_ms, windows)
    gaps = tables.gap_list(open_time, timeframe_ms)
    columns = {"open_time": open_time[warmup:]}
    for name in klines.REQUIRED_COLUMNS + klines.OPTIONAL_COLUMNS:
        if name in bars:
            columns[name] = bars[name][warmup:]
    columns["tradable"] = tradable[warmup:]
    for name, values in computed.items():
        columns[name] = values[warmup:]
    written = len(open_time) - warmup
    untradable = int((~columns["tradable"]).sum())
    entry = {
        "input_file": raw.path.name, "input_sha256": raw.sha256,
        "rows_raw": report.rows_raw, "rows_clean": report.rows_clean, "rows_written": written,
        "warmup_dropped": warmup, "bad_time_dropped": report.bad_time_dropped,
        "bad_price_dropped": report.bad_price_dropped,
        "bad_volume_dropped": report.bad_volume_dropped,
        "unsorted_steps": report.unsorted_steps, "duplicates_dropped": report.duplicates_dropped,
        "high_low_repaired": report.high_low_repaired,
        "empty_optional_columns": list(raw.empty_optional),
        "gaps": len(gaps), "gap_threshold_ms": tables.gap_threshold_ms(open_time, timeframe_ms),
        "gap_examples": [[_iso(a), _iso(b)] for a, b in gaps[:MAX_GAPS_LISTED]],
        "untradable_written": untradable,
        "first_open_time": _iso(columns["open_time"][0]),
        "last_open_time": _iso(columns["open_time"][-1]),
        "feature_names": list(computed), "output_file": f"{raw.symbol}.feather",
    }
    empty = f"; optional column(s) {', '.join(raw.empty_optional)} empty, left out" \
        if raw.empty_optional else ""
    if raw.trailing_empty_rows:  # only then, so the manifest of a clean file stays as it was
        entry["trailing_empty_fields_rows"] = raw.trailing_empty_rows
        empty += (f"; dropped the empty fields after the header's last column on "
                  f"{raw.trailing_empty_rows} row(s)")
    line = (f"{raw.symbol}: {report.summary()}; {len(gaps)} gap(s); {written} written after "
            f"{warmup} warm-up rows, {untradable} untradable{empty}")
    return columns, entry, line


def _manifest(timeframe_ms, timeframe_given, window_size, warmup, no_trade_windows, entries,
              fg_series, ev_series) -> dict:
    """manifest.json: everything needed to trace a table back to its inputs; no volatile fields
    (no run time, no absolute paths), so the same inputs give a byte-identical manifest."""
    lists = [entry["feature_names"] for entry in entries.values()]
    common = [name for name in lists[0] if all(name in other for other in lists[1:])]
    side = {}
    for key, series in (("fear_greed", fg_series), ("events", ev_series)):
        if series is not None:
            side[key] = {"file": series.path.name, "sha256": series.sha256,
                         "rows": int(len(series.times))}
    return {
        "tbjax_version": tbjax.__version__,
        "timeframe": tables.format_timeframe(timeframe_ms), "timeframe_ms": int(timeframe_ms),
        "timeframe_source": "given" if timeframe_given else "inferred (median spacing)",
        "window_size": int(window_size), "warmup_bars": int(warmup),
        "decision_time": "open_time + timeframe (the bar's close); side data as-of backward",
        "event_cap_bars": sidedata.EVENT_CAP_BARS,
        "no_trade_windows_utc": [str(w) for w in no_trade_windows],
        "feature_names": common, "side_data": side, "symbols": entries,
    }


def _previous_manifest(out_dir: Path) -> dict | None:
    """The manifest an earlier run left in --out (None when absent or unreadable): it names the
    tables that are this tool's, so a re-run knows which ones it may remove."""
    try:
        return tables.read_manifest(out_dir, "") if out_dir.is_dir() else None
    except InputError:
        return None


def _write_all(out_dir: Path, loaded: dict, manifest_args: dict, table_args: dict, log) -> dict:
    """Stage every table and the manifest as temp files in ``out_dir``; rename on success only.

    Each table is written as soon as it is computed (one symbol's features in memory at a time).
    The manifest's temp file is opened first so that, leaving the stack, it is renamed last:
    until then the previous manifest still describes the folder. Any error, a full disk
    included, unwinds the stack and deletes every temp file (``tbjax.atomic.atomic_path``).
    """
    entries = {}
    with contextlib.ExitStack() as stack:
        manifest_tmp = stack.enter_context(atomic_path(out_dir / "manifest.json"))
        for symbol in sorted(loaded):
            raw, bars, report, _ = loaded.pop(symbol)
            columns, entries[symbol], line = _symbol_table(raw, bars, report, **table_args)
            final = out_dir / f"{symbol}.feather"
            tables.write_table(columns, stack.enter_context(atomic_path(final)))
            del raw, bars, columns
            log(line)
        manifest = _manifest(entries=entries, **manifest_args)
        tables.write_manifest(manifest, manifest_tmp)
    return manifest


def _remove_stale(out_dir: Path, manifest: dict, previous: dict | None) -> list[str]:
    """Delete this tool's tables of symbols the new manifest does not list; return their names.

    Runs only after the new files are in place, so a failure before never loses the old data.
    """
    keep = {entry["output_file"] for entry in manifest["symbols"].values()}
    removed = []
    for path in tables.stale_tables(out_dir, keep, previous):
        with disk_errors(path, "removing the stale table"):
            path.unlink()
        removed.append(path.name)
    return removed


def prepare(raw_dir, out_dir, timeframe: str | None = None, time_format: str | None = None,
            fear_greed: str | None = None, events: str | None = None,
            no_trade_windows=(), window_size: int = 32, log=print,
            earliest: str | None = None, latest: str | None = None) -> dict:
    """Run the whole preparation; returns the manifest that was written.

    All inputs are read and validated first. Then each symbol's table goes to a hidden temp
    file in OUT as soon as it is computed (so only one symbol's features are in memory), and
    the renames into place happen only after every table and the manifest were written.
    ``earliest`` / ``latest`` (YYYY-MM-DD) bound the plausible input times (``--earliest``,
    ``--latest``).
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if window_size < 1:
        raise InputError(f"--window-size {window_size} must be a positive number of bars")
    if out_dir.resolve() == raw_dir.resolve():
        raise InputError(f"--out {out_dir} is the raw directory; choose a separate output folder")
    bounds = timeparse.time_bounds(earliest, latest)
    windows = [tables.parse_no_trade_window(w) for w in no_trade_windows]
    timeframe_ms = tables.parse_timeframe(timeframe) if timeframe is not None else None
    fg_series = (sidedata.read_fear_greed(Path(fear_greed), time_format, bounds)
                 if fear_greed else None)
    ev_series = sidedata.read_events(Path(events), time_format, bounds) if events else None
    warmup = feature_lib.warmup_bars(window_size)
    loaded, timeframe_ms = _load_symbols(discover_files(raw_dir), time_format, timeframe_ms, warmup,
                                         bounds)
    table_args = dict(timeframe_ms=timeframe_ms, warmup=warmup, windows=windows,
                      fear_greed=fg_series, events=ev_series)
    manifest_args = dict(timeframe_ms=timeframe_ms, timeframe_given=timeframe is not None,
                         window_size=window_size, warmup=warmup, no_trade_windows=no_trade_windows,
                         fg_series=fg_series, ev_series=ev_series)
    created = not out_dir.exists()
    previous = _previous_manifest(out_dir)
    try:
        with disk_errors(out_dir, "writing to --out"):
            out_dir.mkdir(parents=True, exist_ok=True)
            manifest = _write_all(out_dir, loaded, manifest_args, table_args, log)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise
    removed = _remove_stale(out_dir, manifest, previous)
    stale = (f"; removed {len(removed)} stale table(s) of symbols no longer in --raw-dir: "
             f"{', '.join(removed)}") if removed else ""
    log(f"wrote {len(manifest['symbols'])} table(s) and manifest.json to {out_dir} "
        f"(timeframe {manifest['timeframe']}, {len(manifest['feature_names'])} features){stale}")
    return manifest
