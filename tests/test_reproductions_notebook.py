"""The reproductions notebook runs top to bottom (quick settings) and its
paired .py and .ipynb hold the same code."""

from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

NB = Path(__file__).parent.parent / "notebooks" / "reproductions.ipynb"


def test_pair_in_sync():
    ipynb = nbformat.read(NB, as_version=4)
    py = jupytext.read(NB.with_suffix(".py"))
    code = lambda nb: [c.source for c in nb.cells if c.cell_type == "code"]
    assert code(ipynb) == code(py)


@pytest.mark.slow
def test_notebook_executes():
    nb = nbformat.read(NB, as_version=4)
    resources = {"metadata": {"path": str(NB.parent)}}
    NotebookClient(nb, timeout=600, resources=resources).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
