"""Compare two results of one benchmark: which speed figures got worse between an old and a new run.

    python benchmarks/compare.py OLD.json NEW.json [--threshold 0.15] [--write OUT.json]

A speed-up that later erodes unnoticed is lost, so every performance-relevant commit compares
the benchmark before and after it, run on the same machine in one session (docs/PERFORMANCE.md
"Regression guard"), and pastes this table into its message.

Which numbers are compared. Both documents are flattened to ``path -> number``; a number (not
a bool, not null) is a figure when the nearest key on its path that names a kind (its own key
first, then its parents', e.g. ``milestones_s`` for ``milestones_s.0.8``) names one. Keys are
read as words split on ``_``:

- rate, higher is better: the words ``per s`` / ``per sec`` / ``per second`` / ``per h`` /
  ``per hour`` in a row, or a word ``gflops`` or ``speedup`` (``steps_per_s``,
  ``tbjax_steps_per_s_per_policy.mlp``, ``trials_per_hour_b8``, ``update_gflops``);
- duration, lower is better: otherwise a word ``s``, ``sec``, ``seconds`` or ``time``
  (``wall_s``, ``compile_s_vmapped``, ``seconds_per_update``, ``tbjax_seconds``);
- never a figure: a key with a word ``budget``, ``ratio``, ``share`` or ``fraction`` (an input
  limit or a quotient of two figures, whose parts are compared themselves), and lists of plain
  numbers (repeated timings, curves: their summary stands beside them).

Quality figures (Sharpe, fractions), counts and settings carry no such word and are left out.
A figure must be in both files and positive in both (else there is no ratio); the count of the
others is printed below the table.

Rows. A list of dicts is a table: each row is named by its identifying keys (``ID_KEYS``, those
that every row of the list has), e.g. ``results[n_envs=1024,policy=gru].steps_per_s``, so rows
pair up even when the order or the set of rows changed. A list whose rows share no such key, or
whose names repeat, is matched by position (``history[3].seconds``).

Verdict. speed = new / old for a rate and old / new for a duration, so above 1 is faster either
way. A figure is flagged DROP when speed < 1 - threshold: with 0.15, a rate below 85 % of the old
one, a duration above old / 0.85 (17.6 % longer). Exit status 0 when nothing dropped, 1 when a
figure did, 2 when a file is missing or not JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ID_KEYS = ("policy", "n_envs", "members", "batch", "devices", "folds", "workers", "storage", "vec_env", "seed",
           "value", "number", "market", "name")
RATE_UNITS = {"s", "sec", "second", "h", "hour"}   # "per <unit>"
DURATION_WORDS = {"s", "sec", "seconds", "time"}
NEVER_WORDS = {"budget", "ratio", "share", "fraction"}
HEADER_FIELDS = ("commit", "device", "cpu")


class InputError(Exception):
    """A file that cannot be compared; main() prints it as one line and exits 2."""


def kind_of(key: str) -> str | None:
    """'rate', 'duration', 'never' or None (the key says nothing; its parent's key may)."""
    words = key.lower().split("_")
    if NEVER_WORDS & set(words):
        return "never"
    if any(a == "per" and b in RATE_UNITS for a, b in zip(words, words[1:])) or {"gflops", "speedup"} & set(words):
        return "rate"
    if DURATION_WORDS & set(words):
        return "duration"
    return None


def row_names(rows: list[dict]) -> list[str]:
    """Each row's name within its table: ``[k=v,...]`` over the ID_KEYS every row has, or ``[i]``."""
    keys = [k for k in ID_KEYS if all(k in r and not isinstance(r[k], (dict, list)) for r in rows)]
    names = [f"[{','.join(f'{k}={r[k]}' for k in keys)}]" for r in rows] if keys else []
    return names if names and len(set(names)) == len(names) else [f"[{i}]" for i in range(len(rows))]


def figures(doc, path: str = "", kind: str | None = None) -> dict[str, tuple[str, float | None]]:
    """{path: (kind, value)} of every figure in ``doc`` (module docstring); ``kind`` is the one an
    ancestor's key named, used when a key says nothing itself."""
    out = {}
    if isinstance(doc, dict):
        for key, value in doc.items():
            own = kind_of(str(key))
            out.update(figures(value, f"{path}.{key}" if path else str(key), own or kind))
    elif isinstance(doc, list) and doc and all(isinstance(r, dict) for r in doc):
        for name, row in zip(row_names(doc), doc):
            out.update(figures(row, path + name, kind))
    elif kind in ("rate", "duration") and (doc is None or (isinstance(doc, (int, float)) and not isinstance(doc, bool))):
        out[path] = (kind, doc)
    return out


def compare(old, new, threshold: float) -> tuple[list[dict], int]:
    """(table rows in the old file's order, count of figures not compared: in one file only, null or
    not positive)."""
    a, b = figures(old), figures(new)
    rows = []
    for path, (kind, x) in a.items():
        if path not in b:
            continue
        y = b[path][1]
        if x is None or y is None or x <= 0 or y <= 0:
            continue
        speed = y / x if kind == "rate" else x / y
        rows.append({"figure": path, "kind": kind, "old": x, "new": y, "speed": speed, "drop": speed < 1.0 - threshold})
    return rows, len(a.keys() | b.keys()) - len(rows)


def load(path: str):
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None


def header(doc) -> dict:
    """The provenance a reader must check first: the commit measured and the machine it ran on."""
    doc = doc if isinstance(doc, dict) else {}
    info = {k: doc.get(k) for k in HEADER_FIELDS}
    if info["cpu"] is None and isinstance(doc.get("machine"), dict):
        info["cpu"] = doc["machine"].get("cpu_model")
    return info


def _num(v: float) -> str:
    return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"


def print_report(paths: tuple[str, str], heads: tuple[dict, dict], rows: list[dict], skipped: int,
                 threshold: float) -> None:
    for label, path, head in zip(("old", "new"), paths, heads):
        print(f"{label}: {path}  " + "  ".join(f"{k} {head[k] if head[k] is not None else '-'}" for k in HEADER_FIELDS))
    if any(None not in (heads[0][k], heads[1][k]) and heads[0][k] != heads[1][k] for k in ("device", "cpu")):
        print("warning: the two files name different machines; the ratios compare machines, not code")
    print(f"DROP: speed < {1 - threshold:.2f} (speed = new/old for a rate, old/new for a duration)\n")
    cells = [[r["figure"], r["kind"], _num(r["old"]), _num(r["new"]), f"{r['speed']:.3f}", "DROP" if r["drop"] else ""]
             for r in rows]
    columns = ["figure", "kind", "old", "new", "speed", ""]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    for row in [columns] + cells:
        print("  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))).rstrip())
    dropped = sum(r["drop"] for r in rows)
    print(f"\n{len(rows)} figures compared, {dropped} DROP; {skipped} not compared (in one file only, null or not positive)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--threshold", type=float, default=0.15, help="flag a figure whose speed fell by more (default 0.15)")
    ap.add_argument("--write", metavar="OUT.json", help="also save the table as JSON")
    args = ap.parse_args(argv)
    if not 0.0 <= args.threshold < 1.0:
        ap.error("--threshold must be in [0, 1)")
    try:
        old, new = load(args.old), load(args.new)
    except InputError as exc:
        print(f"compare.py: {exc}", file=sys.stderr)
        return 2
    heads = (header(old), header(new))
    rows, skipped = compare(old, new, args.threshold)
    print_report((args.old, args.new), heads, rows, skipped, args.threshold)
    if args.write:
        from benchmarks import common  # imports JAX: only when a file is written

        common.write_json(args.write, {"old": {"path": args.old, **heads[0]}, "new": {"path": args.new, **heads[1]},
                                       "threshold": args.threshold, "figures": rows, "not_compared": skipped,
                                       "dropped": [r["figure"] for r in rows if r["drop"]]})
    return 1 if any(r["drop"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
