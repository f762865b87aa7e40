"""Distributional PPO pieces: networks, normalisation, quantiles, PopArt."""
