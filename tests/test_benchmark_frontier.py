"""benchmarks/frontier.py --quick: the frontier, the population and the lone runs it times did the same work,
and its figures are the quotients and sums of what it measured (figures themselves are never asserted)."""

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import frontier as frontier_bench  # noqa: E402


def test_frontier_benchmark_quick(tmp_path):
    out = tmp_path / "frontier.json"
    assert frontier_bench.main(["--quick", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert {"device", "machine", "speed", "sample", "tail", "shared_machine", "commit"} <= set(data)
    speed = data["speed"]
    assert speed["members"] == speed["points"] * speed["seeds"] == len(speed["lone_runs"]) == 4
    # the lone runs are the frontier's members one by one: each point's weight with each seed, and each
    # lone run's best val objective is its frontier member's (a member trains as the lone run does)
    assert [(r["cvar_weight"], r["seed"]) for r in speed["lone_runs"]] == [(0.0, 0), (0.0, 1), (1.0, 0), (1.0, 1)]
    for run in speed["lone_runs"]:
        assert run["val_objective"] == pytest.approx(run["frontier_member_val_objective"], rel=1e-4, abs=1e-6)
    assert speed["sequential_s"] == pytest.approx(sum(r["wall_s"] for r in speed["lone_runs"]))
    assert speed["lone_s"] == speed["lone_runs"][0]["wall_s"]
    assert speed["frontier_s"] == min(speed["frontier_s_runs"])
    assert speed["population_s"] == min(speed["population_s_runs"])
    assert speed["frontier_over_population"] == pytest.approx(speed["frontier_s"] / speed["population_s"])
    assert speed["sequential_over_frontier"] == pytest.approx(speed["sequential_s"] / speed["frontier_s"])
    assert [run["train_seed"] for run in data["sample"]["runs"]] == [0]
    for part in (*data["sample"]["runs"], data["tail"]):
        points = part["points"]
        assert [p["ppo.cvar_weight"] for p in points] == [0.0, 1.0]
        assert [p["point"] for p in points if p["chosen"]] == [part["chosen"]["point"]]
        assert part["chosen"]["point"] in part["val_pareto"]
        assert sorted(part["val_pareto"]) == [p["point"] for p in points if p["val_pareto"]]
        for p in points:
            for key in ("val_total_return", "val_cvar_5", "test_total_return", "test_cvar_5"):
                assert math.isfinite(p[key])
            assert p["val_cvar_5"] <= 0  # a per-bar CVaR 5 % of returns, not a loss
