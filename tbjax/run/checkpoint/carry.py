"""The trainer carry as orbax stores it: plain arrays, an abstract restore target, a structure fingerprint.

Orbax stores plain arrays, so typed PRNG keys are saved as their uint32 key data
(:func:`storable`) and wrapped back into keys of the template's implementation on restore
(:func:`rewrap`). :func:`abstract` is the restore target (shape, dtype, sharding per leaf);
:func:`structure_fingerprint` is saved with every checkpoint so a restore into a carry of another
structure names the leaf that differs (:func:`describe_mismatch`).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def _is_prng_key(x: Any) -> bool:
    return isinstance(x, (jax.Array, jax.ShapeDtypeStruct)) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def storable(carry):
    """Typed PRNG keys → their uint32 key data (orbax stores plain arrays); other leaves unchanged."""

    def one(x):
        if not _is_prng_key(x):
            return x
        return jax.eval_shape(jax.random.key_data, x) if isinstance(x, jax.ShapeDtypeStruct) else jax.random.key_data(x)

    return jax.tree_util.tree_map(one, carry)


def abstract(template):
    """ShapeDtypeStruct per leaf, with the template's sharding where it has one (a sharded env axis
    restores sharded), else on the default device. ``template`` may be concrete or come from
    ``jax.eval_shape(trainer.init, ...)``, which builds no arrays."""
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def one(x):
        sharding = getattr(x, "sharding", None) or default
        if not sharding.is_fully_addressable:  # several processes: process 0 restores on its own devices
            sharding = default
        if not isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
            x = np.asarray(x)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree_util.tree_map(one, storable(template))


def _key_impl(x):
    if isinstance(x, jax.ShapeDtypeStruct):
        return x.dtype._impl  # the key implementation an abstract key dtype carries (no public accessor)
    return jax.random.key_impl(x)


def rewrap(restored, template):
    """Undo :func:`storable`: key data back into typed keys of the template's implementation."""
    return jax.tree_util.tree_map(
        lambda r, t: jax.random.wrap_key_data(r, impl=_key_impl(t)) if _is_prng_key(t) else r, restored, template)


def structure_fingerprint(carry) -> list[list]:
    """[key path, shape, dtype] of every stored leaf: JSON-able, compared on restore."""
    leaves = jax.tree_util.tree_leaves_with_path(storable(carry))
    out = []
    for path, x in leaves:
        if not hasattr(x, "shape"):
            x = np.asarray(x)
        out.append([jax.tree_util.keystr(path), [int(d) for d in x.shape], str(x.dtype)])
    return out


def describe_mismatch(saved: list, wanted: list) -> str:
    """The first difference between two fingerprints, as a user reads it: a leaf only one side has
    (by key path), else the first leaf whose shape or dtype differs."""
    saved_paths, wanted_paths = [s[0] for s in saved], [w[0] for w in wanted]
    saved_set, wanted_set = set(saved_paths), set(wanted_paths)
    only = {"the checkpoint": [p for p in saved_paths if p not in wanted_set],
            "the current config": [p for p in wanted_paths if p not in saved_set]}
    if any(only.values()):
        parts = [f"it holds {len(saved)} arrays, the current config builds {len(wanted)}"]
        parts += [f"only {side} has {paths[0]}" + (f" (+{len(paths) - 1} more)" if len(paths) > 1 else "")
                  for side, paths in only.items() if paths]
        return "; ".join(parts)
    for s, w in zip(saved, wanted):
        if list(s) != list(w):
            return f"leaf {s[0]} is {s[2]}{tuple(s[1])} there, {w[2]}{tuple(w[1])} now"
    return "the structure differs"
