"""Export the exact training dataset of a run: one feather file per symbol plus a manifest.

The manifest's ``split_version`` is a SHA-256 over the raw data hashes, the split bounds and the
feature configuration, so two runs with the same ``split_version`` saw the same rows in the same
roles with the same features; changing any input changes it. Every file is written through
:mod:`tbjax.atomic` (temporary name, then rename), so an interrupted export or a full disk never
leaves a half-written artifact (docs/DESIGN.md invariant 6) and a disk error is one InputError; the
manifest is written last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather

from tbjax.atomic import disk_errors, write_atomic, write_with
from tbjax.data.hashing import file_sha256
from tbjax.data.splits import ROLE_NAMES, SplitBounds


def split_version(bounds: SplitBounds, feature_config: dict, data_hashes: dict[str, str]) -> str:
    """SHA-256 of canonical JSON (sorted keys) of data hashes, split bounds and feature config."""
    payload = {"data_hashes": dict(sorted(data_hashes.items())),
               "split_bounds": dataclasses.asdict(bounds), "feature_config": feature_config}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def role_counts(roles: np.ndarray) -> dict[str, int]:
    """Rows per role name (train, val, test, embargo, outside)."""
    roles = np.asarray(roles)
    return {name: int(np.sum(roles == role)) for role, name in ROLE_NAMES.items()}


def export_dataset(out_dir, tables: dict[str, dict[str, np.ndarray]],
                   roles: dict[str, np.ndarray], bounds: SplitBounds, feature_config: dict,
                   data_hashes: dict[str, str]) -> dict:
    """Write ``out_dir/<SYMBOL>.feather`` (table columns + int8 ``role``) and ``manifest.json``.

    Returns the manifest: split_version, bounds, feature_config, data_hashes, and per symbol the
    file name, its SHA-256 and row counts per role (plus totals over all symbols).
    """
    out_dir = os.fspath(out_dir)
    if set(tables) != set(roles):
        raise ValueError(f"tables and roles name different symbols: {sorted(tables)} vs "
                         f"{sorted(roles)}")
    with disk_errors(out_dir):
        os.makedirs(out_dir, exist_ok=True)
    symbols, totals = {}, {name: 0 for name in ROLE_NAMES.values()}
    for symbol in sorted(tables):
        columns = {name: np.asarray(col) for name, col in tables[symbol].items()}
        columns["role"] = np.asarray(roles[symbol], np.int8)
        path = os.path.join(out_dir, f"{symbol}.feather")
        table = pa.table(columns)
        write_with(path, lambda tmp, t=table: feather.write_feather(t, tmp))
        counts = role_counts(columns["role"])
        for name, n in counts.items():
            totals[name] += n
        symbols[symbol] = {"file": f"{symbol}.feather", "sha256": file_sha256(path),
                           "rows": int(len(columns["role"])), "role_counts": counts}
    manifest = {"split_version": split_version(bounds, feature_config, data_hashes),
                "split_bounds": dataclasses.asdict(bounds), "feature_config": feature_config,
                "data_hashes": dict(sorted(data_hashes.items())), "symbols": symbols,
                "role_counts": totals}
    write_atomic(os.path.join(out_dir, "manifest.json"),
                 json.dumps(manifest, indent=1, sort_keys=True, default=str))
    return manifest
