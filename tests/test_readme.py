"""The README's Python examples run as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    g_full, g_sweep = namespace["g_full"], namespace["g_sweep"]
    assert g_sweep["cell"]["weight_hh"].shape == (6,) + g_full["cell"]["weight_hh"].shape
