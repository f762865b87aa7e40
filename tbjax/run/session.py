"""One training run on the host side: run directory, chunks, logging, validation, checkpoints, final evaluation.

The compiled ``train_chunk`` does all the per-step work; this class only runs between chunks:
it logs one metrics.jsonl line per chunk (means over the chunk's updates), evaluates on the
validation split with FROZEN statistics every ``train.eval_every`` updates, keeps the best
checkpoint by the regime objective, and writes eval JSON and the report at the end.

Run directory lifecycle (docs/DESIGN.md, invariant 6 "Atomic outputs"):

* building a session only READS (data, features, trainer); :meth:`TrainingSession.setup_run_dir`
  then writes config.yaml, run_info.json, feature_pipeline.json and dataset/ all or nothing
  (:meth:`TrainingSession.undo_setup` removes them again), so a bad input or an interrupt before
  training leaves no half-made run directory;
* every file goes through :mod:`tbjax.atomic` (a whole file or the old one, never half of one);
  metrics.jsonl is rewritten whole each chunk, and written BEFORE the chunk's checkpoint, so a
  crash between the two leaves a line that ``--resume`` trims, never a checkpoint without its line;
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
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import jax
import numpy as np

from tbjax.atomic import disk_errors, write_atomic, write_with
from tbjax.evaluation.backtest import finite_or_zero
from tbjax.run.checkpoint import RunCheckpoints
from tbjax.config import Config, config_to_dict
from tbjax.data.export import export_dataset
from tbjax.data.market import ROLE_TEST, ROLE_TRAIN, ROLE_VAL
from tbjax.errors import InputError
from tbjax.run.setup import (build_experiment, env_params_from_config, evaluate_split, evaluate_with_objective,
                              hparams_from_config,
                              spec_from_config, trainer_for)
from tbjax.evaluation.metrics import json_safe
from tbjax.learner.trainer import NonFiniteUpdateError, raise_if_nonfinite

SUM_KEYS = ("episode/count",)
LAST_KEYS = ("nan_guard_count", "lr", "popart/mu", "popart/sigma", "popart/holdout_ev", "ev/ema")
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


def reduce_chunk_metrics(metrics: dict) -> dict[str, float]:
    """Per-update arrays of one chunk → one number each (mean; sums for counts; last for state)."""
    out = {}
    for key, value in metrics.items():
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
        if key in SUM_KEYS:
            out[key] = float(arr.sum())
        elif key in LAST_KEYS:
            out[key] = float(arr[-1])
        else:
            finite = arr[np.isfinite(arr)]
            out[key] = float(finite.mean()) if finite.size else float("nan")
    return out


# ---------------------------------------------------------------------- run directory helpers


def run_origin(run_dir: Path) -> Path | None:
    """The folder the run was trained from (run_info.json), None for runs that did not record it."""
    try:
        cwd = json.loads((Path(run_dir) / RUN_INFO).read_text()).get("cwd")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(cwd) if isinstance(cwd, str) and cwd else None


def resolve_run_paths(cfg: Config, run_dir: Path) -> Config:
    """``cfg`` with its relative data paths made absolute the way the run saw them.

    A relative ``data.processed_dir`` / ``env.liquidity_seasonality`` meant "relative to the folder
    training ran in"; ``evaluate`` or ``--resume`` from another folder must not read another (or no)
    dataset. Tried in order: that folder (run_info.json), then the current one (a run copied
    together with its data). Neither holding it is one message naming both.
    """
    origin = run_origin(run_dir)
    sections = {}
    for section, key in RUN_PATH_KEYS:
        value = getattr(getattr(cfg, section), key)
        if not value or Path(value).is_absolute():
            continue
        bases = [b for b in (origin, Path.cwd()) if b is not None]
        found = next((b / value for b in bases if (b / value).exists()), None)
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


class TrainingSession:
    def __init__(self, cfg: Config, run_dir: Path, write: bool = True, quiet: bool = False, pipeline=None):
        """Load and check everything a run needs; READS only (see :meth:`setup_run_dir`).

        ``write``: this process owns the run directory (checkpoints, metrics, TensorBoard); False
        for evaluation, tests and non-primary hosts. ``pipeline``: a saved FeaturePipeline to reuse
        (resume, evaluate) instead of fitting one on the train rows.
        """
        self.cfg, self.run_dir, self.write, self.quiet = cfg, Path(run_dir), write, quiet
        self.exp = build_experiment(cfg, pipeline=pipeline)
        self.env_params = env_params_from_config(cfg, ROLE_TRAIN)
        self.hparams = hparams_from_config(cfg, self.env_params)
        self.spec = spec_from_config(cfg, n_groups=len(self.exp.symbols))
        self.trainer = trainer_for(self.spec, self.env_params)
        self.ckpt = RunCheckpoints(self.run_dir)
        self.update = 0
        self.best_objective = -math.inf
        self.saved_update: int | None = None  # update of the newest "latest" checkpoint on disk
        self.time_ms = {s: np.asarray(t["open_time"], np.int64) for s, t in self.exp.tables.items()}
        self._metrics_lines: list[str] = []
        self._setup: dict | None = None

    # ------------------------------------------------------------------ run directory
    def setup_run_dir(self, config_text: str, fresh: bool, run_info: dict | None = None,
                      changes: dict | None = None) -> None:
        """Write what a run needs before its first chunk, all or nothing.

        Fresh: clear leftovers of an abandoned attempt (the caller checked that no usable
        checkpoint is there), then run_info.json (``run_info``), config.yaml, feature_pipeline.json
        and dataset/. Resume: config.yaml only when ``config_text`` differs (a --set of a resumable
        key; ``changes`` {key: [old, new]} is appended to run_info.json's "resumes", because
        config.yaml alone then describes the run's end, not its history), and the pipeline or
        dataset/ when an older run lacks them. Any failure undoes it all and raises one error.
        """
        path = self.run_dir
        self._setup = {"fresh": fresh, "made_dir": not path.exists(), "new": [], "old": {}}
        try:
            with run_write(path, "creating run directory"):
                path.mkdir(parents=True, exist_ok=True)
            if fresh:
                with run_write(path, "clearing an earlier attempt in"):
                    clear_run_artifacts(path)
                self._put(path / RUN_INFO, json.dumps(run_info or {}, indent=1, sort_keys=True) + "\n")
            config = path / "config.yaml"
            if not config.is_file() or config.read_text() != config_text:
                self._put(config, config_text)
            if changes and not fresh:
                self._record_resume(changes)
            pipeline = path / "feature_pipeline.json"
            if fresh or not pipeline.is_file():
                self._remember(pipeline)
                with run_write(pipeline):
                    write_with(pipeline, lambda tmp: self.exp.pipeline.save(str(tmp)))
            if not (path / "dataset" / "manifest.json").is_file():
                self._remember(path / "dataset")
                self._export_dataset()
        except BaseException:
            self.undo_setup()
            raise

    def _remember(self, target: Path) -> None:
        """Note ``target``'s state before setup changes it, for :meth:`undo_setup`."""
        if target.is_file():
            self._setup["old"].setdefault(target, target.read_bytes())
        elif not target.exists():
            self._setup["new"].append(target)

    def _put(self, target: Path, text: str) -> None:
        self._remember(target)
        with run_write(target):
            write_atomic(target, text)

    def _record_resume(self, changes: dict) -> None:
        info_path = self.run_dir / RUN_INFO
        try:
            info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        except (OSError, ValueError):
            info = {}
        info = info if isinstance(info, dict) else {}
        info.setdefault("resumes", []).append({"at_update": self.update, "changed": json_safe(changes)})
        self._put(info_path, json.dumps(info, indent=1, sort_keys=True) + "\n")

    def undo_setup(self) -> None:
        """Remove what :meth:`setup_run_dir` wrote (best effort): the folder as the user had it,
        minus the leftovers a fresh start cleared."""
        setup, self._setup = self._setup, None
        if not setup:
            return
        with contextlib.suppress(OSError):
            if setup["fresh"] and setup["made_dir"]:
                shutil.rmtree(self.run_dir)
            elif setup["fresh"]:
                clear_run_artifacts(self.run_dir)
            else:
                for target in setup["new"]:
                    shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
                for target, data in setup["old"].items():
                    write_atomic(target, data)

    def _export_dataset(self) -> None:
        """dataset/ as one unit: exported into a hidden sibling, renamed into place when complete."""
        target = self.run_dir / "dataset"
        with run_write(target, "exporting the dataset to"):
            staging = Path(tempfile.mkdtemp(dir=self.run_dir, prefix=".dataset.", suffix=".tmp"))
            try:
                export_dataset(staging, self.exp.tables, self.exp.roles, self.exp.bounds,
                               config_to_dict(self.cfg)["features"] | {"window_size": self.cfg.env.window_size},
                               self.exp.data_hashes)
                if target.exists():
                    shutil.rmtree(target)
                os.rename(staging, target)
            except InputError as exc:  # name the files where the user will look for them
                raise RunWriteError(str(exc).replace(str(staging), str(target))) from None
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, carry, role: int):
        """Backtest one split of the run's data with the carry's frozen statistics."""
        return evaluate_split(self.exp, self.trainer.policy_apply, carry.params, carry.obs_stats, self.env_params, role)

    def objective(self, carry, role: int = ROLE_VAL) -> tuple[float, dict, dict]:
        """Regime objective on ``role`` plus the synthetic CHOPPY_FLAT / STRONG_TREND markets."""
        return evaluate_with_objective(self.exp, self.trainer.policy_apply, carry.params, carry.obs_stats,
                                       self.env_params, role)

    # ------------------------------------------------------------------ training
    def start(self, resume: bool, fix: str | None = None):
        """The carry training continues from: a fresh one from ``train.seed``, or the newest usable
        "latest" checkpoint (``fix``: the advice when there is none). Reads only."""
        carry = self.trainer.init(jax.random.PRNGKey(self.cfg.train.seed), self.hparams, self.exp.market)
        self.update, self.best_objective, self.saved_update, self._metrics_lines = 0, -math.inf, None, []
        if resume:
            carry, meta = self.ckpt.restore("latest", carry, fix=fix)
            self.update = self.saved_update = int(meta["update"])
            best = meta.get("best_objective")  # JSON has no -inf: None means "no evaluation yet"
            self.best_objective = -math.inf if best is None else float(best)
            self._metrics_lines = read_metrics_lines(self.run_dir / "metrics.jsonl", self.update)
        return carry

    def compile(self, carry) -> None:
        """Compile ``train_chunk`` for ``carry`` now (jit's cache keeps the executable for the first
        chunk): a compile failure, or an interrupt while XLA compiles (often the longest wait before
        the first chunk), then happens before the run directory is touched."""
        self.trainer.train_chunk.lower(carry, self.hparams, self.exp.market).compile()

    def _log(self, row: dict, tb) -> None:
        """Append the chunk's row: metrics.jsonl rewritten whole (atomic), TensorBoard flushed, so a
        full disk surfaces here as one error, not later in a writer thread."""
        if not self.write:
            return
        path = self.run_dir / "metrics.jsonl"
        self._metrics_lines.append(json.dumps(json_safe(row), sort_keys=True))
        with run_write(path):
            write_atomic(path, "".join(line + "\n" for line in self._metrics_lines))
        if tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and math.isfinite(value) and key not in ("update", "env_steps"):
                    tb.add_scalar(key, value, row["env_steps"])
            with run_write(self.run_dir / "tb"):
                tb.flush()

    def _save_latest(self, carry, meta: dict) -> None:
        with run_write(self.ckpt.paths["latest"]):
            self.ckpt.save_latest(self.update, carry, meta)
        self.saved_update = self.update

    def _open_tensorboard(self, resumed_at: int):
        if not (self.write and self.cfg.output.tensorboard):
            return None
        from tensorboardX import SummaryWriter

        # On resume, drop events logged after the checkpoint (their chunks are trained again).
        purge = resumed_at * self.cfg.batch_size + 1 if resumed_at else None
        with run_write(self.run_dir / "tb"):
            return SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)

    def train(self, resume: bool, stop, max_chunks: int | None = None, carry=None) -> bool:
        """Train until ``train.total_env_steps``, ``stop.raised`` or ``max_chunks`` chunks; True when
        finished. ``carry``: from :meth:`start` (called here when None)."""
        cfg, spec = self.cfg, self.spec
        if carry is None:
            carry = self.start(resume)
        total = cfg.n_updates
        steps_per_update = cfg.batch_size
        eval_chunks = max(1, math.ceil(cfg.train.eval_every / cfg.train.updates_per_chunk))
        tb = self._open_tensorboard(self.update if resume else 0)
        from tqdm import tqdm

        bar = tqdm(total=total * steps_per_update, initial=self.update * steps_per_update, unit="step",
                   unit_scale=True, disable=self.quiet or not self.write, dynamic_ncols=True)
        chunks_done, last_val = 0, {}
        try:
            while self.update < total:
                if stop is not None and stop.raised:
                    break
                if max_chunks is not None and chunks_done >= max_chunks:
                    break
                t0 = time.perf_counter()
                carry, metrics = self.trainer.train_chunk(carry, self.hparams, self.exp.market)
                metrics = jax.device_get(metrics)
                try:
                    raise_if_nonfinite(metrics, self.update)
                except NonFiniteUpdateError as exc:
                    bar.close()
                    raise InputError(f"NaN guard fired: {exc}. The last good checkpoint is in "
                                     f"'{self.run_dir / 'checkpoints'}'; check the data, or start a new run "
                                     "(another --run-dir) with a lower ppo.learning_rate") from None
                self.update += spec.updates_per_chunk
                chunks_done += 1
                row = {"update": self.update, "env_steps": self.update * steps_per_update}
                row.update(reduce_chunk_metrics(metrics))
                is_last = self.update >= total
                save = None
                if chunks_done % eval_chunks == 0 or is_last:
                    value, val_eval, _ = self.objective(carry)
                    last_val = {"val/sortino": val_eval["pooled"]["sortino"], "val/sharpe": val_eval["pooled"]["sharpe"],
                                "val/total_return": val_eval["pooled"]["total_return"], "val/objective": value}
                    row.update(last_val)
                    save = {"update": self.update, "env_steps": row["env_steps"], "objective": value}
                self._log(row, tb)  # before the checkpoint: see the module docstring
                if save is not None:
                    if save["objective"] > self.best_objective:
                        self.best_objective = save["objective"]
                        if self.write:
                            with run_write(self.ckpt.paths["best"]):
                                self.ckpt.save_best(self.update, carry, save)
                    if self.write:
                        self._save_latest(carry, {**save, "best_objective": self.best_objective})
                    if self.quiet and self.write:
                        print(f"update {self.update}/{total}  val sortino {finite_or_zero(last_val['val/sortino']):.3f}  "
                              f"objective {save['objective']:.3f}", flush=True)
                dt = time.perf_counter() - t0
                bar.update(spec.updates_per_chunk * steps_per_update)
                bar.set_postfix({"steps/s": f"{spec.updates_per_chunk * steps_per_update / dt:,.0f}",
                                 "val_sortino": f"{finite_or_zero(last_val.get('val/sortino')):.2f}",
                                 "objective": f"{last_val.get('val/objective', float('nan')):.2f}",
                                 "nan_guard": int(row.get("nan_guard_count", 0))}, refresh=False)
        finally:
            bar.close()
            if tb is not None:
                with contextlib.suppress(OSError):
                    tb.close()
        if self.update < total:
            if self.write and self.saved_update != self.update:
                self._save_latest(carry, {"update": self.update, "env_steps": self.update * steps_per_update,
                                          "best_objective": self.best_objective})
            return False
        self.carry = carry
        return True

    # ------------------------------------------------------------------ final artifacts
    def final_evaluation(self, which: str = "best") -> dict:
        template = self.trainer.init(jax.random.PRNGKey(self.cfg.train.seed), self.hparams, self.exp.market)
        if which == "best" and self.ckpt.best_step() is None:
            which = "latest"
        carry, meta = self.ckpt.restore(which, template)
        return write_evaluation(self, carry, meta, which)


