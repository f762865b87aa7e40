"""A prepared folder as a run reads it: ``processed/<SYMBOL>.feather`` and ``manifest.json``.

``python -m tbjax.prepare`` writes the folder (:mod:`tbjax.data.prepare`, the files through
:mod:`tbjax.data.tables`); every command that trains or evaluates reads it through
:func:`load_processed` alone (training, HPO, walk-forward, evaluate, check), so they all see the
same symbols and features and stop on the same problems with the same message.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.feather as feather

from tbjax.config import Config
from tbjax.data import tables as processed
from tbjax.data.bars import BAR_COLUMNS
from tbjax.data.hashing import file_sha256
from tbjax.errors import InputError


def prepare_hint(cfg: Config) -> str:
    return (f"run `python -m tbjax.prepare --raw-dir <folder of raw kline files> --out {cfg.data.processed_dir}` "
            "first (the shipped sample: --raw-dir data/sample/raw)")


def load_processed(cfg: Config) -> tuple[dict[str, dict[str, np.ndarray]], list[str], dict[str, str]]:
    """Read the processed tables and the manifest's feature list; one clear error for each problem.

    With a ``manifest.json`` (what prepare writes, last and atomically) the symbols are exactly
    the ones it lists: a listed file that is missing stops the run, and ``*.feather`` files it
    does not list (a symbol dropped from the raw folder, a stray copy) are ignored, so a run
    never trains on a mix of two prepare runs. A corrupt manifest is an error, not "no
    manifest". Without one (a hand-made folder) every ``<SYMBOL>.feather`` is read.
    """
    folder = Path(cfg.data.processed_dir)
    if not folder.is_dir():
        raise InputError(f"processed data folder '{folder}' does not exist: {prepare_hint(cfg)}")
    fix = f"{prepare_hint(cfg)}, or point data.processed_dir at another prepared folder"
    manifest = processed.read_manifest(folder, fix)
    if manifest is not None:
        listed = processed.manifest_files(manifest, folder, fix)
        files = {sym: listed[sym] for sym in sorted(listed, key=lambda s: listed[s].name)}
    else:
        files = {f.stem.upper(): f for f in sorted(folder.glob("*.feather")) if not f.name.startswith(".")}
    if cfg.data.symbols:
        wanted = {s.upper() for s in cfg.data.symbols}
        missing = wanted - set(files)
        if missing:
            raise InputError(f"data.symbols names {sorted(missing)} but '{folder}' has no such <SYMBOL>.feather: "
                             f"available {sorted(files)}; fix data.symbols or re-run prepare")
        files = {sym: f for sym, f in files.items() if sym in wanted}
    if not files:
        raise InputError(f"no <SYMBOL>.feather files in '{folder}': {prepare_hint(cfg)}")
    manifest = manifest or {}
    tables, hashes = {}, {}
    for sym, f in files.items():
        try:
            table = feather.read_table(f)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise InputError(f"cannot read processed file '{f}' ({type(exc).__name__}): re-run prepare") from None
        cols = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
        for c in BAR_COLUMNS + ("tradable",):
            if c not in cols:
                raise InputError(f"processed file '{f}' lacks column '{c}': re-run `python -m tbjax.prepare`")
        tables[sym] = cols
        hashes[sym] = file_sha256(f)
    available = manifest.get("feature_names") or [c for c in next(iter(tables.values())) if c not in BAR_COLUMNS]
    columns = list(cfg.features.columns or available)
    for sym, cols in tables.items():
        for c in columns:
            if c not in cols:
                raise InputError(f"feature '{c}' (features.columns) is missing from {sym}'s processed file: "
                                 f"available {available}")
    return tables, columns, hashes
