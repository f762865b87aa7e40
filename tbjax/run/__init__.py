"""Running an experiment: setup from the config, the chunk loop, checkpoints, distributed start-up."""
