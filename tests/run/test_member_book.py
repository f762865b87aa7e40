"""The member book (tbjax.run.member_book): its host copy survives buffer donation, and its rules.

The donation case: ``train_chunk`` is jitted with ``donate_argnums=0``, so the carry the book was
offered is handed to the next chunk to overwrite. The book's copy must own its memory. What JAX
0.10.2 does on a CPU with a plain ``jax.device_get`` (a zero-copy view) is recorded here as well:
the view pins the buffer and the donation is quietly skipped.
"""

from __future__ import annotations

import ctypes
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tbjax.run.member_book import MemberBook, owned_host_copy

N = 4096


@jax.jit
def _fresh(seed):
    """A carry-like tree in device buffers (a compiled program's outputs, as train_chunk's are)."""
    return {"w": jnp.arange(N, dtype=jnp.float32) + seed, "n": jnp.full((8,), seed, jnp.int32)}


# overwrites its input in place: the output reuses the donated input buffers
_overwrite = jax.jit(lambda c: jax.tree_util.tree_map(lambda x: x * 0 - 1, c), donate_argnums=0)


def _alias(x: jax.Array) -> np.ndarray:
    """A NumPy array over ``x``'s device memory that JAX does not know about: what a copy that
    merely pointed at the device buffer would see after that buffer is reused."""
    ctype = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.int32): ctypes.c_int32}[x.dtype]
    return np.ctypeslib.as_array((ctype * x.size).from_address(x.unsafe_buffer_pointer())).reshape(x.shape)


def _leaves(tree):
    return jax.tree_util.tree_leaves(tree)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="host and device memory are one only on a CPU")
def test_the_books_copy_owns_its_memory_and_survives_the_donated_call():
    carry = _fresh(1)
    expected = [np.array(x) for x in _leaves(carry)]
    pointers = [x.unsafe_buffer_pointer() for x in _leaves(carry)]
    book = MemberBook(1)
    assert book.offer(0, 0.5, 2, carry).improved
    kept = book.carries[0]
    for leaf, pointer in zip(_leaves(kept), pointers):
        assert isinstance(leaf, np.ndarray) and leaf.flags.owndata
        assert leaf.ctypes.data != pointer  # not the device buffer
    aliases = [_alias(x) for x in _leaves(carry)]
    assert not any(np.shares_memory(k, a) for k, a in zip(_leaves(kept), aliases))

    out = _overwrite(carry)  # the next "chunk": donates the carry the book was offered
    jax.block_until_ready(out)
    assert all(x.is_deleted() for x in _leaves(carry)), "the book's copy must not keep the carry from being donated"
    for leaf, want in zip(_leaves(kept), expected):
        np.testing.assert_array_equal(leaf, want)  # the kept copy is unchanged
    reused = [o.unsafe_buffer_pointer() == p for o, p in zip(_leaves(out), pointers)]
    assert any(reused)  # XLA wrote the output into the donated buffer ...
    for alias, want, r in zip(aliases, expected, reused):
        if r:  # ... so a copy that only pointed at it now reads the overwritten values
            assert np.all(alias == -1) and not np.array_equal(alias, want)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="device_get copies off a CPU")
def test_device_get_on_cpu_is_a_view_that_pins_the_donated_buffer():
    """What the book's rule avoids (JAX 0.10.2, CPU): device_get returns read-only views of the
    device buffers; held across a donated call they stop the donation (no leaf is deleted, XLA
    allocates new outputs), so the values stay right but the memory is held twice."""
    carry = _fresh(2)
    pointers = [x.unsafe_buffer_pointer() for x in _leaves(carry)]
    views = jax.device_get(carry)
    for view, pointer in zip(_leaves(views), pointers):
        assert view.ctypes.data == pointer and not view.flags.owndata and not view.flags.writeable
    expected = [np.array(v, copy=True) for v in _leaves(views)]
    out = _overwrite(carry)
    jax.block_until_ready(out)
    assert not any(x.is_deleted() for x in _leaves(carry))  # the donation was skipped
    assert all(o.unsafe_buffer_pointer() not in pointers for o in _leaves(out))
    for view, want in zip(_leaves(views), expected):
        np.testing.assert_array_equal(view, want)


