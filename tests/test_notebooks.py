"""Each notebook runs from the repository root and from another folder, on the
public jbptt API only, in its quick form (JBPTT_QUICK=1), and its jupytext
pair (.py and .ipynb) holds the same cells."""

import re
from pathlib import Path

import pytest

from tests.helpers import child_env

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
# What each notebook prints once it ran to the end.
EXPECTED = {
    "artbp_vs_tbptt": ("relative bias", "after training", "full BPTT"),
    "vanishing_exploding": ("top Lyapunov exponent", "TBPTT( 1)"),
    "reproductions": ("θ after", "valid", "test RMSE"),
    "modern_recurrences": ("closed form − measured", "full BPTT"),
}
# How many figures a notebook draws, where the count is checked.
FIGURES = {"modern_recurrences": 2}


def _execute(name: str, cwd: Path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    env = {**child_env(), "JBPTT_QUICK": "1"}  # this checkout's jbptt from anywhere
    env.pop("MPLBACKEND", None)  # the kernel's inline backend emits figures
    resources = {"metadata": {"path": str(cwd)}}
    NotebookClient(nb, timeout=300, kernel_name="python3", resources=resources).execute(
        env=env
    )
    return nb


@pytest.mark.slow
@pytest.mark.parametrize("where", ["root", "tmp"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_executes(name, where, tmp_path):
    nb = _execute(name, ROOT if where == "root" else tmp_path)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images and len(images) == FIGURES.get(name, len(images))
    text = "".join(o.get("text", "") for o in outputs)
    for phrase in EXPECTED[name]:
        assert phrase in text, phrase


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_uses_the_public_api_only(name):
    source = (NOTEBOOKS / f"{name}.py").read_text()
    assert not re.search(r"^\s*(from|import) experiments", source, re.M)
    assert "parse_args" not in source and "sys.path" not in source
    assert not re.search(r"from jbptt\._src|jbptt\._src", source)
    assert not re.search(r"^\s*(from|import) tests", source, re.M)
    assert re.search(r"^(import|from) jbptt\b", source, re.M)


def test_every_notebook_is_tested():
    assert {p.stem for p in NOTEBOOKS.glob("*.ipynb")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_is_paired(name):
    """The .ipynb and its jupytext .py hold the same cells."""
    import jupytext

    nb = jupytext.read(NOTEBOOKS / f"{name}.ipynb")
    py = jupytext.read(NOTEBOOKS / f"{name}.py")
    assert [c.source for c in nb.cells] == [c.source for c in py.cells]
