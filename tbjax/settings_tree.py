"""Settings as a JAX pytree whose names are the config's keys: traced values as leaves, static ones beside them.

Why not a dataclass with one field per setting: the settings are declared ONCE, in tbjax/config.py
(``traced()`` / ``static()``), and :mod:`tbjax.run.assembly` builds :class:`tbjax.agent.hparams.HParams`
and :class:`tbjax.env.market.EnvParams` from those declarations. A hand-written field per key would
be a second declaration to keep in step (a new traced key used to need one in the config, one in
HParams or EnvParams and a default copied between them). Here a new key needs none: the learner and
the env read ``hp.<key>`` / ``params.<key>`` by the name the user writes.

Traced values (float32 scalars, arrays, or a nested pytree such as HParams' ``env``) are the
children, so ``vmap`` / stacking / ``jit`` see them as leaves and a new value never recompiles;
static values (shapes, modes) are the tree's auxiliary data, hashable, so a new one compiles a new
program. Names are kept sorted, so two trees with the same keys have the same structure whatever
order they were built in (members and trials are stacked leaf by leaf).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import jax


class SettingsTree:
    """Named traced values (pytree children) and named static values (auxiliary data), read as
    attributes. Immutable: :meth:`replace` returns a new tree. Subclasses are registered as pytrees."""

    __slots__ = ("_traced", "_static")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        jax.tree_util.register_pytree_with_keys(cls, cls._flatten_with_keys, cls._unflatten, cls._flatten)

    def __init__(self, traced: Mapping[str, Any], static: Mapping[str, Hashable] | None = None):
        static = dict(static or {})
        both = sorted(set(traced) & set(static))
        if both:
            raise ValueError(f"{type(self).__name__}: {both} given both as traced and as static")
        object.__setattr__(self, "_traced", dict(sorted(traced.items())))
        object.__setattr__(self, "_static", dict(sorted(static.items())))

    def __getattr__(self, name: str) -> Any:
        for part in ("_traced", "_static"):
            values = object.__getattribute__(self, part)
            if name in values:
                return values[name]
        raise AttributeError(f"{type(self).__name__} has no setting {name!r}")

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable: use .replace({name}=...)")

    @property
    def traced(self) -> dict[str, Any]:
        """The traced values by name (a copy)."""
        return dict(self._traced)

    @property
    def static(self) -> dict[str, Hashable]:
        """The static values by name (a copy)."""
        return dict(self._static)

    def replace(self, **changes) -> SettingsTree:
        """A copy with ``changes``, each to an existing setting (traced stays traced, static static)."""
        unknown = sorted(set(changes) - set(self._traced) - set(self._static))
        if unknown:
            raise AttributeError(f"{type(self).__name__} has no setting(s) {unknown}")
        traced = {**self._traced, **{k: v for k, v in changes.items() if k in self._traced}}
        static = {**self._static, **{k: v for k, v in changes.items() if k in self._static}}
        return type(self)(traced, static)

    def __repr__(self) -> str:
        def shown(v):  # a scalar as its value, an array as its shape (a [168] curve is noise here)
            shape = getattr(v, "shape", ())
            return f"{v.dtype}{list(shape)}" if shape else (repr(v.item()) if hasattr(v, "item") else repr(v))

        parts = [f"{k}={shown(v)}" for k, v in {**self._traced, **self._static}.items()]
        return f"{type(self).__name__}({', '.join(parts)})"

    def __reduce__(self):
        return type(self), (self._traced, self._static)

    # ------------------------------------------------------------------ pytree protocol
    def _flatten(self):
        return tuple(self._traced.values()), (tuple(self._traced), tuple(self._static.items()))

    def _flatten_with_keys(self):
        children = tuple((jax.tree_util.GetAttrKey(k), v) for k, v in self._traced.items())
        return children, (tuple(self._traced), tuple(self._static.items()))

    @classmethod
    def _unflatten(cls, aux, children):
        names, static = aux
        tree = object.__new__(cls)
        object.__setattr__(tree, "_traced", dict(zip(names, children)))
        object.__setattr__(tree, "_static", dict(static))
        return tree