def evaluate_checkpoint(session: TrainingSession, carry, meta: dict, which: str,
                        splits=("val", "test")) -> tuple[dict, dict]:
    """(eval dict per split, report series per split) of a restored checkpoint; writes nothing."""
    evals, series = {}, {}
    for split in splits:
        role = {"val": ROLE_VAL, "test": ROLE_TEST}[split]
        _, result, ser = session.objective(carry, role)
        result["checkpoint"] = {"which": which, **{k: meta.get(k) for k in ("update", "env_steps", "objective")}}
        evals[split], series[split] = result, ser
    return evals, series


def save_evaluation(run_dir: Path, evals: dict, series: dict) -> None:
    """eval/<split>.json, report.md and plots; a failed write raises one RunWriteError."""
    from tbjax.evaluation.report import write_report

    run_dir = Path(run_dir)
    with run_write(run_dir / "eval"):
        (run_dir / "eval").mkdir(exist_ok=True)
        for split, result in evals.items():
            write_atomic(run_dir / "eval" / f"{split}.json", json.dumps(json_safe(result), indent=2, sort_keys=True))
    history = [json.loads(line) for line in read_metrics_lines(run_dir / "metrics.jsonl")]
    with run_write(run_dir / "report.md"):
        write_report(run_dir, evals, series, history)


def write_evaluation(session: TrainingSession, carry, meta: dict, which: str, splits=("val", "test")) -> dict:
    """eval/<split>.json, report.md and plots for a restored checkpoint."""
    evals, series = evaluate_checkpoint(session, carry, meta, which, splits)
    save_evaluation(session.run_dir, evals, series)
    return evals
