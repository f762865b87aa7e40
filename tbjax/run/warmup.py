"""The one warm-up rule, applied by ``python -m tbjax.train`` before training and by the
``python -m tbjax.check`` preflight: did prepare drop enough rows for every indicator to settle?"""

from __future__ import annotations

import json
from pathlib import Path

from tbjax.errors import InputError


def read_prepared_warmup(processed_dir: str | Path) -> int | None:
    """``warmup_bars`` that prepare recorded in the processed manifest; None when it is not recorded."""
    path = Path(processed_dir) / "manifest.json"
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("warmup_bars")
        return None if value is None else int(value)
    except (OSError, ValueError, TypeError, AttributeError):
        raise InputError(f"'{path}' is not a readable prepare manifest: re-run python -m tbjax.prepare") from None


def warmup_rule(window_size: int, prepared: int | None) -> tuple[bool, str]:
    """The one warm-up rule, used by the preflight and by ``python -m tbjax.train``: (ok, detail).

    prepare drops the first rows of each symbol so that every indicator in the processed files has
    settled: 2 × the slowest lookback (``tbjax.data.features.warmup_bars``). The observation window
    is not part of the rule: the env decides from ``role_start + window_size - 1`` on, so any window
    is filled from processed rows with settled features; a longer ``env.window_size`` only costs the
    first rows of each split as decision points (and lengthens the default embargo). So a window
    longer than the prepared warm-up is fine, and processed data that dropped fewer rows than the
    indicators need is refused by both commands.
    """
    from tbjax.data import features as feats

    needed = feats.warmup_bars(0)  # the indicators' part of the warm-up, without a window
    if prepared is None:
        return True, (f"warm-up not recorded in the processed manifest (indicators need {needed} bars); "
                      f"env.window_size {window_size} is filled from the processed rows")
    if prepared < needed:
        return False, (f"prepare dropped {prepared} warm-up rows but the indicators need {needed} to settle, so "
                       f"the first rows' features are wrong: re-run python -m tbjax.prepare (it drops {needed})")
    return True, (f"prepare dropped {prepared} warm-up rows (indicators need {needed}); env.window_size "
                  f"{window_size} is filled from the processed rows")


def check_warmup(cfg) -> None:
    """Raise the rule's message as an InputError when ``cfg``'s processed data fails it."""
    ok, detail = warmup_rule(cfg.env.window_size, read_prepared_warmup(cfg.data.processed_dir))
    if not ok:
        raise InputError(detail)
