"""Hyperparameter search: the Optuna trial runner, the search space, studies and storage."""
