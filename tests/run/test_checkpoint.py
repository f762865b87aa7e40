"""RunCheckpoints: bit-exact round trips of a real TrainCarry, retention, atomicity, clear errors."""

from __future__ import annotations

import shutil

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from env_fixtures import toy_market
from tbjax.run.checkpoint import RunCheckpoints
from tbjax.errors import InputError
from tbjax.env.protocol import MarketEnv
from tbjax.learner.trainer import make_trainer
from tbjax.run.assembly import make_env_params, make_hparams, make_spec

SPEC = make_spec(n_envs=4, n_steps=8, n_epochs=1, n_minibatches=2, updates_per_chunk=1, total_updates=1,
                 hidden_sizes=(8,), num_quantiles=4, holdout_size=16)


@pytest.fixture(scope="module")
def carry_template():
    """The real TrainCarry structure (params, Adam state, PopArt, RunningStats, env states, rng,
    counters, holdout) of trainer.init on a toy market, as shapes only (traced, not compiled)."""
    data = toy_market(lengths=(200, 160), n_features=2)
    env_params = make_env_params(window_size=8, episode_len=16)
    trainer = make_trainer(SPEC, MarketEnv(), env_params)
    return jax.eval_shape(trainer.init, jax.random.PRNGKey(0), make_hparams(env_params), data)


def scrambled(carry, seed: int):
    """The same structure with every leaf replaced by random bits of its dtype (NaN and odd floats
    included), so a round trip that rounds, casts or drops any leaf is caught."""
    rng = np.random.default_rng(seed)

    def one(x):
        x = np.zeros(x.shape, x.dtype)
        raw = rng.integers(0, 256, size=x.size * x.dtype.itemsize, dtype=np.uint8)
        out = raw.view(x.dtype).reshape(x.shape) if x.dtype != np.bool_ else (raw % 2).astype(bool).reshape(x.shape)
        return jnp.asarray(out)

    return jax.tree_util.tree_map(one, carry)


