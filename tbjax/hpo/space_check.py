"""Before any trial: every combination of values a search space can hand a trial passes the config rules.

A trial builds its config with :meth:`tbjax.hpo.space.SearchSpace.resolve` (the values written
in, the intended adjustments such as the CVaR floor applied, then ``tbjax.config.validate``). A
value that passes alone can still break a rule with another key's value (``ppo.n_minibatches`` 3
with ``ppo.n_steps × ppo.n_envs`` = 128, ``ppo.lr_min`` above the low end of
``ppo.learning_rate``); such a study used to learn it only when that trial failed. Here the same
resolve runs on the candidates of every key (``ParamSpec.candidates``: every choice, every value
of an int range, both ends of a float range: each config rule is monotone in a float):

* up to ``COMBINATION_LIMIT`` combinations: all of them;
* a larger space: every combination of each 1, 2 and 3 keys (no config rule reads more searched
  keys than three) with the other keys at a combination that passes, at most
  ``CHECK_BUDGET`` checks in all (what is left unchecked still fails its trial, as before).

A breaking combination is refused with one message: the keys whose values break the rule (each
other key reset to the passing combination, the rule still breaks), the values, the rule's own
message and what to change.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

from tbjax.errors import InputError

COMBINATION_LIMIT = 10_000  # every combination checked up to this many (about 50 us each)
CHECK_BUDGET = 10_000  # checks of a larger space, by key sets of 1, 2 and 3 keys (about 0.5 s)


def check_combinations(params, resolve: Callable[[dict[str, Any]], Any]) -> None:
    """Raise one InputError naming ``hpo.space.<key>`` when a combination of ``params``' values
    breaks a rule under ``resolve`` (values → the trial's config; raises InputError)."""
    keys = [p.key for p in params]
    values = [p.candidates() for p in params]

    def error(combo: tuple) -> InputError | None:
        try:
            resolve({k: _plain(v) for k, v in zip(keys, combo)})
        except InputError as exc:
            return exc
        return None

    large = math.prod(len(v) for v in values) > COMBINATION_LIMIT
    good = bad = None
    for combo in itertools.islice(itertools.product(*values), COMBINATION_LIMIT):
        found = error(combo)
        if found is None:
            good = good or combo
        elif bad is None:
            bad = (combo, found)
        if good is not None and (bad is not None or large):
            break
    if bad is None and large:
        bad = next(((c, e) for c in itertools.islice(_around(good, values), CHECK_BUDGET)
                    if (e := error(c)) is not None), None)
    if bad is None:
        return
    combo, found = bad
    if good is not None:  # the smallest set of keys that still breaks it
        for i in range(len(keys)):
            trial = combo[:i] + (good[i],) + combo[i + 1:]
            if trial != combo and (again := error(trial)) is not None:
                combo, found = trial, again
    # keys the rule's message names, as ``ppo.lr_min`` or as ``lr_min`` (shown for context)
    named = [k for k in keys if re.search(rf"(?<![\w.])({re.escape(k)}|{re.escape(k.split('.', 1)[1])})(?!\w)",
                                          str(found))]
    culprits = [k for i, k in enumerate(keys) if good is not None and combo[i] != good[i]] or named or keys
    shown = [k for k in keys if k in culprits or k in named]
    if shown == culprits and len(culprits) == 1:
        what = f"value {_plain(combo[keys.index(culprits[0])])!r}"
    else:
        what = "the combination " + ", ".join(f"{k} = {_plain(combo[keys.index(k)])!r}" for k in shown)
    none = " (no combination of the space passes)" if good is None else ""
    raise InputError(f"{', '.join(f'hpo.space.{k}' for k in culprits)}: {what} breaks a config rule ({found}){none}; "
                     "trials sample every combination of the space, so change the choices or narrow the "
                     "ranges until each one passes")


def _around(good: tuple, values: list[list]) -> Iterator[tuple]:
    """``good`` with the values of 1, then 2, then 3 keys replaced by each of their candidates."""
    for size in (1, 2, 3):
        for idx in itertools.combinations(range(len(values)), size):
            for picked in itertools.product(*(values[i] for i in idx)):
                combo = list(good)
                for i, v in zip(idx, picked):
                    combo[i] = v
                yield tuple(combo)


def _plain(value: Any) -> Any:
    """A candidate as a config value (list choices are stored as tuples)."""
    return list(value) if isinstance(value, tuple) else value
