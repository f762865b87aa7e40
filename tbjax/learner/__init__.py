"""The learner: the fused rollout + PPO trainer and the acting loop."""
