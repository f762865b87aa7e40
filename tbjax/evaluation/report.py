"""The run report: plots of every evaluated split and one readable ``report.md`` page.

Why a page and not only JSON: a trader judging a run wants the strategy beside its baselines
(buy-and-hold, flat) on the same split, the equity and drawdown over time, how often it trades,
and whether training converged, in one place. Numbers come from the eval JSON that
``tbjax.evaluate`` writes (``tbjax.evaluation.metrics`` definitions); this module only formats and draws.

Every file is written to a temporary name in its final folder and moved into place with
``os.replace`` (tbjax.atomic), so an interrupted run never leaves a half-written PNG or page (docs/DESIGN.md
invariant 6). Matplotlib runs headless (Agg) and every figure is closed after saving.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tbjax.evaluation.deployment import deployment_lines
from tbjax.evaluation.population_report import population_section
from tbjax.atomic import write_atomic, write_with  # noqa: E402
from tbjax.errors import InputError  # noqa: E402
from tbjax.evaluation.metrics import SHOWN_METRICS, drawdown_curve, var_cvar  # noqa: E402

MAX_SYMBOLS_PLOTTED = 8  # beyond this a per-symbol panel grid stops being readable
SERIES_KEYS = ("time_ms", "equity", "buy_and_hold_equity", "position", "returns")
HISTORY_KEYS = (
    "episode/return_mean", "ev/weighted", "ev/raw", "cvar/pred", "loss/policy", "loss/value",
    "loss/entropy", "approx_kl", "val/sortino", "val/objective",
)
METRIC_LABELS = {k: label for k, (label, _) in SHOWN_METRICS.items()}  # labels and formats: evaluation/metrics.py
PER_SYMBOL_COLUMNS = ("n_bars", "total_return", "sharpe", "sortino", "max_drawdown", "cvar_5",
                      "turnover", "exposure", "n_trades", "win_rate")
DEFAULT_OBJECTIVE_WEIGHTS = {"w_val": 0.5, "w_choppy": 0.3, "w_trend": 0.2}


def objective_note(weights: dict | None = None) -> str:
    """How the objective was computed, with the run's own weights (eval.w_val, w_choppy, w_trend)."""
    w = {**DEFAULT_OBJECTIVE_WEIGHTS, **(weights or {})}
    return (
        "The objective is the regime score "
        f"{w['w_val']:g}·Sortino(validation) + {w['w_choppy']:g}·Sortino(CHOPPY_FLAT) + "
        f"{w['w_trend']:g}·Sortino(STRONG_TREND) (config keys eval.w_val, eval.w_choppy, eval.w_trend; "
        "docs/ALGORITHMS.md, \"Regime objective\"); higher is better and hyperparameter "
        "search maximises it on validation only. Sortino here is the true Sortino even where fewer "
        "than 20 bars are negative (the seed system then substituted Sharpe; the flag row shows it).")


def format_metric(key: str, value: Any) -> str:
    """One metric as shown in the page: percentages, 2-decimal ratios, integers, ``n/a``."""
    if value is None or isinstance(value, str):
        return "n/a" if value is None else value
    v = float(value)
    if not math.isfinite(v):
        return "n/a"
    kind = SHOWN_METRICS.get(key, ("", "number"))[1]
    if kind == "flag":
        return "yes" if v else "no"
    if kind == "percent":
        return f"{100.0 * v:.2f}%"
    if kind == "count":
        return f"{int(round(v))}"
    if kind == "ratio":
        return f"{v:.2f}"
    return f"{v:.4g}"


def _atomic_write_text(path: Path, text: str) -> None:
    write_atomic(path, text)


def _atomic_savefig(fig: plt.Figure, path: Path) -> None:
    try:
        write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    finally:
        plt.close(fig)


