"""Pure-JAX market environment and its NumPy/Gymnasium twin."""
