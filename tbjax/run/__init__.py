"""One training run: the experiment from the config, the trainer's assembly, the chunk loop and
member book, the session and what it writes, checkpoints (:mod:`tbjax.run.checkpoint`), resume,
populations and the frontier, distributed start-up. Walk-forward is :mod:`tbjax.walkforward`."""
