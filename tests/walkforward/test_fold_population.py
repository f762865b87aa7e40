"""Several seeds per walk-forward fold (``walkforward.seeds``): each fold deploys the ensemble of its
seeds chosen on val, as a population run does (issue 24 §1: "may train a population per fold").

Checks, on a tiny 2-fold, 2-seed plan: seed s of fold k trains exactly as fold k of a walk-forward
with ``train.seed + s`` (the same val objective at the same update: two code paths); the fold's
ensemble is the seeds whose val objective beats flat's, recomputed here from the book; the vmapped
and sequential drivers agree; ``tbjax.evaluate`` on a fold's folder (a population run's format)
reproduces the walk-forward's val and test numbers and decision for that fold's ensemble; a
``train.ensemble_top_k`` above the seeds is one message naming ``walkforward.seeds``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tiny_run_config import synthetic_market
from tbjax.config import load_config
from tbjax.errors import InputError
from tbjax.walkforward import driver as wfm

TINY = [
    "ppo.n_envs=8", "ppo.n_steps=16", "ppo.n_epochs=2", "ppo.n_minibatches=2", "ppo.hidden_sizes=[16, 16]",
    "ppo.num_quantiles=8", "env.episode_len=64", "train.total_env_steps=768", "train.updates_per_chunk=2",
    "train.eval_every=2", "walkforward.folds=2", "eval.w_choppy=0", "eval.w_trend=0",
    "eval.edge_confidence=0", "train.patience=0",
]


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return synthetic_market(tmp_path_factory.mktemp("wf_seeds"), "proc", symbols=2, bars=1500, timeframe="1h",
                            seed=4, signal=0.3)


def config(processed, *extra):
    return load_config("configs/base.yaml", TINY + [f"data.processed_dir={processed}", *extra])


@pytest.fixture(scope="module")
def two_seeds(processed):
    wf = wfm.build_folds(config(processed, "walkforward.seeds=2"))
    wfm.train_vmapped(wf)
    rows, stitched = wfm.fold_results(wf)
    return wf, rows, stitched


def test_seed_s_of_a_fold_trains_as_the_lone_walkforward_with_seed_plus_s(two_seeds, processed):
    wf = two_seeds[0]
    assert wf.n_members == 4 and wf.cfg.train.population == 2
    for s in (0, 1):
        lone = wfm.build_folds(config(processed, f"train.seed={s}", "walkforward.seeds=1"))
        wfm.train_vmapped(lone)
        for k in (0, 1):
            objective, update, *_ = wf.best[k * 2 + s]
            l_objective, l_update, *_ = lone.best[k]
            assert update == l_update and objective == pytest.approx(l_objective, rel=1e-4, abs=1e-5)
            assert wf.book.looks[k * 2 + s] == pytest.approx(lone.book.looks[k], rel=1e-4, abs=1e-5)


def test_each_fold_deploys_the_seeds_that_beat_flat_on_val(two_seeds):
    wf, rows, _ = two_seeds
    for k, row in enumerate(rows):
        objectives = [wf.book.objective[m] for m in (2 * k, 2 * k + 1)]
        beat = sorted((s for s in (0, 1) if math.isfinite(objectives[s]) and objectives[s] > 0),
                      key=lambda s: -objectives[s])
        expected = beat or [int(np.argmax(objectives))]
        assert [s for s, seed in enumerate(row["seeds"]) if seed["in_ensemble"]] == sorted(expected)
        assert wfm.fold_policy(wf, k).chosen == expected
        assert row["best_update"] == wf.book.update[2 * k + expected[0]]
        # the deployment test counted every val evaluation of both seeds
        assert row["deployment"]["looks"] == len(wf.book.looks[2 * k]) + len(wf.book.looks[2 * k + 1])


def test_sequential_driver_agrees(two_seeds, processed):
    wf = two_seeds[0]
    seq = wfm.build_folds(config(processed, "walkforward.seeds=2"))
    wfm.train_sequential(seq)
    for (v_score, v_update, *_), (s_score, s_update, *_) in zip(wf.best, seq.best):
        assert v_update == s_update and v_score == pytest.approx(s_score, rel=1e-4, abs=1e-5)


def test_fold_folder_evaluates_to_the_walkforwards_ensemble_numbers(two_seeds, tmp_path):
    from tbjax.run.reevaluate import evaluate_run
    from tbjax.walkforward.outputs import save_fold_runs, write_outputs

    wf, rows, stitched = two_seeds
    save_fold_runs(tmp_path, wf, rows)
    write_outputs(tmp_path, rows, stitched, "vmapped")
    doc = json.loads((tmp_path / "walkforward.json").read_text())
    for k, row in enumerate(doc["folds"]):
        folder = tmp_path / "folds" / f"fold_{k}"
        evals, _ = evaluate_run(folder, "best", ("val", "test"))
        for split in ("val", "test"):
            ev = evals[split]
            assert ev["population"]["size"] == 2
            assert ev["population"]["selected"] == wfm.fold_policy(wf, k).chosen
            for key in wfm.SUMMARY_KEYS:
                got, want = ev["pooled"].get(key), row[split].get(key)
                assert got == pytest.approx(want, rel=1e-5, abs=1e-7), (k, split, key)
            assert ev["deployed"]["policy"] == row["deployed"]
            assert ev["deployed"]["looks"] == row["deployment"]["looks"]


def test_top_k_above_the_seeds_is_one_message(processed):
    with pytest.raises(InputError, match=r"walkforward\.seeds"):
        wfm.build_folds(config(processed, "walkforward.seeds=2", "train.ensemble_top_k=3"))
