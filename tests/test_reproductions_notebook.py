"""The reproductions notebook runs top to bottom (quick settings) and its
paired .py and .ipynb hold the same code."""

from pathlib import Path

import jupytext
import nbformat
import pytest

from tests.helpers import reproductions_notebook

NB = Path(__file__).parent.parent / "notebooks" / "reproductions.ipynb"


def test_pair_in_sync():
    ipynb = nbformat.read(NB, as_version=4)
    py = jupytext.read(NB.with_suffix(".py"))
    code = lambda nb: [c.source for c in nb.cells if c.cell_type == "code"]
    assert code(ipynb) == code(py)


@pytest.mark.slow
@pytest.mark.xdist_group("reproductions_notebook")  # one shared run
def test_notebook_executes():
    nb, out = reproductions_notebook()  # one run, shared with the experiments' tests
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    for name in ("influence_balancing", "char_lm", "sunspots"):
        for ext in ("csv", "json", "png"):
            assert (out / f"{name}.{ext}").stat().st_size > 0
