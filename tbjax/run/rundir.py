"""The run directory: what it holds, writing into it, setting it up all or nothing, undoing that.

docs/DESIGN.md, invariant 6 "Atomic outputs":

* building a session only READS (data, features, trainer); :class:`RunDirSetup` then writes
  config.yaml, run_info.json, feature_pipeline.json and dataset/ all or nothing (:meth:`RunDirSetup.undo`
  removes them again), so a bad input or an interrupt before training leaves no half-made run directory;
* every file goes through :mod:`tbjax.atomic` (a whole file or the old one, never half of one);
* a failed write (disk full, permissions) raises :class:`RunWriteError`: one message, and what was
  saved before stays intact for ``--resume``;
* relative ``data.processed_dir`` and ``env.liquidity_seasonality`` in a stored config.yaml are
  resolved against the folder the run was trained from (``run_info.json``'s ``cwd``), then the
  current folder (:func:`resolve_run_paths`): config.yaml keeps the paths as written so a run
  copied together with its data stays usable, and ``evaluate`` works from any folder.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import warnings
from dataclasses import replace
from pathlib import Path
from collections.abc import Callable

from tbjax.atomic import atomic_folder, disk_errors, write_atomic, write_with
from tbjax.config import Config, config_to_dict
from tbjax.data.export import export_dataset
from tbjax.errors import InputError
from tbjax.evaluation.metrics import json_safe

RUN_INFO = "run_info.json"
# Everything a run writes into its directory; a fresh start clears these (and nothing else) when
# the folder holds no usable checkpoint, so a new run never mixes with an abandoned attempt.
RUN_ARTIFACTS = ("config.yaml", RUN_INFO, "feature_pipeline.json", "dataset", "metrics.jsonl", "checkpoints",
                 "eval", "report.md", "plots", "tb")
RUN_PATH_KEYS = (("data", "processed_dir"), ("env", "liquidity_seasonality"))


class RunWriteError(InputError):
    """Writing into the run directory failed (disk full, permissions): training stops; everything
    saved before (checkpoints, metrics lines) is intact, so the run can be continued with --resume."""


@contextlib.contextmanager
def run_write(path: str | Path, what: str = "writing"):
    """OS errors (and the InputErrors of tbjax.atomic) inside the block → one :class:`RunWriteError`."""
    try:
        with disk_errors(path, what):
            yield
    except RunWriteError:
        raise
    except InputError as exc:
        raise RunWriteError(str(exc)) from None


# ---------------------------------------------------------------------- reading a run directory


def run_origin(run_dir: Path) -> Path | None:
    """The folder the run was trained from (run_info.json), None for runs that did not record it."""
    try:
        cwd = json.loads((Path(run_dir) / RUN_INFO).read_text()).get("cwd")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(cwd) if isinstance(cwd, str) and cwd else None


def resolve_run_paths(cfg: Config, run_dir: Path, optional: tuple[str, ...] = ()) -> Config:
    """``cfg`` with its relative data paths made absolute the way the run saw them.

    A relative ``data.processed_dir`` / ``env.liquidity_seasonality`` meant "relative to the folder
    training ran in"; ``evaluate`` or ``--resume`` from another folder must not read another (or no)
    dataset. Tried in order: that folder (run_info.json), then the current one (a run copied
    together with its data). Neither holding it is one message naming both, except for the keys
    listed in ``optional`` (e.g. ``"data.processed_dir"`` for ``load_policy``, which never reads the
    processed data): those are kept as written.
    """
    origin = run_origin(run_dir)
    sections = {}
    for section, key in RUN_PATH_KEYS:
        value = getattr(getattr(cfg, section), key)
        if not value or Path(value).is_absolute():
            continue
        bases = [b for b in (origin, Path.cwd()) if b is not None]
        found = next((b / value for b in bases if (b / value).exists()), None)
        if found is None and f"{section}.{key}" in optional:
            continue
        if found is None:
            here = f"the current folder ('{Path.cwd()}')"
            where = (f"neither in the folder the run was trained from ('{origin}') nor in {here}" if origin
                     else f"not in {here}")
            raise InputError(f"{section}.{key} '{value}' of run '{run_dir}' is a relative path, found {where}: "
                             f"run the command from the folder that holds it, or put its absolute path into "
                             f"'{Path(run_dir) / 'config.yaml'}'")
        sections.setdefault(section, {})[key] = str(found)
    for section, values in sections.items():
        cfg = replace(cfg, **{section: replace(getattr(cfg, section), **values)})
    return cfg


def check_same_data(exp, run_dir: Path) -> None:
    """Refuse to continue or re-evaluate a run on other data than it was trained on.

    dataset/manifest.json records the SHA-256 of every processed file the run read; a re-prepared
    or edited file would make resumed training or evaluation numbers about a different dataset.
    """
    manifest = Path(run_dir) / "dataset" / "manifest.json"
    if not manifest.is_file():
        return  # an older run without an export: nothing to compare against
    try:
        saved = json.loads(manifest.read_text())["data_hashes"]
        saved = {str(k): str(v) for k, v in saved.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise InputError(f"'{manifest}' is unreadable: restore the run's dataset export, or start a new run") from None
    now = exp.data_hashes
    changed = sorted(s for s in set(saved) | set(now) if saved.get(s) != now.get(s))
    if changed:
        what = ", ".join(f"{s} ({'changed' if s in saved and s in now else 'missing' if s in saved else 'new'})"
                         for s in changed[:4])
        raise InputError(f"the processed data in '{exp.cfg.data.processed_dir}' is not the data run '{run_dir}' was "
                         f"trained on: {what}; its numbers would describe another dataset: restore the files the "
                         f"run was trained on (their SHA-256 are in '{manifest}'), or start a new run on this data")


def read_metrics_lines(path: Path, last_update: float = math.inf) -> list[str]:
    """metrics.jsonl lines with update <= ``last_update``; unreadable lines are dropped with a warning."""
    if not path.is_file():
        return []
    keep, dropped = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            update = int(json.loads(line)["update"])
        except (ValueError, KeyError, TypeError):
            dropped += 1
            continue
        if update <= last_update:
            keep.append(line)
    if dropped:
        warnings.warn(f"ignored {dropped} unreadable line(s) of '{path}'", stacklevel=2)
    return keep


# ---------------------------------------------------------------------- writing one


def clear_run_artifacts(run_dir: Path) -> list[str]:
    """Remove what tbjax wrote into ``run_dir`` (RUN_ARTIFACTS and hidden temporary files); returns
    the names removed. Only for a folder with no usable checkpoint: nothing of value is lost."""
    removed = []
    for entry in sorted(Path(run_dir).iterdir()) if Path(run_dir).is_dir() else []:
        stale_tmp = entry.name.startswith(".") and entry.name.endswith(".tmp")
        if entry.name in RUN_ARTIFACTS or stale_tmp:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(entry.name)
    return removed


def export_run_dataset(run_dir: Path, exp, cfg: Config) -> None:
    """dataset/ as one unit: exported into a hidden sibling, renamed into place when complete."""
    target = Path(run_dir) / "dataset"
    with run_write(target, "exporting the dataset to"), atomic_folder(target) as staging:
        try:
            export_dataset(staging, exp.tables, exp.roles, exp.bounds,
                           config_to_dict(cfg)["features"] | {"window_size": cfg.env.window_size},
                           exp.data_hashes)
        except InputError as exc:  # name the files where the user will look for them
            raise RunWriteError(str(exc).replace(str(staging), str(target))) from None


class RunDirSetup:
    """One all-or-nothing setup of a run directory: it remembers what it changes, :meth:`undo` restores it."""

    def __init__(self, run_dir: Path, fresh: bool):
        self.run_dir, self.fresh = Path(run_dir), fresh
        self.made_dir = not self.run_dir.exists()
        self.new: list[Path] = []
        self.old: dict[Path, bytes] = {}
        self.undone = False

    def write(self, config_text: str, run_info: dict | None, changes: dict | None, at_update: int,
              save_pipeline: Callable[[Path], None], export: Callable[[], None]) -> None:
        """Write what a run needs before its first chunk, all or nothing.

        Fresh: clear leftovers of an abandoned attempt (the caller checked that no usable
        checkpoint is there), then run_info.json (``run_info``), config.yaml, feature_pipeline.json
        (``save_pipeline(tmp)``) and dataset/ (``export()``). Resume: config.yaml only when
        ``config_text`` differs (a --set of a resumable key; ``changes`` {key: [old, new]} is
        appended to run_info.json's "resumes" with ``at_update``, because config.yaml alone then
        describes the run's end, not its history), and the pipeline or dataset/ when an older run
        lacks them. Any failure undoes it all and raises one error.
        """
        path = self.run_dir
        try:
            with run_write(path, "creating run directory"):
                path.mkdir(parents=True, exist_ok=True)
            if self.fresh:
                with run_write(path, "clearing an earlier attempt in"):
                    clear_run_artifacts(path)
                self.put(path / RUN_INFO, json.dumps(run_info or {}, indent=1, sort_keys=True) + "\n")
            config = path / "config.yaml"
            if not config.is_file() or config.read_text() != config_text:
                self.put(config, config_text)
            if changes and not self.fresh:
                self._record_resume(changes, at_update)
            pipeline = path / "feature_pipeline.json"
            if self.fresh or not pipeline.is_file():
                self.remember(pipeline)
                with run_write(pipeline):
                    write_with(pipeline, save_pipeline)
            if not (path / "dataset" / "manifest.json").is_file():
                self.remember(path / "dataset")
                export()
        except BaseException:
            self.undo()
            raise

    def remember(self, target: Path) -> None:
        """Note ``target``'s state before the setup changes it, for :meth:`undo`."""
        if target.is_file():
            self.old.setdefault(target, target.read_bytes())
        elif not target.exists():
            self.new.append(target)

    def put(self, target: Path, text: str) -> None:
        self.remember(target)
        with run_write(target):
            write_atomic(target, text)

    def _record_resume(self, changes: dict, at_update: int) -> None:
        info_path = self.run_dir / RUN_INFO
        try:
            info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        except (OSError, ValueError):
            info = {}
        info = info if isinstance(info, dict) else {}
        info.setdefault("resumes", []).append({"at_update": at_update, "changed": json_safe(changes)})
        self.put(info_path, json.dumps(info, indent=1, sort_keys=True) + "\n")

    def undo(self) -> None:
        """Remove what :meth:`write` wrote (best effort, once): the folder as the user had it, minus
        the leftovers a fresh start cleared."""
        if self.undone:
            return
        self.undone = True
        with contextlib.suppress(OSError):
            if self.fresh and self.made_dir:
                shutil.rmtree(self.run_dir)
            elif self.fresh:
                clear_run_artifacts(self.run_dir)
            else:
                for target in self.new:
                    shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
                for target, data in self.old.items():
                    write_atomic(target, data)
