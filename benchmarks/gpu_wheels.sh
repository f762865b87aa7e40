#!/usr/bin/env bash
# Download, on a machine with a package index, the wheels that benchmarks/gpu.sh installs on a GPU
# machine without one: into .whl/ at the repository root (ignored by git; carried to that machine
# with the checkout). The target is CPython 3.12 on manylinux x86_64; the versions are pinned to
# what this checkout was tested with.
#
#     bash benchmarks/gpu_wheels.sh          # then, on the GPU machine: bash benchmarks/gpu.sh
#
# The GPU machine already has JAX (CUDA), flax, optax, chex, orbax, torch, numpy, pandas, pyarrow,
# matplotlib, tqdm, PyYAML and packaging. What tbjax's benchmarks need beyond those, with every
# dependency from each wheel's Requires-Dist that is not in that list:
#   optuna            -> alembic, sqlalchemy, colorlog (numpy, packaging, tqdm, PyYAML: present)
#   alembic           -> sqlalchemy, Mako, typing-extensions
#   sqlalchemy 2.1    -> typing-extensions (greenlet is an extra since 2.1: optuna does not use it)
#   Mako              -> MarkupSafe
#   tensorboardX      -> protobuf (numpy, packaging: present)
#   gymnasium         -> cloudpickle, typing-extensions, farama-notifications
#   stable-baselines3 -> gymnasium, cloudpickle (numpy, torch, pandas, matplotlib: present)
# gpu.sh installs a wheel only where its distribution is missing on that machine.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
  optuna==5.1.0 alembic==1.20.1 sqlalchemy==2.1.9 colorlog==6.12.0 mako==1.4.3 markupsafe==3.0.4
  tensorboardx==2.6.5 protobuf==7.36.2
  gymnasium==1.4.0 stable-baselines3==2.9.2 cloudpickle==3.1.3 farama-notifications==0.0.6
  typing-extensions==4.16.0
)

mkdir -p .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .whl "${WHEELS[@]}"
count=$(ls .whl/*.whl | wc -l)
if [ "$count" -ne "${#WHEELS[@]}" ]; then
  echo "expected ${#WHEELS[@]} wheels in .whl/, found $count (remove stale ones: rm -r .whl)" >&2
  exit 1
fi
echo "$count wheels in .whl/ ($(du -sh .whl | cut -f1))"
