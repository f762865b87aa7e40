#!/usr/bin/env bash
# The throughput benchmarks at accelerator shapes, in ONE command of under 8 minutes on one GPU
# (sized for an NVIDIA H200 with 16 CPU cores; JAX with CUDA, flax, optax, chex, orbax, torch,
# pandas, pyarrow, matplotlib and tqdm installed; no package index reachable).
#
#     bash benchmarks/gpu_wheels.sh    # here, with a package index: wheels into .whl/ (ignored by git)
#     bash benchmarks/gpu.sh           # there, in the checkout with .whl/ in it
#     bash benchmarks/gpu.sh --tiny    # anywhere: the same steps at tiny shapes on the CPU (a minute or two)
#
# Steps, each recorded in the log and the summary, a failure never stopping the next:
#   1. wheels: the wheels of .whl/ whose distribution is missing are installed into
#      $GPU_SH_SITE (default /tmp/site), which goes first on PYTHONPATH, the checkout second
#      (tbjax itself is not installed there); skipped when optuna, tensorboardX, gymnasium and
#      stable-baselines3 already import.
#   2. the benchmarks, each under `timeout` (its own cap, and never past the run's budget,
#      $GPU_SH_BUDGET seconds from the start, 460 by default):
#        env_throughput     env-only steps/s at 4,096 / 16,384 / 65,536 envs
#        train_throughput   fused rollout + PPO update (mlp) at 1,024 / 4,096 / 16,384 envs
#        population         seed populations of 16 and 64 members x 256 envs (train_throughput.py --population)
#        walkforward_speed  K = 4 folds as one program vs one fold at a time, 1,024 envs x 20 updates per fold
#        vs_sb3             tbjax (4,096 / 16,384 envs) vs Stable-Baselines3 PPO on the CPU
#   3. $OUT (default benchmarks/results/gpu): one JSON per benchmark, gpu.log (everything printed)
#      and summary.md (status, wall time and headline figures of each benchmark): 7 files, flat.
#
# --tiny (or GPU_SH_TINY=1): JAX_PLATFORMS=cpu, the scripts' smallest shapes, and XLA's CPU backend
# without its expensive optimisations (compiling dominates a tiny run): checks the pipeline end to
# end; its figures mean nothing. OUT relative to the caller's folder. Exit status: 0 when every
# benchmark ran ok, 1 otherwise.
set -uo pipefail
[ -n "${OUT:-}" ] && case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac
cd "$(dirname "$0")/.."
ROOT=$(pwd)

TINY=${GPU_SH_TINY:-0}
for arg in "$@"; do
  case "$arg" in
    --tiny) TINY=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu.sh: unknown argument '$arg' (only --tiny)" >&2; exit 2 ;;
  esac
done
[ "$TINY" = 1 ] || TINY=0

PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || { echo "gpu.sh: cannot create OUT=$OUT" >&2; exit 2; }
LOG="$OUT/gpu.log"
: > "$LOG"
WORK=$(mktemp -d -t tbjax-gpu-sh.XXXXXX)   # per-step output and the status table; never under $OUT
trap 'rm -rf "$WORK"' EXIT
START=$(date +%s)
if [ "$TINY" = 1 ]; then
  BUDGET=${GPU_SH_BUDGET:-600}
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
else
  BUDGET=${GPU_SH_BUDGET:-460}
  unset JAX_COMPILATION_CACHE_DIR   # the compile figures are of cold compiles, never of a cache's loads
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

log() { echo "[gpu.sh $(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$WORK/status.tsv"; }  # name status s limit detail command

