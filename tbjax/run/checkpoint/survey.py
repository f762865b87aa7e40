"""What a run's checkpoint folders hold, read without a template (docs: :mod:`tbjax.run.checkpoint`).

A fresh start needs "latest" empty and a resume needs a usable one (:mod:`tbjax.run.resume`
decides with :meth:`CheckpointSurvey.survey`): each folder's newest usable step, and every damaged
step or unfinished save named for the user's message. A step without a file list (saved by an
older tbjax) cannot be checked against one, so it is read in full once to find out.
"""

from __future__ import annotations

import orbax.checkpoint as ocp

from tbjax.run.checkpoint.files import FILE_LIST, step_damage
from tbjax.run.checkpoint.folders import KINDS, CheckpointFolders
from tbjax.run.checkpoint.quiet import quiet_orbax


class CheckpointSurvey(CheckpointFolders):
    """``survey``: usable steps and problems of both folders, without a carry template."""

    def survey(self) -> tuple[dict[str, int], list[str]]:
        """What the run's checkpoint folders hold, without a template: ({kind: update of its newest
        usable checkpoint}, ["latest/2: carry/... is truncated", ...] for everything else: damaged
        steps, unfinished saves). A fresh start needs the first empty, a resume a "latest".

        A step without a file list (saved by an older tbjax) is read in full to find out.
        """
        usable, problems = {}, []
        for kind in KINDS:
            if not self.paths[kind].is_dir():
                continue
            manager, sequences = self._finalised(kind)
            try:
                for sequence in sequences:
                    why = self._deep_damage(manager, kind, sequence)
                    if why is not None:
                        continue
                    if kind not in usable:
                        try:
                            record = self._read_meta(manager, sequence)
                        except Exception:
                            continue
                        usable[kind] = int(record.get("update", record.get("step", 0)))
            finally:
                self._release(manager)
            for entry in sorted(self.paths[kind].iterdir()):
                if not entry.is_dir():
                    continue
                why = (self._deep_damage(None, kind, int(entry.name)) if entry.name.isdigit()
                       else "unfinished save")
                if why is not None:
                    problems.append(f"{kind}/{entry.name}: {why}")
        return usable, problems

    def _deep_damage(self, manager, kind: str, sequence: int) -> str | None:
        """:func:`step_damage`, plus a full template-free read for a step without a file list."""
        step_dir = self.paths[kind] / str(sequence)
        why = step_damage(step_dir)
        if why is not None or (step_dir / FILE_LIST).is_file():
            return why
        key = (kind, sequence)
        if key not in self._legacy_verdicts:
            own = manager is None
            manager = manager or self._manager(kind, write=False)
            try:
                with quiet_orbax():
                    manager.restore(sequence, args=ocp.args.Composite(carry=ocp.args.StandardRestore()))
                self._legacy_verdicts[key] = None
            except Exception as err:
                self._legacy_verdicts[key] = f"unreadable ({type(err).__name__})"
            finally:
                if own:
                    self._release(manager)
        return self._legacy_verdicts[key]
