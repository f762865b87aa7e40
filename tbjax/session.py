"""One training run on the host side: chunks, logging, validation, checkpoints, final evaluation.

The compiled ``train_chunk`` does all the per-step work; this class only runs between chunks:
it logs one metrics.jsonl line per chunk (means over the chunk's updates), evaluates on the
validation split with FROZEN statistics every ``train.eval_every`` updates, keeps the best
checkpoint by the regime objective, and writes eval JSON and the report at the end.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import jax
import numpy as np

from tbjax.backtest import backtest, finite_or_zero
from tbjax.checkpoint import RunCheckpoints
from tbjax.config import Config, config_to_dict
from tbjax.data.export import export_dataset
from tbjax.data.market import ROLE_TEST, ROLE_TRAIN, ROLE_VAL
from tbjax.errors import InputError
from tbjax.experiment import (build_experiment, env_params_from_config, evaluate_with_objective, hparams_from_config,
                              spec_from_config, trainer_for)
from tbjax.metrics import json_safe
from tbjax.trainer import NonFiniteUpdateError, raise_if_nonfinite

SUM_KEYS = ("episode/count",)
LAST_KEYS = ("nan_guard_count", "lr", "popart/mu", "popart/sigma", "popart/holdout_ev", "ev/ema")


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


class TrainingSession:
    def __init__(self, cfg: Config, run_dir: Path, write: bool = True, quiet: bool = False, pipeline=None):
        self.cfg, self.run_dir, self.write, self.quiet = cfg, Path(run_dir), write, quiet
        self.exp = build_experiment(cfg, pipeline=pipeline)
        self.env_params = env_params_from_config(cfg, ROLE_TRAIN)
        self.hparams = hparams_from_config(cfg, self.env_params)
        self.spec = spec_from_config(cfg, n_groups=len(self.exp.symbols))
        self.trainer = trainer_for(self.spec)
        self.ckpt = RunCheckpoints(self.run_dir)
        self.update = 0
        self.best_objective = -math.inf
        self.time_ms = {s: np.asarray(t["open_time"], np.int64) for s, t in self.exp.tables.items()}
        if write and pipeline is None:
            self.exp.pipeline.save(self.run_dir / "feature_pipeline.json")
            if not (self.run_dir / "dataset" / "manifest.json").is_file():
                export_dataset(self.run_dir / "dataset", self.exp.tables, self.exp.roles, self.exp.bounds,
                               config_to_dict(cfg)["features"] | {"window_size": cfg.env.window_size},
                               self.exp.data_hashes)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, carry, role: int):
        """Backtest one split of the run's data with the carry's frozen statistics."""
        return backtest(self.trainer.policy_apply, carry.params, carry.obs_stats, self.exp.market, self.env_params,
                        role, self.exp.bars_per_year, time_ms=self.time_ms, deterministic=self.cfg.eval.deterministic)

    def objective(self, carry, role: int = ROLE_VAL) -> tuple[float, dict, dict]:
        """Regime objective on ``role`` plus the synthetic CHOPPY_FLAT / STRONG_TREND markets."""
        return evaluate_with_objective(self.exp, self.trainer.policy_apply, carry.params, carry.obs_stats,
                                       self.env_params, role)

    # ------------------------------------------------------------------ training
    def _log(self, row: dict, tb) -> None:
        if not self.write:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(json_safe(row), sort_keys=True) + "\n")
        if tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and math.isfinite(value) and key not in ("update", "env_steps"):
                    tb.add_scalar(key, value, row["env_steps"])

    def _trim_log(self, last_update: int) -> None:
        """On resume, drop metrics.jsonl lines written after the checkpoint we continue from."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["update"] <= last_update]
        tmp = path.with_name("metrics.jsonl.tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        os.replace(tmp, path)

    def train(self, resume: bool, stop, max_chunks: int | None = None) -> bool:
        cfg, spec = self.cfg, self.spec
        carry = self.trainer.init(jax.random.PRNGKey(cfg.train.seed), self.hparams, self.exp.market)
        if resume:
            carry, meta = self.ckpt.restore("latest", carry)
            self.update = int(meta["update"])
            best = meta.get("best_objective")  # JSON has no -inf: None means "no evaluation yet"
            self.best_objective = -math.inf if best is None else float(best)
            self._trim_log(self.update)
        elif self.write and (self.run_dir / "metrics.jsonl").exists():
            (self.run_dir / "metrics.jsonl").unlink()
        total = cfg.n_updates
        steps_per_update = cfg.batch_size
        eval_chunks = max(1, math.ceil(cfg.train.eval_every / cfg.train.updates_per_chunk))
        tb = None
        if self.write and cfg.output.tensorboard:
            from tensorboardX import SummaryWriter

            tb = SummaryWriter(str(self.run_dir / "tb"))
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
                                     f"'{self.run_dir / 'checkpoints'}'; lower ppo.learning_rate or check the data") from None
                self.update += spec.updates_per_chunk
                chunks_done += 1
                row = {"update": self.update, "env_steps": self.update * steps_per_update}
                row.update(reduce_chunk_metrics(metrics))
                is_last = self.update >= total
                if chunks_done % eval_chunks == 0 or is_last:
                    value, val_eval, _ = self.objective(carry)
                    last_val = {"val/sortino": val_eval["pooled"]["sortino"], "val/sharpe": val_eval["pooled"]["sharpe"],
                                "val/total_return": val_eval["pooled"]["total_return"], "val/objective": value}
                    row.update(last_val)
                    meta = {"update": self.update, "env_steps": row["env_steps"], "objective": value}
                    if value > self.best_objective:
                        self.best_objective = value
                        if self.write:
                            self.ckpt.save_best(self.update, carry, meta)
                    if self.write:
                        self.ckpt.save_latest(self.update, carry, {**meta, "best_objective": self.best_objective})
                    if self.quiet and self.write:
                        print(f"update {self.update}/{total}  val sortino {finite_or_zero(last_val['val/sortino']):.3f}  "
                              f"objective {value:.3f}", flush=True)
                self._log(row, tb)
                dt = time.perf_counter() - t0
                bar.update(spec.updates_per_chunk * steps_per_update)
                bar.set_postfix({"steps/s": f"{spec.updates_per_chunk * steps_per_update / dt:,.0f}",
                                 "val_sortino": f"{finite_or_zero(last_val.get('val/sortino')):.2f}",
                                 "objective": f"{last_val.get('val/objective', float('nan')):.2f}",
                                 "nan_guard": int(row.get("nan_guard_count", 0))}, refresh=False)
        finally:
            bar.close()
            if tb is not None:
                tb.close()
        if self.update < total:
            if self.write:
                self.ckpt.save_latest(self.update, carry, {"update": self.update, "env_steps": self.update * steps_per_update,
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


def write_evaluation(session: TrainingSession, carry, meta: dict, which: str, splits=("val", "test")) -> dict:
    """eval/<split>.json, report.md and plots for a restored checkpoint."""
    from tbjax.report import write_report

    run_dir = session.run_dir
    (run_dir / "eval").mkdir(exist_ok=True)
    evals, series = {}, {}
    for split in splits:
        role = {"val": ROLE_VAL, "test": ROLE_TEST}[split]
        _, result, ser = session.objective(carry, role)
        result["checkpoint"] = {"which": which, **{k: meta.get(k) for k in ("update", "env_steps", "objective")}}
        evals[split], series[split] = result, ser
        tmp = run_dir / "eval" / f"{split}.json.tmp"
        tmp.write_text(json.dumps(json_safe(result), indent=2, sort_keys=True))
        os.replace(tmp, run_dir / "eval" / f"{split}.json")
    history = []
    if (run_dir / "metrics.jsonl").is_file():
        history = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln]
    write_report(run_dir, evals, series, history)
    return evals
