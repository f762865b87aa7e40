"""The compiled program of one group of HPO trials: ``hpo.batch`` trials as one population.

A group's trials are the members of the population program of :mod:`tbjax.learner.population`
(the same one seeds of a training run and walk-forward folds use), their HParams stacked on the
member axis and the market data shared. A group of one trial is the trainer's own program,
unstacked (:class:`tbjax.learner.population.Program` decides; the runner never tests the count).
"""

from __future__ import annotations

from tbjax.learner.population import Program, population_program, stack_trees
from tbjax.learner.trainer import Trainer

__all__ = ["Program", "program_for", "stack_trees"]


def program_for(trainer: Trainer, n_members: int) -> Program:
    """``n_members`` trials with shared market data (:func:`tbjax.learner.population.population_program`)."""
    return population_program(trainer, n_members, data_axis=None)