def test_owned_host_copy_of_host_and_device_trees():
    host = {"a": np.arange(3.0)}
    copied = owned_host_copy(host)
    assert not np.shares_memory(copied["a"], host["a"]) and copied["a"].flags.owndata
    device = owned_host_copy(_fresh(3))
    assert all(isinstance(x, np.ndarray) and x.flags.owndata for x in _leaves(device))


def test_offers_keep_each_members_best_and_count_patience():
    book = MemberBook(2, patience=2)
    assert book.offer(0, 1.0, 2, _fresh(0), 0.3) == (True, False)
    assert book.offer(0, float("nan"), 4, _fresh(1)) == (False, False)  # NaN is never a best
    assert book.offer(0, 0.5, 6, _fresh(2)) == (False, True)  # second stale evaluation: stops
    assert book.best(0)[:2] == (1.0, 2) and book.best(0)[3] == 0.3
    np.testing.assert_array_equal(book.best(0)[2]["n"], np.zeros(8, np.int32))  # update 2's carry
    assert book.best(1) is None and book.offer(1, -math.inf, 2, _fresh(5)).improved is False
    assert book.patience.stopped(0) and not book.patience.stopped(1)
    first = MemberBook(1, keep_first=True)  # walk-forward: a fold's first evaluation is kept whatever it is
    assert first.offer(0, -math.inf, 2, _fresh(6)).improved and first.best(0)[1] == 2
    assert not first.offer(0, -math.inf, 4, _fresh(7)).improved
    lone = MemberBook(1)
    assert lone.offer(0, 0.1, 2).improved and lone.carries[0] is None  # no carry: a lone run saves to disk


def test_best_carry_stacks_the_bests_and_fills_in_the_current_carry():
    book = MemberBook(2)
    current = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), _fresh(10), _fresh(20))
    book.offer(1, 0.7, 4, _fresh(7))
    stacked = book.best_carry(current)
    np.testing.assert_array_equal(stacked["n"][:, 0], [10, 7])
    assert all(isinstance(x, np.ndarray) for x in _leaves(stacked))


def test_meta_and_restore_round_trip_and_read_older_checkpoints():
    def val(active_sharpe):  # a val eval's paired test against flat (tbjax.evaluation.backtest)
        return {"vs_baselines": {"flat": {"active_sharpe": active_sharpe, "n_bars": 50}}}

    book = MemberBook(3, patience=3, baseline="flat")
    book.offer(0, 0.4, 2, _fresh(1), 0.2, val(0.05))
    book.offer(2, 0.9, 4, _fresh(2), 0.6, val(0.12))
    book.offer(1, -0.1, 4, _fresh(3), -0.2, val(-0.02))
    book.offer(1, -0.3, 6, _fresh(4), -0.2, val(float("nan")))  # trades as flat does: a look of 0
    meta = book.meta(top_k=None)
    assert meta == {"member_objective": [0.4, -0.1, 0.9], "member_update": [2, 4, 4],
                    "member_val_sortino": [0.2, -0.2, 0.6], "selected": [2, 0], "evals_since_best": [0, 1, 0],
                    "member_looks": [[0.05], [-0.02, 0.0], [0.12]]}
    assert sorted(book.all_looks()) == [-0.02, 0.0, 0.05, 0.12]
    again = MemberBook(3, patience=3, baseline="flat")
    again.restore(meta, best_carry=book.best_carry(None))
    assert again.meta(top_k=None) == meta
    np.testing.assert_array_equal(again.carries[2]["n"], book.carries[2]["n"])
    # a checkpoint written before member_val_sortino and evals_since_best existed, a member never evaluated
    old = MemberBook(3, patience=3)
    old.restore({"member_objective": [0.4, None, 0.9], "member_update": [2, None, 4], "selected": [2, 0]})
    assert old.objective == [0.4, -math.inf, 0.9] and old.val_sortino == [None] * 3
    assert old.patience.since_best == [0, 0, 0]
    # a lone run's checkpoint: its best is "best_objective", its patience count "evals_since_best"
    lone = MemberBook(1, patience=2)
    lone.restore({"update": 6, "best_objective": 0.25, "evals_since_best": [1]})
    assert lone.objective == [0.25] and lone.patience.since_best == [1]
    assert lone.offer(0, 0.2, 8) == (False, True) and lone.offer(0, 0.3, 10).improved
    fresh = MemberBook(1)
    fresh.restore({"update": 2, "best_objective": None})
    assert fresh.objective == [-math.inf]