# ---------------------------------------------------------------------------------- 1. wheels
PACKAGES="import optuna, tensorboardX, gymnasium, stable_baselines3"
install_wheels() {
  if "$PY" -c "$PACKAGES" 2>/dev/null; then
    log "wheels: skipped (optuna, tensorboardX, gymnasium and stable-baselines3 already import)"
    record wheels skipped 0 - "already importable" -
    return
  fi
  local t0=$(date +%s) site=${GPU_SH_SITE:-/tmp/site}
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    log "wheels: FAILED: no .whl/*.whl (run 'bash benchmarks/gpu_wheels.sh' where a package index is reachable)"
    record wheels failed 0 - "no .whl/*.whl" -
    return
  fi
  # only the wheels whose distribution this interpreter lacks: a wheel never shadows a package the
  # machine has (e.g. the protobuf its orbax was installed with)
  local needed
  needed=$("$PY" - .whl/*.whl <<'PYEOF'
import sys
from importlib import metadata
from pathlib import Path

for path in sys.argv[1:]:
    try:
        metadata.version(Path(path).name.split("-")[0])
    except metadata.PackageNotFoundError:
        print(path)
PYEOF
)
  if [ -z "$needed" ]; then
    log "wheels: FAILED: every wheel's distribution is present, yet: $("$PY" -c "$PACKAGES" 2>&1 | tail -n 1)"
    record wheels failed $(( $(date +%s) - t0 )) - "packages present but do not import" -
    return
  fi
  log "wheels: installing into $site: $(echo $needed | xargs -n1 basename | tr '\n' ' ')"
  # shellcheck disable=SC2086
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" $needed \
    2>&1 | tee -a "$LOG"
  export PYTHONPATH="$site:$PYTHONPATH"
  local err
  if err=$("$PY" -c "$PACKAGES" 2>&1); then
    log "wheels: ok ($(( $(date +%s) - t0 )) s)"
    record wheels ok $(( $(date +%s) - t0 )) - "$(echo $needed | wc -w) wheels into $site" -
  else
    err=$(echo "$err" | tail -n 1)
    log "wheels: FAILED: the packages still do not import: $err"
    record wheels failed $(( $(date +%s) - t0 )) - "after the install: $err" -
  fi
}

# ------------------------------------------------------------------------------ 2. benchmarks
# run_step NAME CAP SCRIPT ARGS...: the script with --out $OUT/NAME.json under timeout
run_step() {
  local name=$1 cap=$2 script=$3
  shift 3
  local now left limit rc status detail t0
  now=$(date +%s)
  left=$(( START + BUDGET - now ))
  limit=$(( cap < left ? cap : (left > 0 ? left : 0) ))
  local cmd="python benchmarks/$script $* --out \$OUT/$name.json"
  if [ "$limit" -lt 15 ]; then
    log "$name: SKIPPED: ${limit} s of the ${BUDGET} s budget left"
    record "$name" skipped 0 "$limit" "budget spent" "$cmd"
    return
  fi
  log "$name (limit ${limit} s): $cmd"
  t0=$(date +%s)
  timeout -k 10 "$limit" "$PY" "benchmarks/$script" "$@" --out "$OUT/$name.json" 2>&1 | tee -a "$LOG" > "$WORK/$name.out"
  rc=${PIPESTATUS[0]}
  local seconds=$(( $(date +%s) - t0 ))
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    status=timeout; detail="killed after ${limit} s"
  elif [ "$rc" -ne 0 ]; then
    status=failed; detail="exit $rc: $(grep -v '^\s*$' "$WORK/$name.out" | tail -n 1 | tr '\t|' ' /' | cut -c1-300)"
  elif [ ! -s "$OUT/$name.json" ]; then
    status=no-json; detail="exited 0 but wrote no $name.json"
  else
    status=ok; detail=""
  fi
  [ -n "${NOTE:-}" ] && detail="${detail:+$detail; }$NOTE"
  log "$name: $status in ${seconds} s${detail:+ ($detail)}"
  record "$name" "$status" "$seconds" "$limit" "$detail" "$cmd"
}

log "gpu.sh: tiny=$TINY budget=${BUDGET} s OUT=$OUT python=$("$PY" -c 'import sys; print(sys.version.split()[0])')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  >>"$LOG" 2>&1
install_wheels
"$PY" -c "import jax; print('jax', jax.__version__, 'backend', jax.default_backend(), jax.devices())" 2>&1 \
  | tail -n 1 | tee -a "$LOG" > "$WORK/device.txt"

rm -f "$OUT"/{env_throughput,train_throughput,population,walkforward_speed,vs_sb3}.json  # no stale figures
SB3_NOTE=""
"$PY" -c "import importlib.util as u; raise SystemExit(u.find_spec('stable_baselines3') is None)" 2>/dev/null \
  || SB3_NOTE="SB3 side skipped: stable-baselines3 is not installed here"
if [ "$TINY" = 1 ]; then
  run_step env_throughput 120 env_throughput.py --quick --n-envs 32
  run_step train_throughput 120 train_throughput.py --quick --policies mlp --n-envs 16
  run_step population 120 train_throughput.py --quick --population 2 --n-envs 8
  run_step walkforward_speed 150 walkforward_speed.py --quick
  NOTE=$SB3_NOTE run_step vs_sb3 120 vs_sb3.py --tiny
else
  # caps add up to the budget; compiling dominates each (a new program per shape)
  run_step env_throughput 60 env_throughput.py --n-envs 4096 16384 65536
  run_step train_throughput 120 train_throughput.py --policies mlp --n-envs 1024 4096 16384
  run_step population 80 train_throughput.py --population 16 64 --n-envs 256
  run_step walkforward_speed 90 walkforward_speed.py --small --folds 4 --repeats 1 --envs 1024
  # SB3's SubprocVecEnv workers unpickle JAX arrays: without preallocation they do not each claim
  # most of the GPU's memory
  NOTE=$SB3_NOTE XLA_PYTHON_CLIENT_PREALLOCATE=false run_step vs_sb3 100 vs_sb3.py \
    --tbjax-envs 4096,16384 --sb3-steps 32768
fi
[ -n "$SB3_NOTE" ] && log "vs_sb3: $SB3_NOTE"

# ------------------------------------------------------------------------------- 3. summary
"$PY" - "$OUT" "$WORK/status.tsv" "$WORK/device.txt" "$TINY" "$(( $(date +%s) - START ))" "$BUDGET" <<'PYEOF' \
  2>&1 | tee -a "$LOG"
import datetime as dt
import json
import sys
from pathlib import Path

out, status_file, device_file = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
tiny, total_s, budget = sys.argv[4] == "1", int(sys.argv[5]), sys.argv[6]
rows = [line.split("\t") for line in status_file.read_text().splitlines() if line]  # name status s limit detail command


def num(v, digits=3):
    if v is None:
        return "n/a"
    if isinstance(v, float) and abs(v) < 1000:
        return f"{v:.{digits}g}"
    return f"{v:,.0f}"


def headline(name: str, d: dict) -> list[str]:
    res = d.get("results") or []
    if name == "env_throughput":
        return [f"{r['n_envs']:,} envs: {num(r['tbjax_steps_per_s'])} env-steps/s "
                f"({num(r['tbjax_steps_per_s_final_obs'])} with final obs)" for r in res] + \
               [f"Gymnasium twin, one env: {num(res[0]['gym_steps_per_s'])} steps/s" if res else "no rows"]
    if name == "train_throughput":
        return [f"{r['policy']} {r['n_envs']:,} envs: {num(r['steps_per_s'])} env-steps/s, "
                f"{num(r['seconds_per_update'])} s/update, update {num(r['update_gflops'])} GFLOP/s" for r in res]
    if name == "population":
        return [f"{r['members']} members x {r['n_envs']:,} envs ({r['total_envs']:,}): {num(r['steps_per_s'])} "
                f"env-steps/s, {num(r['seconds_per_update'])} s/update, compile {num(r['compile_s'])} s" for r in res]
    if name == "walkforward_speed":
        return [f"K={r['folds']}: one program {num(r['vmapped_s'])} s vs one fold at a time "
                f"{num(r['sequential_s'])} s (x{num(r['ratio'])}; training only x{num(r['ratio_train'])}; "
                f"compile {num(r['compile_s_vmapped'])} vs {num(r['compile_s_sequential'])} s)" for r in res]
    if name == "vs_sb3":
        tb, sb = d["settings"]["tbjax"], d["settings"]["sb3"]
        lines = [f"tbjax {tb['n_envs']:,} envs: {num(d['tbjax_steps_per_s'])} env-steps/s "
                 f"(compile {num(d['tbjax_compile_s'])} s)"]
        if sb:
            lines.append(f"SB3 PPO {sb['vec_env']} x {sb['n_envs']} (CPU): {num(d['sb3_steps_per_s'])} env-steps/s; "
                         f"ratio x{num(d['ratio'])}")
        else:
            lines.append("SB3 side not run: stable-baselines3 not installed")
        return lines
    return []


first = {}
for name, *_ in rows:
    path = out / f"{name}.json"
    if path.is_file():
        first = json.loads(path.read_text())
        break
device = device_file.read_text().strip() if device_file.is_file() else "unknown"
lines = [f"# tbjax GPU benchmarks{' (tiny: a pipeline check on the CPU, figures mean nothing)' if tiny else ''}", "",
         f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; total {total_s} s (budget {budget} s)",
         f"- {device}", f"- commit: {first.get('commit', 'unknown')}", "",
         "| step | status | wall s | limit s | note |", "|---|---|---|---|---|"]
for name, status, seconds, limit, detail, _ in rows:
    lines.append(f"| {name} | {status} | {seconds} | {limit} | {detail.replace('|', '/')} |")
for name, status, seconds, limit, detail, command in rows:
    if name == "wheels":
        continue
    lines += ["", f"## {name}", "", f"`{command}`", ""]
    path = out / f"{name}.json"
    if status != "ok":
        lines.append(f"- **{status}**: {detail} (see gpu.log)" + ("; the rows it finished:" if path.is_file() else ""))
    if path.is_file():
        try:
            lines += [f"- {h}" for h in headline(name, json.loads(path.read_text()))]
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            lines.append(f"- figures unreadable: {type(exc).__name__}: {exc}")
text = "\n".join(lines) + "\n"
(out / "summary.md").write_text(text)
print(text)
PYEOF

failed=$(awk -F'\t' '$1 != "wheels" && $2 != "ok"' "$WORK/status.tsv" | wc -l)
log "done in $(( $(date +%s) - START )) s; $failed benchmark(s) not ok; wrote $OUT/summary.md"
[ "$failed" -eq 0 ]
