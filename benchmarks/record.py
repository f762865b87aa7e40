"""What every benchmark result records, and how it is written: the machine, the installed versions,
the commit of the measured code, atomic JSON (``write_json``) and the end of a benchmark's ``main()``
(``finish``); also the plain table printed on stdout and the JAX compile time of a measurement."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from tbjax.evaluation.metrics import json_safe

REPO_ROOT = Path(__file__).resolve().parents[1]


def repo_relative(path) -> str:
    """A path as results files and summaries record it: relative to the repository when inside it
    (so a committed result does not name the machine it ran on), else as given."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path)


RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_string() -> str:
    """The JAX device the figures came from, e.g. 'cpu (Intel Xeon ...)' or 'NVIDIA H100'."""
    import jax

    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return f"cpu ({cpu_model()}, {os.cpu_count()} cores)"
    return str(getattr(dev, "device_kind", dev.platform))


def machine_info() -> dict:
    import jax

    return {"cpu_model": cpu_model(), "cpu_cores": os.cpu_count(), "jax_backend": jax.default_backend(),
            "jax_devices": [str(getattr(d, "device_kind", d.platform)) for d in jax.devices()],
            "platform": platform.platform(), "python": platform.python_version()}


def versions(*names: str) -> dict:
    """Installed versions of the named distributions (None when absent)."""
    from importlib import metadata

    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def code_commit(root: str | Path = REPO_ROOT) -> str | None:
    """``git rev-parse HEAD`` of ``root``, ``+dirty`` when tracked files under tbjax/ or benchmarks/ (not
    results/, the outputs) differ from it: figures of uncommitted code never pass for the commit's."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", "tbjax", "benchmarks",
                      ":(exclude)benchmarks/results")
    except (OSError, subprocess.SubprocessError):  # no git, not a repository, no commit yet
        return None
    return sha + ("+dirty" if changed else "")


def write_json(path: str | Path, obj) -> Path:
    """Write ``obj`` as JSON atomically (temp file in the same folder, then rename): a reader never sees
    half a file. NaN/inf become null (``tbjax.evaluation.metrics.json_safe``). A dict gets ``commit``
    (``code_commit``; the caller's own is kept): every result names the code it measured."""
    path = Path(path)
    if isinstance(obj, dict):
        obj = {"commit": code_commit(), **obj}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(json_safe(obj), f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def finish(out: str | Path, result: dict, versions_of: tuple[str, ...] = (), status: int = 0) -> int:
    """The end of a benchmark's ``main()``: ``result`` with the installed versions of the
    ``versions_of`` distributions (key ``versions``, when any are named) written to ``out``
    (``write_json``), then ``wrote <out>`` printed; returns ``status``, the exit status."""
    if versions_of:
        result = {**result, "versions": versions(*versions_of)}
    write_json(out, result)
    print(f"wrote {out}")
    return status


def print_table(rows: list[dict], columns: list[str]) -> None:
    """A plain fixed-width table on stdout."""
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


# --------------------------------------------------------------------------- compile time
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
_compile_intervals: list[tuple[float, float]] = []
_listening = False


def _on_compile_event(event: str, duration: float, **_) -> None:
    if event in COMPILE_EVENTS:
        end = time.perf_counter()
        _compile_intervals.append((end - duration, end))


def track_compiles() -> None:
    """Record JAX's compile-phase durations from now on (idempotent)."""
    global _listening
    if not _listening:
        import jax

        jax.monitoring.register_event_duration_secs_listener(_on_compile_event)
        _listening = True


def compile_seconds(since: float) -> float:
    """Length of the union of JAX compile intervals that end after ``since`` (nested phases once)."""
    spans = sorted((max(a, since), b) for a, b in _compile_intervals if b > since)
    total, cur_a, cur_b = 0.0, None, None
    for a, b in spans:
        if cur_b is None or a > cur_b:
            if cur_b is not None:
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    return total + (cur_b - cur_a if cur_b is not None else 0.0)
