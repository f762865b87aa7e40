"""Walk-forward outputs: ``walkforward.json``, ``report.md``, the stitched equity plot, and one run
directory per fold (``folds/fold_<k>``) holding that fold's best checkpoint.

A fold's directory has what :func:`tbjax.load_policy` reads from a training run (``config.yaml``,
``feature_pipeline.json`` fit on that fold's train rows, ``checkpoints/best`` written with orbax by
:class:`~tbjax.run.checkpoint.RunCheckpoints`` with the fold's frozen observation statistics) plus
``fold.json`` with its bar ranges as times, so each fold's policy can be restored and traded on new
bars like any trained run. Its ``config.yaml`` holds THAT fold's split (:func:`fold_config`), so
``python -m tbjax.evaluate --run-dir folds/fold_<k>`` scores exactly the fold's val and test bars and
reproduces the walk-forward's numbers for the fold.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np

from tbjax.atomic import write_atomic, write_with
from tbjax.config import dump_config
from tbjax.data.splits import format_ms
from tbjax.run.checkpoint import RunCheckpoints
from tbjax.run.deployed import DEPLOYMENT_FILE
from tbjax.run.rundir import run_write
from tbjax.walkforward.folds import union_times


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def plot_equity(path: Path, rows: list[dict], stitched: dict) -> None:
    """Stitched equity vs buy-and-hold, a dashed line at each fold's first test bar (atomic write)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = np.asarray(stitched["time_ms"], np.float64) / 86_400_000.0
    fig, ax = plt.subplots(figsize=(9, 4))
    try:
        ax.plot(days, np.cumprod(1.0 + stitched["returns"]), label="agent (stitched out-of-sample)")
        ax.plot(days, np.cumprod(1.0 + stitched["buy_and_hold_returns"]), label="buy and hold")
        for r in rows:
            ax.axvline(r["test_start_ms"] / 86_400_000.0, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("days since 1970-01-01 (dashed: fold starts)")
        ax.set_ylabel("equity")
        ax.legend()
        write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    finally:
        plt.close(fig)


def write_outputs(run_dir: Path, rows: list[dict], stitched: dict, mode: str) -> dict:
    """``walkforward.json``, ``report.md`` and ``walkforward_equity.png`` (atomic writes)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    plot_equity(run_dir / "walkforward_equity.png", rows, stitched)
    doc = _jsonable({"mode": mode, "folds": rows, "stitched": stitched})
    write_atomic(run_dir / "walkforward.json", json.dumps(doc, indent=1))
    write_atomic(run_dir / "report.md", "\n".join(report_lines(rows, stitched, mode)))
    return doc


def _cell(metrics: dict, key: str, digits: int) -> str:
    value = metrics.get(key)
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _when(ms) -> str:
    return format_ms(int(ms))[:10] if ms is not None else "n/a"


def report_lines(rows: list[dict], stitched: dict, mode: str) -> list[str]:
    """report.md: one row per fold (best carry's val objective and Sortino, its test metrics), the
    stitched row, then each fold's test metrics per symbol against buy-and-hold."""
    lines = ["# Walk-forward", "", f"mode: {mode}; best carry per fold by the val objective; each fold's policy "
             "is in folds/fold_<k> (load it with tbjax.load_policy; python -m tbjax.evaluate --run-dir "
             "folds/fold_<k> scores its own val and test bars again)", "",
             ("| fold | test bars (UTC) | deployed | best update | val objective | val Sortino | test Sortino | test return "
              "| test max DD | B&H test Sortino |"), "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        t = r["test"]
        deployed = r.get("deployment") or {}
        who = "agent" if deployed.get("policy", "agent") == "agent" else deployed.get("baseline", "baseline")
        lines.append(f"| {r['fold']} | {_when(r['test_start_ms'])} .. {_when(r['test_end_ms'])} | {who} | {r['best_update']} | "
                     f"{_cell(r, 'val_objective', 3)} | {_cell(r, 'val_sortino', 3)} | {_cell(t, 'sortino', 3)} | "
                     f"{_cell(t, 'total_return', 4)} | {_cell(t, 'max_drawdown', 4)} | "
                     f"{_cell(t.get('buy_and_hold', {}), 'sortino', 3)} |")
    m, b = stitched["metrics"], stitched["buy_and_hold"]
    lines.append(f"| stitched | all | | | | | {_cell(m, 'sortino', 3)} | {_cell(m, 'total_return', 4)} | "
                 f"{_cell(m, 'max_drawdown', 4)} | {_cell(b, 'sortino', 3)} |")
    lines += [""] + [f"fold {r['fold']}: {r['deployment']['reason']}" for r in rows if r.get("deployment")]
    lines += [f"fold {r['fold']}: the agent is the ensemble of seeds "
              f"{', '.join(str(s['seed']) for s in r['seeds'] if s['in_ensemble'])} of "
              f"{', '.join(str(s['seed']) for s in r['seeds'])} (chosen on val, walkforward.seeds)"
              for r in rows if r.get("seeds")]
    lines += ["", (f"buy-and-hold over the same bars: Sortino {_cell(b, 'sortino', 3)}, "
                   f"return {_cell(b, 'total_return', 4)}; flat: return 0"), "",
              f"is it real: {stitched['is_it_real'].get('reading', '')}", "",
              "![stitched equity](walkforward_equity.png)", "", "## Test metrics per symbol", "",
              "| fold | symbol | Sortino | Sharpe | return | max DD | turnover |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        for sym, t in sorted(r["test"].get("per_symbol", {}).items()):
            lines.append(f"| {r['fold']} | {sym} | {_cell(t, 'sortino', 3)} | {_cell(t, 'sharpe', 3)} | "
                         f"{_cell(t, 'total_return', 4)} | {_cell(t, 'max_drawdown', 4)} | {_cell(t, 'turnover', 3)} |")
    return lines + [""]


def iso_ms(ms: int) -> str:
    """Epoch ms as an exact ISO UTC time ('2020-02-11T05:00:00.000Z'), what ``data.*_start`` reads."""
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=int(ms))
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fold_config(wf, fd, union):
    """``wf.cfg`` (one learner's, :func:`build_folds`) with fold ``fd``'s split as ``data.*``.

    Each role's first and last union bar as inclusive times (so a symbol's rows in them are exactly
    :func:`tbjax.walkforward.folds.symbol_ranges`), ``embargo_bars: 0`` (the plan's embargo rows lie between
    the roles already), the walk-forward's ``bars_per_year`` and its symbols: what
    ``tbjax.evaluate`` needs to score the fold's own val and test bars as the walk-forward did."""
    f = fd.fold
    bounds = {f"{role}_{end}": iso_ms(union[i]) for role, (a, b) in (("train", f.train), ("val", f.val), ("test", f.test))
              for end, i in (("start", a), ("end", b - 1))}
    data = dataclasses.replace(wf.cfg.data, symbols=sorted(wf.tables), embargo_bars=0,
                               bars_per_year=float(wf.bars_per_year), **bounds)
    return dataclasses.replace(wf.cfg, data=data)


def fold_checkpoint(wf, k: int) -> tuple[int, object, dict]:
    """(update, carry, meta) of fold ``k``'s "best" checkpoint. One seed: its best carry, in the lone
    format. Several (``walkforward.seeds``): every seed's best carry stacked, with the member book's
    record (objectives, updates, the seeds chosen on val, every val look), the format of a population
    run's "best", so ``tbjax.evaluate`` and ``load_policy`` on the folder deploy the fold's ensemble."""
    from tbjax.walkforward.driver import fold_policy

    pol, members = fold_policy(wf, k), wf.members_of(k)
    book = wf.book
    objective, update, _, val_sortino = book.best(members[pol.chosen[0]])
    meta = {"update": update, "objective": float(objective), "fold": k, "val_sortino": float(val_sortino),
            "member_looks": [book.looks[m] for m in members]}
    if wf.seeds > 1:
        meta.update({"member_objective": [o if np.isfinite(o) else None for o in (book.objective[m] for m in members)],
                     "member_update": [book.update[m] for m in members],
                     "member_val_sortino": [book.val_sortino[m] for m in members], "selected": pol.chosen,
                     "member_seeds": [wf.seed_of(m) for m in members]})
    return update, pol.carry, meta


def save_fold_runs(run_dir: Path, wf, rows: list[dict] | None = None) -> list[Path]:
    """``folds/fold_<k>``: config (the fold's split, :func:`fold_config`), the fold's pipeline, its best
    carry (:func:`fold_checkpoint`), ``fold.json`` and (given the fold ``rows``) its deployment decision."""
    union = union_times(wf.tables)
    out = []
    for k, fd in enumerate(wf.folds):
        update, carry, meta = fold_checkpoint(wf, k)
        folder = run_dir / "folds" / f"fold_{k}"
        with run_write(folder):
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(folder / "config.yaml", dump_config(fold_config(wf, fd, union)))
            fd.pipeline.save(str(folder / "feature_pipeline.json"))
            ranges = {role: [int(union[a]), int(union[b - 1])] for role, (a, b) in
                      zip(("train", "val", "test", "segment"), (fd.fold.train, fd.fold.val, fd.fold.test, fd.fold.segment))}
            write_atomic(folder / "fold.json", json.dumps({"fold": k, "time_ms": ranges, "rows": fd.ranges}, indent=1))
            decision = rows[k].get("deployment") if rows else None
            if decision:  # load_policy on the fold's folder deploys what the fold deployed
                write_atomic(folder / DEPLOYMENT_FILE, json.dumps(_jsonable(decision), indent=1, sort_keys=True))
        with run_write(folder / "checkpoints" / "best"), RunCheckpoints(folder) as ckpt:
            ckpt.save_best(update, carry, meta)
        out.append(folder)
    return out
