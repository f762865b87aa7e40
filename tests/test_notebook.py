"""notebooks/colab_quickstart.ipynb runs top to bottom on CPU (tiny settings: the notebook picks
them from the backend), in a fresh kernel, from a copy of the repository's configs and sample data,
so the Colab walk-through cannot rot."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is in the test extra: pip install -e '.[test]'")
nbclient = pytest.importorskip("nbclient", reason="nbclient is in the test extra: pip install -e '.[test]'")

REPO = Path(__file__).resolve().parents[1]


def test_colab_quickstart_runs_on_cpu(tmp_path, monkeypatch):
    work = tmp_path / "repo"  # the notebook writes runs/ under the repository root: use a copy
    for part in ("configs", "data"):
        shutil.copytree(REPO / part, work / part, ignore=shutil.ignore_patterns("runs"))
    shutil.copy(REPO / "pyproject.toml", work / "pyproject.toml")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(REPO / "notebooks" / "colab_quickstart.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "cpu" in text and "tiny settings" in text and "best trial" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # the report's plots and the study's plots, inline
    assert (work / "runs" / "colab-quickstart" / "report.md").is_file()
    assert (work / "runs" / "colab-hpo" / "hpo_summary.json").is_file()
