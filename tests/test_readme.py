"""The Python examples of the README and of docs/guide.md run as written."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "guide.md"


def _run_blocks(path: pathlib.Path, minimum: int) -> dict:
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), re.S)
    assert len(blocks) >= minimum, f"{path.name} lost its python examples"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(path), "exec"), namespace)  # noqa: S102
    return namespace


def test_readme_python_blocks_run():
    namespace = _run_blocks(README, 2)
    g_full, g_sweep = namespace["g_full"], namespace["g_sweep"]
    assert (
        g_sweep["cell"]["weight_hh"].shape == (6,) + g_full["cell"]["weight_hh"].shape
    )
    assert len(namespace["hist"].loss) == len(namespace["hist"].length) > 1


def test_guide_python_blocks_run():
    # The examples that moved from the README to docs/guide.md, in its order:
    # Williams–Peng, the character model, nnx/Equinox cells, the protocol
    # (whose block asserts its own result).
    namespace = _run_blocks(GUIDE, 4)
    assert "g_wp" in namespace and "res" in namespace
    assert len(namespace["hist_lm"].loss) == len(namespace["hist_lm"].length) > 1
