"""The compiled program of one group of HPO trials: B trials as one population.

Batched trials (B > 1) stack B trials' HParams on a leading axis and run the population program
of :mod:`tbjax.learner.population` (the same one seeds of a training run and walk-forward folds
use) with the market data shared. B = 1 uses the trainer's own jitted functions, unstacked.
"""

from __future__ import annotations

from tbjax.learner.population import Program, population_program, stack_trees
from tbjax.learner.trainer import Trainer

__all__ = ["Program", "program_for", "stack_trees"]


def program_for(trainer: Trainer, batch: int) -> Program:
    """B trials with shared market data (:func:`tbjax.learner.population.population_program`)."""
    return population_program(trainer, batch, data_axis=None)
