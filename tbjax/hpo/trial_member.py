"""One trial inside a group of trials trained together: the record every HPO piece reads and writes.

Why its own module: the runner (:mod:`tbjax.hpo.runner`: planning, the compiled programs, the ask
loop), the group's chunk hooks (:mod:`tbjax.hpo.trial_group`), the scores
(:mod:`tbjax.hpo.trial_scores`) and what a finished trial leaves (:mod:`tbjax.hpo.trial_teller`)
all handle this one record, and none of them should import another only to reach it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import optuna

from tbjax.config import Config
from tbjax.run.assembly import Assembly
from tbjax.run.experiment import Experiment
from tbjax.run.member_book import MemberBook


@dataclass
class Member:
    """One trial inside a group: its config, HParams and what has been learned about it.

    ``exp`` is the run's Experiment seen with the trial's config (same data, markets and
    pipeline), so the shared evaluation functions read the trial's eval settings.
    """

    trial: optuna.trial.Trial
    cfg: Config
    assembly: Assembly  # tbjax.run.assembly: the trial's EnvParams, HParams, spec and (shared) trainer
    exp: Experiment
    alive: bool = True
    told: bool = False  # the trial's final state is in the storage
    n_evals: int = 0
    book: MemberBook = field(default_factory=lambda: MemberBook(1))  # its best objective, update and carry
    objective_series: list = field(default_factory=list)
    val_candidates: list = field(default_factory=list)  # hpo.selection.val_candidate of each objective
    lr_applied: list = field(default_factory=list)
    pad: bool = False

    hparams = property(lambda self: self.assembly.hparams)
    env_params = property(lambda self: self.assembly.env_params)