def assert_bit_exact(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def test_train_carry_round_trips_bit_exactly(tmp_path, carry_template):
    carry = scrambled(carry_template, 1)
    ckpt = RunCheckpoints(tmp_path)
    ckpt.save_latest(30, carry, {"update": 30, "env_steps": 960})
    ckpt.close()
    for template in (carry_template, scrambled(carry_template, 2)):  # abstract or concrete template
        restored, meta = RunCheckpoints(tmp_path).restore("latest", template)  # a fresh reader
        assert_bit_exact(restored, carry)
        assert meta["update"] == 30 and meta["env_steps"] == 960 and meta["step"] == 30
        assert type(restored).__name__ == "TrainCarry"


def test_latest_keeps_two_best_keeps_one_and_steps_follow_saves(tmp_path, carry_template):
    ckpt = RunCheckpoints(tmp_path)
    assert ckpt.latest_step() is None and ckpt.best_step() is None
    for k, step in enumerate((10, 20, 30)):
        ckpt.save_latest(step, scrambled(carry_template, 10 + k), {"update": step})
    ckpt.save_best(20, scrambled(carry_template, 11), {"update": 20, "objective": 1.5})
    ckpt.save_best(30, scrambled(carry_template, 12), {"update": 30, "objective": 2.5})
    assert ckpt.latest_step() == 30 and ckpt.best_step() == 30
    latest_dirs = [p for p in (tmp_path / "checkpoints" / "latest").iterdir() if p.name.isdigit()]
    best_dirs = [p for p in (tmp_path / "checkpoints" / "best").iterdir() if p.name.isdigit()]
    assert len(latest_dirs) == 2 and len(best_dirs) == 1
    best, meta = ckpt.restore("best", carry_template)
    assert_bit_exact(best, scrambled(carry_template, 12))
    assert meta["objective"] == 2.5
    # After a resume from update 20, re-saving update 20 is the newest "latest" (no step collision).
    ckpt.save_latest(20, scrambled(carry_template, 13), {"update": 20})
    assert ckpt.latest_step() == 20
    assert_bit_exact(ckpt.restore("latest", carry_template)[0], scrambled(carry_template, 13))
    with pytest.raises(ValueError, match="objective"):
        ckpt.save_best(40, scrambled(carry_template, 14), {"update": 40})
    ckpt.close()


def test_killed_save_leaves_previous_checkpoint_loadable(tmp_path, carry_template):
    ckpt = RunCheckpoints(tmp_path)
    ckpt.save_latest(10, scrambled(carry_template, 20), {"update": 10})
    ckpt.save_latest(20, scrambled(carry_template, 21), {"update": 20})
    ckpt.close()
    latest = tmp_path / "checkpoints" / "latest"
    # A process killed mid-save leaves orbax's unfinalised tmp folder ...
    tmp_dir = latest / "3.orbax-checkpoint-tmp-1700000000"
    shutil.copytree(latest / "2", tmp_dir)
    (tmp_dir / "commit_success.txt").unlink()
    # ... or, on a file system without atomic rename, a step folder that never got its commit marker.
    partial = latest / "4" / "carry"
    partial.mkdir(parents=True)
    (partial / "manifest.ocdbt").write_bytes(b"\x00" * 10)
    reader = RunCheckpoints(tmp_path)
    assert reader.latest_step() == 20
    restored, meta = reader.restore("latest", carry_template)
    assert_bit_exact(restored, scrambled(carry_template, 21))
    assert meta["update"] == 20
    # The next writer saves past the debris and its checkpoint becomes the latest.
    writer = RunCheckpoints(tmp_path)
    writer.save_latest(30, scrambled(carry_template, 22), {"update": 30})
    assert_bit_exact(writer.restore("latest", carry_template)[0], scrambled(carry_template, 22))
    assert not tmp_dir.exists()  # the writer removed the killed save's tmp folder before it started
    writer.close()


def _remove_array_data(step_dir):
    """Delete the stored array chunks of one checkpoint step (a damaged disk, a partial copy)."""
    for f in (step_dir / "carry").rglob("*"):
        if f.is_file() and "ocdbt" in str(f.relative_to(step_dir / "carry")).split("/")[0]:
            f.unlink()
    for d in (step_dir / "carry").rglob("d"):
        if d.is_dir():
            shutil.rmtree(d)


def test_corrupt_newest_falls_back_to_previous_with_warning(tmp_path, carry_template):
    ckpt = RunCheckpoints(tmp_path)
    ckpt.save_latest(10, scrambled(carry_template, 30), {"update": 10})
    ckpt.save_latest(20, scrambled(carry_template, 31), {"update": 20})
    ckpt.close()
    _remove_array_data(tmp_path / "checkpoints" / "latest" / "2")
    with pytest.warns(UserWarning, match="skipped unreadable"):
        restored, meta = RunCheckpoints(tmp_path).restore("latest", carry_template)
    assert meta["update"] == 10
    assert_bit_exact(restored, scrambled(carry_template, 30))


def test_missing_corrupt_and_mismatched_checkpoints_raise_input_error(tmp_path, carry_template):
    empty = RunCheckpoints(tmp_path / "fresh")
    with pytest.raises(InputError, match=r"no finished 'latest' checkpoint in '.*fresh.*': start without --resume"):
        empty.restore("latest", carry_template)
    assert not (tmp_path / "fresh").exists()  # reading creates nothing
    with pytest.raises(InputError, match="not one of latest, best"):
        empty.restore("newest", carry_template)

    ckpt = RunCheckpoints(tmp_path / "run")
    ckpt.save_best(5, scrambled(carry_template, 40), {"objective": 0.1})
    ckpt.close()
    # A carry built by another config (wider observation) is named leaf by leaf, not mis-restored.
    other = scrambled(carry_template, 41).replace(last_obs=jnp.zeros((4, carry_template.last_obs.shape[1] + 2)))
    with pytest.raises(InputError, match=r"\.last_obs.*use the run's own config.yaml"):
        RunCheckpoints(tmp_path / "run").restore("best", other)
    _remove_array_data(tmp_path / "run" / "checkpoints" / "best" / "1")
    with pytest.raises(InputError, match=r"checkpoint '.*best' is corrupt .*pick another run dir"):
        RunCheckpoints(tmp_path / "run").restore("best", carry_template)


@flax.struct.dataclass
class KeyedCarry:
    key: jax.Array
    counter: jax.Array


def test_typed_prng_keys_round_trip_concrete_and_abstract_templates(tmp_path):
    carry = KeyedCarry(key=jax.random.split(jax.random.key(7), 3), counter=jnp.arange(3, dtype=jnp.int32))
    ckpt = RunCheckpoints(tmp_path)
    ckpt.save_latest(1, carry, {})
    template = KeyedCarry(key=jax.random.split(jax.random.key(0), 3), counter=jnp.zeros(3, jnp.int32))
    for tmpl in (template, jax.eval_shape(lambda: template)):
        restored, _ = ckpt.restore("latest", tmpl)
        assert jax.dtypes.issubdtype(restored.key.dtype, jax.dtypes.prng_key)
        np.testing.assert_array_equal(jax.random.key_data(restored.key), jax.random.key_data(carry.key))
        np.testing.assert_array_equal(restored.counter, carry.counter)
    ckpt.close()


def _truncate_largest_data_file(step_dir):
    data = max((f for f in (step_dir / "carry").rglob("*") if f.is_file() and f.parent.name == "d"),
               key=lambda f: f.stat().st_size)
    size = data.stat().st_size
    data.write_bytes(data.read_bytes()[:10])
    return data.relative_to(step_dir).as_posix(), size


def test_file_list_names_a_truncated_file_and_survey_reports_it(tmp_path, carry_template):
    ckpt = RunCheckpoints(tmp_path)
    ckpt.save_latest(10, scrambled(carry_template, 50), {"update": 10})
    ckpt.save_latest(20, scrambled(carry_template, 51), {"update": 20})
    ckpt.close()
    rel, size = _truncate_largest_data_file(tmp_path / "checkpoints" / "latest" / "2")
    reader = RunCheckpoints(tmp_path)
    assert reader.survey() == ({"latest": 10}, [f"latest/2: {rel} is truncated (10 of {size} bytes)"])
    with pytest.warns(UserWarning, match=rf"latest/2': {rel} is truncated .*restored .*latest/1' \(update 10\)"):
        restored, meta = reader.restore("latest", carry_template)
    assert meta["update"] == 10
    assert_bit_exact(restored, scrambled(carry_template, 50))


def test_failed_save_removes_its_leftovers_and_keeps_earlier_steps(tmp_path, carry_template, monkeypatch):
    import orbax.checkpoint as ocp

    ckpt = RunCheckpoints(tmp_path)
    ckpt.save_latest(10, scrambled(carry_template, 60), {"update": 10})
    real = ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):  # what orbax leaves and raises when the disk fills
        partial = self.directory / f"{step}.orbax-checkpoint-tmp" / "carry.orbax-checkpoint-tmp"
        partial.mkdir(parents=True)
        raise ValueError("RESOURCE_EXHAUSTED: Failed to write 903 bytes: No space left on device "
                         "[os_error_code='28']")

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    with pytest.raises(InputError, match=r"saving checkpoint '.*latest' failed: the disk is full; nothing partial"):
        ckpt.save_latest(20, scrambled(carry_template, 61), {"update": 20})
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "latest").iterdir()) == ["1"]
    monkeypatch.setattr(ocp.CheckpointManager, "save", real)
    ckpt.save_latest(30, scrambled(carry_template, 62), {"update": 30})  # the writer recovers
    assert ckpt.latest_step() == 30
    ckpt.close()


