"""The learner: the fused rollout + distributional PPO trainer, built once per static signature."""
