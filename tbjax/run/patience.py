"""Early stopping on validation: a member that has not set a new best val objective for
``train.patience`` evaluations stops training (0 = never).

Why: on real bars the learner memorises its training rows; the val objective peaks early and then
falls while training goes on (docs/TUNING.md), so the rest of the budget buys a worse policy. A
stopped population member is skipped by the compiled program (the dead-member ``lax.cond``), so it
costs nothing; the run ends when every member has stopped. The counts ride in the checkpoint meta,
so ``--resume`` continues them (a run that had stopped stays stopped).
"""

from __future__ import annotations


class Patience:
    """Evaluations since each member's last new best val objective."""

    def __init__(self, size: int, patience: int):
        self.patience = int(patience)
        self.since_best = [0] * size

    def record(self, i: int, improved: bool) -> bool:
        """Count one evaluation of member ``i``; True when this one made it stop."""
        was = self.stopped(i)
        self.since_best[i] = 0 if improved else self.since_best[i] + 1
        return self.stopped(i) and not was

    def stopped(self, i: int) -> bool:
        return self.patience > 0 and self.since_best[i] >= self.patience

    def n_stopped(self) -> int:
        return sum(self.stopped(i) for i in range(len(self.since_best)))

    def all_stopped(self, excluded=()) -> bool:
        """Every member stopped (``excluded``: members that ended otherwise, e.g. diverged)."""
        rest = [i for i in range(len(self.since_best)) if i not in excluded]
        return bool(rest) and all(self.stopped(i) for i in rest)

    def meta(self) -> dict:
        return {"evals_since_best": list(self.since_best)}

    def restore(self, meta: dict) -> None:
        saved = list(meta.get("evals_since_best") or [])
        self.since_best = [int(v) for v in saved[:len(self.since_best)]] + [0] * (len(self.since_best) - len(saved))