def test_unreadable_step_without_file_list_is_skipped_quietly(tmp_path, carry_template, capfd):
    """A step saved before file lists existed is judged by orbax's own read; its failure is one
    warning, without the tracebacks orbax's background tasks print."""
    ckpt = RunCheckpoints(tmp_path)
    ckpt.save_latest(10, scrambled(carry_template, 70), {"update": 10})
    ckpt.save_latest(20, scrambled(carry_template, 71), {"update": 20})
    ckpt.close()
    newest = tmp_path / "checkpoints" / "latest" / "2"
    (newest / "tbjax_files.json").unlink()
    for f in (newest / "carry").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:10])
    reader = RunCheckpoints(tmp_path)
    usable, problems = reader.survey()
    assert usable == {"latest": 10} and len(problems) == 1 and problems[0].startswith("latest/2: unreadable")
    with pytest.warns(UserWarning, match=r"latest/2': unreadable"):
        _, meta = reader.restore("latest", carry_template)
    assert meta["update"] == 10
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception ignored" not in err and "never retrieved" not in err


def test_structure_mismatch_names_the_leaves_only_one_side_has():
    """A checkpoint from a tbjax whose network layout differs (e.g. two per-bar encoders before they
    became one layer) must say which arrays differ, not only how many."""
    from tbjax.run.checkpoint.carry import describe_mismatch

    saved = [[".params['actor_torso_bars']['kernel']", [19, 2], "float32"],
             [".params['critic_torso_bars']['kernel']", [19, 2], "float32"],
             [".params['head']['bias']", [3], "float32"]]
    wanted = [[".params['bars']['kernel']", [19, 4], "float32"], [".params['head']['bias']", [3], "float32"]]
    text = describe_mismatch(saved, wanted)
    assert text == ("it holds 3 arrays, the current config builds 2; only the checkpoint has "
                    ".params['actor_torso_bars']['kernel'] (+1 more); only the current config has "
                    ".params['bars']['kernel']")
    same_paths = [[".params['head']['bias']", [4], "float32"]]
    assert describe_mismatch(same_paths, [[".params['head']['bias']", [3], "float32"]]) == \
        "leaf .params['head']['bias'] is float32(4,) there, float32(3,) now"


