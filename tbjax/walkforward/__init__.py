"""Walk-forward (``python -m tbjax.walkforward``): K folds of one config trained as one program.

A driver beside :mod:`tbjax.hpo`, on the pieces of :mod:`tbjax.run` (assembly, chunk loop, member
book, checkpoints): :mod:`tbjax.walkforward.folds` plans which bars each fold trains, validates and
tests on; :mod:`tbjax.walkforward.driver` builds the folds, trains them (vmapped, or one by one) and
stitches their out-of-sample series; :mod:`tbjax.walkforward.outputs` writes walkforward.json, the
report and each fold's run folder; :mod:`tbjax.walkforward.job` is the command as one library call. The
command is :mod:`tbjax.cli.walkforward`.
"""