def _checked_series(split: str, symbol: str, s: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    missing = [k for k in SERIES_KEYS if k not in s]
    if missing:
        raise InputError(f"report series[{split!r}][{symbol!r}] lacks {missing}: provide "
                         f"{list(SERIES_KEYS)} per symbol")
    out = {k: np.asarray(s[k]).ravel() for k in SERIES_KEYS}
    lengths = {k: v.size for k, v in out.items()}
    if len(set(lengths.values())) != 1:
        raise InputError(f"report series[{split!r}][{symbol!r}] arrays differ in length {lengths}: "
                         "pass one value per bar in each")
    out["dates"] = out["time_ms"].astype(np.int64).astype("datetime64[ms]")
    return out


def _panel_grid(n: int, title: str) -> tuple[plt.Figure, list[plt.Axes]]:
    fig, axes = plt.subplots(max(n, 1), 1, figsize=(10, 2.4 * max(n, 1) + 0.6), squeeze=False)
    fig.suptitle(title)
    fig.subplots_adjust(hspace=0.45)
    return fig, list(axes[:, 0])


def _date_axis(ax: plt.Axes) -> None:
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _plot_split(plots: Path, split: str, by_symbol: dict[str, dict[str, np.ndarray]]) -> list[str]:
    """The four per-split figures; returns their file names in page order."""
    symbols = list(by_symbol)[:MAX_SYMBOLS_PLOTTED]
    data = {sym: _checked_series(split, sym, by_symbol[sym]) for sym in symbols}
    names = []

    fig, axes = _panel_grid(len(symbols), f"{split}: equity, strategy vs buy-and-hold")
    for ax, sym in zip(axes, symbols):
        d = data[sym]
        ax.plot(d["dates"], d["equity"], label="strategy", lw=1.2)
        ax.plot(d["dates"], d["buy_and_hold_equity"], label="buy & hold", lw=1.0, alpha=0.8)
        ax.set_ylabel(sym)
        ax.legend(loc="upper left", fontsize=8)
        _date_axis(ax)
    names.append(f"{split}_equity.png")
    _atomic_savefig(fig, plots / names[-1])

    fig, axes = _panel_grid(len(symbols), f"{split}: drawdown from the running peak")
    for ax, sym in zip(axes, symbols):
        d = data[sym]
        dd = drawdown_curve(d["equity"]) if d["equity"].size else d["equity"]
        bh = drawdown_curve(d["buy_and_hold_equity"]) if d["equity"].size else dd
        ax.fill_between(d["dates"], -100.0 * dd, 0.0, alpha=0.5, color="tab:blue", label="strategy")
        ax.plot(d["dates"], -100.0 * bh, lw=0.9, ls="--", color="tab:orange", label="buy & hold")
        ax.set_ylabel(f"{sym} DD %")
        ax.legend(loc="lower left", fontsize=8)
        _date_axis(ax)
    names.append(f"{split}_drawdown.png")
    _atomic_savefig(fig, plots / names[-1])

    fig, axes = _panel_grid(len(symbols), f"{split}: position held over each bar")
    for ax, sym in zip(axes, symbols):
        d = data[sym]
        ax.step(d["dates"], d["position"], where="post", lw=0.9)
        ax.axhline(0.0, color="grey", lw=0.6)
        ax.set_ylabel(sym)
        _date_axis(ax)
    names.append(f"{split}_position.png")
    _atomic_savefig(fig, plots / names[-1])

    fig, axes = _panel_grid(len(symbols), f"{split}: per-bar strategy returns")
    for ax, sym in zip(axes, symbols):
        r = data[sym]["returns"].astype(np.float64)
        if r.size == 0:
            ax.text(0.5, 0.5, "no bars", transform=ax.transAxes, ha="center")
            continue
        var, cvar = var_cvar(r)
        ax.hist(r, bins=int(np.clip(np.sqrt(r.size), 10, 80)), alpha=0.7)
        ax.axvline(var, color="tab:orange", label=f"VaR 5% {100 * var:.2f}%")
        ax.axvline(cvar, color="tab:red", ls="--", label=f"CVaR 5% {100 * cvar:.2f}%")
        ax.set_ylabel(sym)
        ax.legend(fontsize=8)
    names.append(f"{split}_returns_hist.png")
    _atomic_savefig(fig, plots / names[-1])
    return names


def _finite_points(history: list[dict], key: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for xi, row in zip(x, history):
        v = row.get(key)
        if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(xi)
            ys.append(float(v))
    return np.asarray(xs), np.asarray(ys)


def _plot_learning_curves(plots: Path, history: list[dict]) -> str | None:
    """A grid of the HISTORY_KEYS that have at least one finite value; None when none do."""
    steps = [row.get("env_steps") for row in history]
    if history and all(isinstance(s, (int, float, np.number)) for s in steps):
        x, xlabel = np.asarray(steps, dtype=np.float64), "env steps"
    else:
        x, xlabel = np.arange(len(history), dtype=np.float64), "chunk"
    curves = {k: _finite_points(history, k, x) for k in HISTORY_KEYS}
    curves = {k: v for k, v in curves.items() if v[1].size}
    if not curves:
        return None
    ncols = min(3, len(curves))
    nrows = math.ceil(len(curves) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False)
    fig.suptitle("learning curves")
    for ax, (key, (xs, ys)) in zip(axes.ravel(), curves.items()):
        ax.plot(xs, ys, marker="." if ys.size < 50 else None, lw=1.0)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
    for ax in axes.ravel()[len(curves):]:
        ax.axis("off")
    fig.tight_layout()
    _atomic_savefig(fig, plots / "learning_curves.png")
    return "learning_curves.png"


def _pooled_of(entry: Any) -> dict:
    """A baseline may be stored as a metrics dict or as {"pooled": ..., "per_symbol": ...}."""
    if not isinstance(entry, dict):
        return {}
    return entry["pooled"] if isinstance(entry.get("pooled"), dict) else entry


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _split_section(split: str, ev: dict, plot_names: list[str]) -> list[str]:
    lines = [f"## Split: {split}", ""]
    pooled = ev.get("pooled") or {}
    baselines = ev.get("baselines") or {}
    bh, flat = _pooled_of(baselines.get("buy_and_hold")), _pooled_of(baselines.get("flat"))
    keys = [k for k in SHOWN_METRICS if k in pooled or k in bh or k in flat]
    if "objective" in ev:
        lines += [f"**Objective:** {format_metric('objective', ev['objective'])}", ""]
    if keys:
        lines += ["Pooled (equal-weight portfolio over the union of bar times):", ""]
        rows = [[METRIC_LABELS.get(k, k), format_metric(k, pooled.get(k)),
                 format_metric(k, bh.get(k)), format_metric(k, flat.get(k))] for k in keys]
        lines += _table(["metric", "strategy", "buy & hold", "flat"], rows) + [""]
    per_symbol = ev.get("per_symbol") or {}
    bh_sym = (baselines.get("buy_and_hold") or {}).get("per_symbol") or {}
    if per_symbol:
        header = ["symbol"] + [METRIC_LABELS[k] for k in PER_SYMBOL_COLUMNS] + ["B&H total return"]
        rows = [[sym] + [format_metric(k, (m or {}).get(k)) for k in PER_SYMBOL_COLUMNS]
                + [format_metric("total_return", (bh_sym.get(sym) or {}).get("total_return"))]
                for sym, m in per_symbol.items()]
        lines += ["Per symbol:", ""] + _table(header, rows) + [""]
    lines += _significance_section(ev.get("is_it_real"))
    extras = {k: v for k, v in ev.items() if k not in ("pooled", "per_symbol", "baselines", "is_it_real",
                                                     "objective", "objective_weights")}
    scalars = _flatten_scalars(extras)
    if scalars:
        lines += ["Other fields:", ""] + [f"- `{k}`: {v}" for k, v in scalars] + [""]
    for name in plot_names:
        lines += [f"![{name[:-4]}](plots/{name})", ""]
    return lines


def _interval(key: str, pair: Any, no_loss: Any = None) -> str:
    """[low, high]; with resamples lacking a loss (``no_loss`` > 0) a +inf (JSON null) end is "unbounded", not n/a."""
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        return "n/a"
    open_end = isinstance(no_loss, (int, float)) and no_loss > 0  # NaN > 0 is False
    low, high = ("unbounded" if open_end and (v is None or v == math.inf) else format_metric(key, v) for v in pair)
    return f"[{low}, {high}]" + (f" ({100 * no_loss:.1f} % of resamples without a losing bar)" if open_end else "")


def _probability(value: Any) -> str:
    return f"{float(value):.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def _significance_section(sig: Any) -> list[str]:
    """The "Is it real?" table of an eval's ``is_it_real`` entry (tbjax.evaluation.significance)."""
    if not isinstance(sig, dict):
        return []
    conf = sig.get("confidence") or 0.95
    level = (sig.get("bootstrap") or {}).get("level") or 0.9
    bars, years = sig.get("min_track_record_bars"), sig.get("min_track_record_years")
    known = isinstance(bars, (int, float)) and math.isfinite(bars) and isinstance(years, (int, float))
    mintrl = f"{bars:,.0f} bars ({years:.2f} years)" if known else "n/a (Sharpe not above 0)"
    rows = [
        ["PSR vs Sharpe 0", _probability(sig.get("psr"))],
        [f"PSR of the return over buy-and-hold (paired; its Sharpe {format_metric('sharpe', sig.get('benchmark_sharpe'))})",
         _probability(sig.get("psr_vs_benchmark"))],
        [f"min track record for {100 * conf:g} %", mintrl],
        [f"Sharpe {100 * level:g} % interval", _interval("sharpe", sig.get("sharpe_ci"))],
        [f"Sortino {100 * level:g} % interval",
         _interval("sortino", sig.get("sortino_ci"), sig.get("sortino_no_loss_share"))],
        [f"max drawdown {100 * level:g} % interval", _interval("max_drawdown", sig.get("max_drawdown_ci"))],
    ]
    title = ("Is it real? (Probabilistic Sharpe Ratio, stationary bootstrap; docs/ALGORITHMS.md, "
             "\"Significance\"):")
    return [title, "", *_table(["check", "value"], rows), "", f"**Reading:** {sig.get('reading', 'n/a')}", ""]


def _flatten_scalars(obj: dict, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    out = []
    for k, v in obj.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and depth < 2:
            out += _flatten_scalars(v, f"{name}.", depth + 1)
        elif isinstance(v, (str, bool)) or v is None:
            out.append((name, str(v)))
        elif isinstance(v, (int, float, np.number)):
            out.append((name, format_metric(str(k), v)))
    return out


def _summary(run_dir: Path, splits: list[str], evals: dict, series: dict,
             history: list[dict]) -> list[str]:
    lines = ["## Run summary", "", f"- run directory: `{run_dir}`"]
    for split in splits:
        by_sym = series.get(split) or {}
        times = [np.asarray(s["time_ms"]) for s in by_sym.values() if np.asarray(s["time_ms"]).size]
        span = ""
        if times:
            lo = np.datetime64(int(min(t.min() for t in times)), "ms")
            hi = np.datetime64(int(max(t.max() for t in times)), "ms")
            span = f", {lo.astype('datetime64[m]')} to {hi.astype('datetime64[m]')} UTC"
        obj = (evals.get(split) or {}).get("objective")
        obj_text = f", objective {format_metric('objective', obj)}" if obj is not None else ""
        lines.append(f"- {split}: {len(by_sym)} symbol(s){span}{obj_text}")
    if history:
        last = history[-1]
        steps = last.get("env_steps")
        lines.append(f"- training: {len(history)} chunk(s)"
                     + (f", {int(steps):,} env steps" if steps is not None else ""))
        for key in ("val/objective", "val/sortino"):
            if last.get(key) is not None:
                lines.append(f"- last `{key}`: {format_metric(key, last[key])}")
    else:
        lines.append("- training: no history recorded")
    return lines + [""]


SELECTION_FILE = "selection_bias.json"  # written by tbjax.hpo into best/ and each pareto/ member's run directory


def _selection_section(run_dir: Path) -> list[str]:
    """How this run was selected, when it is an HPO study's best trial or a Pareto-front member
    (``chosen`` in the file; Deflated Sharpe, PBO)."""
    import json

    path = run_dir / SELECTION_FILE
    if not path.is_file():
        return []
    bias = json.loads(path.read_text())
    return ["## Chosen among trials", "",
            f"This run is {bias.get('chosen', 'the best')} of {bias.get('n_trials')} hyperparameter trials on the "
            f"validation split; Deflated Sharpe Ratio {format_metric('dsr', bias.get('dsr'))}, probability of backtest "
            f"overfitting {format_metric('pbo', bias.get('pbo'))} (docs/ALGORITHMS.md, \"Significance\").", "",
            f"Reading: {bias.get('reading')}", ""]


def write_report(run_dir: Path, evals: dict[str, dict],
                 series: dict[str, dict[str, dict[str, np.ndarray]]],
                 history: list[dict]) -> Path:
    """Write ``run_dir/plots/*.png`` and ``run_dir/report.md``; return the page's path.

    Args:
        run_dir: the run directory (created if missing).
        evals: split -> eval JSON dict ({"pooled", "per_symbol", "baselines", "objective", ...});
            baselines may hold metrics directly or {"pooled", "per_symbol"}.
        series: split -> symbol -> {"time_ms", "equity", "buy_and_hold_equity", "position",
            "returns"}, one value per bar each.
        history: per-chunk metric dicts (metrics.jsonl rows); HISTORY_KEYS present are plotted
            against "env_steps" (chunk index when a row lacks it), absent keys are skipped.

    Raises:
        InputError: a series entry lacks a key or its arrays differ in length.
    """
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    splits = list(evals) + [s for s in series if s not in evals]
    plot_names = {split: _plot_split(plots, split, series[split]) if series.get(split) else []
                  for split in splits}
    curves = _plot_learning_curves(plots, history)

    lines = [f"# tbjax run report: {run_dir.name}", ""]
    lines += deployment_lines(evals)
    lines += _summary(run_dir, splits, evals, series, history)
    lines += population_section(run_dir, evals)  # members and their spread before the ensemble's tables
    for split in splits:
        n_sym = len(series.get(split) or {})
        lines += _split_section(split, evals.get(split) or {}, plot_names[split])
        if n_sym > MAX_SYMBOLS_PLOTTED:
            lines += [f"(plots show the first {MAX_SYMBOLS_PLOTTED} of {n_sym} symbols)", ""]
    lines += ["## Learning curves", ""]
    lines += [f"![learning curves](plots/{curves})", ""] if curves else ["No history to plot.", ""]
    weights = next((ev.get("objective_weights") for ev in evals.values() if ev.get("objective_weights")), None)
    lines += ["## About the objective", "", objective_note(weights), ""]
    lines += _selection_section(run_dir)
    path = run_dir / "report.md"
    _atomic_write_text(path, "\n".join(lines))
    return path
