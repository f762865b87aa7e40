"""FeaturePipeline: z-score feature columns with statistics fit on training rows only.

docs/DESIGN.md invariant 2: the mean and standard deviation of every feature are pooled over the train
rows of all symbols and nothing else, so validation and test rows cannot leak into the scaling.
The fitted statistics are saved as JSON beside the run and reused unchanged for evaluation.

z = clip((x - mean) / max(std, std_floor), -clip, clip), with NaN (lookback not yet filled,
undefined ratio) mapped to 0, the train mean, after scaling. Columns that are constant on the train
rows (std below the floor) and columns with no finite train value are listed in ``report``; the
latter scale to 0 everywhere because train says nothing about them.

The statistics are fit here in float64; APPLYING them is :func:`tbjax.data.scaling.standardize` in
float32 (:meth:`FeaturePipeline.scaling`), the one transform the env, the Gymnasium twin and
:meth:`FeaturePipeline.transform` share, so every path computes the same float32 z-scores.
"""

from __future__ import annotations

import json
import os

import numpy as np

from tbjax.atomic import write_atomic
from tbjax.config import FeaturesConfig
from tbjax.config_rules import FEATURE_FLOATS, check_floats
from tbjax.data.scaling import scaling_arrays, standardize
from tbjax.errors import InputError


_DEFAULTS = FeaturesConfig()  # features.* defaults live in tbjax/config.py only


class FeaturePipeline:
    """Per-column train statistics and the transform that applies them."""

    def __init__(self, columns: list[str], std_floor: float = _DEFAULTS.std_floor, clip: float | None = _DEFAULTS.clip):
        if not columns:
            raise InputError("FeaturePipeline needs at least one feature column")
        check_floats("features", {"std_floor": std_floor, "clip": clip}, FEATURE_FLOATS)  # clip None: no clip
        self.columns = list(columns)
        self.std_floor = float(std_floor)
        self.clip = None if clip is None else float(clip)
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.all_nan: list[str] = []
        self.train_rows = 0
        self.report: list[str] = []

    def fit(self, tables: list[dict[str, np.ndarray]],
            train_masks: list[np.ndarray]) -> "FeaturePipeline":
        """Pool mean and (population) std over the masked train rows of every table, NaN-aware."""
        if len(tables) != len(train_masks):
            raise InputError(f"fit got {len(tables)} tables but {len(train_masks)} train masks")
        n_cols = len(self.columns)
        count, total = np.zeros(n_cols), np.zeros(n_cols)
        selected = []
        for i, (table, mask) in enumerate(zip(tables, train_masks)):
            mask = np.asarray(mask, bool)
            values = self._matrix(table, f"table {i}")
            if mask.shape != (values.shape[0],):
                raise InputError(f"table {i}: train mask has shape {mask.shape}, "
                                 f"expected ({values.shape[0]},)")
            rows = values[mask]
            selected.append(rows)
            finite = np.isfinite(rows)
            count += finite.sum(0)
            total += np.where(finite, rows, 0.0).sum(0)
        self.train_rows = int(sum(len(r) for r in selected))
        if self.train_rows == 0:
            raise InputError("no train rows to fit feature statistics on; check the train split")
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total / count
        sq = np.zeros(n_cols)
        for rows in selected:  # second pass: squared deviations from the pooled mean
            dev = rows - mean
            sq += np.where(np.isfinite(dev), dev * dev, 0.0).sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            std = np.sqrt(sq / count)
        dead = count == 0
        self.all_nan = [c for c, d in zip(self.columns, dead) if d]
        self.report = [f"column {c}: no finite value on {self.train_rows} train rows; "
                       "its z-score is 0 everywhere" for c in self.all_nan]
        for c, s, d in zip(self.columns, std, dead):
            if not d and s < self.std_floor:
                self.report.append(f"column {c}: constant on train rows (std {s:.3g} below "
                                   f"floor {self.std_floor:g}); std floored to {self.std_floor:g}")
        self.mean = np.where(dead, 0.0, mean)
        self.std = np.where(dead, 1.0, np.maximum(std, self.std_floor))
        return self

    def scaling(self) -> tuple[np.ndarray, np.ndarray, np.float32]:
        """(shift, scale, clip) float32 for :func:`tbjax.data.scaling.standardize`."""
        if self.mean is None:
            raise RuntimeError("FeaturePipeline.scaling called before fit/load")
        dead = [c in self.all_nan for c in self.columns]
        return scaling_arrays(self.mean, self.std, self.clip, dead)

    def transform(self, table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A new dict: every column of ``table`` plus ``<name>_z`` float32 columns (the env's transform)."""
        shift, scale, clip = self.scaling()
        z = standardize(self._matrix(table, "table", np.float32), shift, scale, clip)
        out = dict(table)
        for j, name in enumerate(self.columns):
            out[f"{name}_z"] = z[:, j]
        return out

    def _matrix(self, table: dict[str, np.ndarray], where: str, dtype=np.float64) -> np.ndarray:
        missing = [c for c in self.columns if c not in table]
        if missing:
            raise InputError(f"{where} lacks feature column(s) {missing}; recompute features "
                             "with the same feature set the pipeline was fit on")
        return np.stack([np.asarray(table[c], dtype) for c in self.columns], axis=1)

    # ------------------------------------------------------------------ persistence

    def to_json(self) -> dict:
        if self.mean is None:
            raise RuntimeError("FeaturePipeline.to_json called before fit")
        return {"columns": self.columns, "mean": self.mean.tolist(), "std": self.std.tolist(),
                "std_floor": self.std_floor, "clip": self.clip, "all_nan": self.all_nan,
                "train_rows": self.train_rows, "report": self.report}

    @classmethod
    def from_json(cls, d: dict) -> "FeaturePipeline":
        try:
            pipe = cls(list(d["columns"]), float(d["std_floor"]), d["clip"])
            pipe.mean = np.asarray(d["mean"], np.float64)
            pipe.std = np.asarray(d["std"], np.float64)
            pipe.all_nan = list(d.get("all_nan", []))
            pipe.train_rows = int(d.get("train_rows", 0))
            pipe.report = list(d.get("report", []))
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"feature statistics are malformed ({err!r}); expected keys "
                             "columns, mean, std, std_floor, clip") from None
        n = len(pipe.columns)
        if pipe.mean.shape != (n,) or pipe.std.shape != (n,) or not np.all(pipe.std > 0):
            raise InputError(f"feature statistics: mean/std must be {n} numbers (std > 0), one "
                             "per column")
        return pipe

    def save(self, path: str) -> None:
        """Write JSON atomically (tbjax.atomic: temp file in the same folder, then rename)."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write_atomic(path, json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str) -> "FeaturePipeline":
        try:
            with open(path) as f:
                d = json.load(f)
        except FileNotFoundError:
            raise InputError(f"{path}: feature statistics file not found") from None
        except json.JSONDecodeError as err:
            raise InputError(f"{path}: not valid JSON ({err}); re-create it by training") from None
        try:
            return cls.from_json(d)
        except InputError as err:
            raise InputError(f"{path}: {err}") from None
