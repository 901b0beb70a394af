"""notebooks/modern_recurrences.ipynb runs top to bottom in its quick form,
from the repository root and from another working directory, with jbptt's
public API only; its paired .py holds the same cells."""

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NB = ROOT / "notebooks" / "modern_recurrences.ipynb"


def test_notebook_is_paired():
    import jupytext

    nb, py = jupytext.read(NB), jupytext.read(NB.with_suffix(".py"))
    assert [c.source for c in nb.cells] == [c.source for c in py.cells]


def test_notebook_uses_the_public_api_only():
    imports = [
        line.split()[1]
        for line in NB.with_suffix(".py").read_text().splitlines()
        if line.startswith(("import ", "from "))
    ]
    assert imports and "jbptt" in imports
    assert not [m for m in imports if m.startswith(("experiments", "tests"))]
    assert not [m for m in imports if m.startswith("jbptt._")]


@pytest.mark.slow
def test_notebook_executes_from_the_root_and_elsewhere(monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.delenv("MPLBACKEND", raising=False)  # the inline backend
    cache = os.environ.get("JBPTT_TEST_CACHE", "")
    env = {
        **os.environ,
        "JBPTT_NOTEBOOK_QUICK": "1",
        "PYTHONPATH": str(ROOT),  # this checkout's jbptt, wherever the kernel runs
    }
    if cache:  # the second run loads the first one's compiled programs
        env["JAX_COMPILATION_CACHE_DIR"] = cache
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    with tempfile.TemporaryDirectory() as elsewhere:
        for cwd in (elsewhere, str(ROOT)):
            nb = nbformat.read(NB, as_version=4)
            client = NotebookClient(
                nb, timeout=600, resources={"metadata": {"path": cwd}}
            )
            client.execute(env=env)
            outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
            assert not [o for o in outputs if o.output_type == "error"], cwd
            images = [o for o in outputs if "image/png" in o.get("data", {})]
            assert len(images) == 2, cwd
            text = "".join(o.get("text", "") for o in outputs)
            assert "closed form − measured" in text and "full BPTT" in text
