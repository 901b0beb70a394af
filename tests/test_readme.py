"""The README's Python examples run as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2, "README lost its python examples"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    g_full, g_sweep = namespace["g_full"], namespace["g_sweep"]
    assert (
        g_sweep["cell"]["weight_hh"].shape == (6,) + g_full["cell"]["weight_hh"].shape
    )
    assert len(namespace["hist"].loss) == len(namespace["hist"].length) > 1