def test_asyncio_echoes_of_a_failed_orbax_read_are_dropped_and_nothing_else():
    """A restore that fails inside orbax leaves gathering futures whose errors asyncio logs at exit
    ("_GatheringFuture exception was never retrieved", ~180 lines after the one-line message). Their
    message names no coroutine, so the filter looks at where the exception was raised."""
    import logging

    from tbjax.run.checkpoint.quiet import _OrbaxTaskEcho

    namespace: dict = {}
    exec(compile("def read():\n    raise ValueError('OUT_OF_RANGE')\n", "/site-packages/orbax/checkpoint/read.py",
                 "exec"), namespace)

    def caught(fn):
        try:
            fn()
        except BaseException as err:  # noqa: BLE001 - the exception itself is the test's input
            return err

    def wrapped():  # orbax re-raises the reader's error from its own frame: the chain is followed
        try:
            namespace["read"]()
        except ValueError as err:
            raise Exception("Encountered error while reading array index") from err

    def record(message, exc):
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None,
                                 (type(exc), exc, exc.__traceback__) if exc else None)

    echo = _OrbaxTaskEcho()
    gathered = "_GatheringFuture exception was never retrieved\nfuture: <_GatheringFuture finished>"
    assert not echo.filter(record(gathered, caught(wrapped)))
    assert not echo.filter(record("Task exception was never retrieved: coro=<run at /x/orbax/y.py>", None))
    assert echo.filter(record(gathered, caught(lambda: 1 / 0)))  # someone else's future: kept
    assert echo.filter(record("a plain asyncio error", None))
