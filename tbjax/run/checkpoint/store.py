"""The checkpoints of one run directory, as every caller uses them: :class:`RunCheckpoints`.

What it stores and how (two orbax series, save sequence numbers, file lists, fall-back on damage)
is the package's docstring, :mod:`tbjax.run.checkpoint`; each idea is one module of it.
"""

from __future__ import annotations

from tbjax.run.checkpoint.restore import CheckpointRestores
from tbjax.run.checkpoint.save import CheckpointSaves
from tbjax.run.checkpoint.survey import CheckpointSurvey


class RunCheckpoints(CheckpointSaves, CheckpointRestores, CheckpointSurvey):
    """The two checkpoint series of one run directory: ``save_latest`` / ``save_best``
    (:mod:`~tbjax.run.checkpoint.save`), ``restore`` / ``meta`` / ``latest_step`` / ``best_step``
    (:mod:`~tbjax.run.checkpoint.restore`), ``survey`` (:mod:`~tbjax.run.checkpoint.survey`), on the
    folders and orbax managers of :class:`~tbjax.run.checkpoint.folders.CheckpointFolders`.

    Nothing is created or deleted until the first save: readers (``load_policy``, ``evaluate``) can
    open a run that another process is still writing, or a read-only copy of one.
    """
