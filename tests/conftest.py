"""Shared test setup: the tests mirror the package (tests/data, tests/env, tests/agent, ...), and
the small markets and envs with known answers (env_fixtures.py, known_envs.py) live here at the
root, importable from every folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
