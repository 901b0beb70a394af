"""The documentation site: every public name documented, and a strict build.

The reference (docs/api/*.md) renders each public module with mkdocstrings;
``mkdocs build --strict`` turns every warning (a broken link or
cross-reference, a docstring griffe cannot read) into a failure.
"""

import importlib
import inspect
import pathlib
import re
import subprocess
import sys

import pytest

import jbptt

ROOT = pathlib.Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api"
FACADES = (
    "adaptive cells checks data diagnostics estimators forward_mode plotting runs "
    "sharding sweep train truncation"
).split()
MODULES = ["jbptt"] + [f"jbptt.{name}" for name in FACADES]


def _page(module: str) -> pathlib.Path:
    return API / f"{module.rpartition('.')[2] or module}.md"


def _public(module: str) -> dict:
    """The public namespace: what ``from module import *`` would give."""
    mod = importlib.import_module(module)
    return {n: v for n, v in vars(mod).items() if not n.startswith("_")}


def _deprecated(module: str) -> list[str]:
    return list(getattr(importlib.import_module(module), "_deprecated", {}))


def test_public_modules_are_the_facades():
    modules = {n for n, v in _public("jbptt").items() if inspect.ismodule(v)}
    assert modules == set(FACADES)


@pytest.mark.parametrize("module", MODULES)
def test_every_public_name_has_a_docstring(module):
    mod = importlib.import_module(module)
    assert (mod.__doc__ or "").strip(), module
    missing = [n for n, v in _public(module).items() if not (v.__doc__ or "").strip()]
    assert not missing, f"{module}: public names without a docstring: {missing}"


@pytest.mark.parametrize("module", MODULES)
def test_every_public_module_has_a_reference_page(module):
    page = _page(module).read_text()
    assert re.search(rf"^::: {re.escape(module)}$", page, re.M), page
    assert f"api/{_page(module).name}" in (ROOT / "mkdocs.yml").read_text()


def test_root_page_lists_every_public_name_and_no_module():
    # jbptt's page lists its members (the facades have pages of their own).
    listed = re.findall(r"^ {8}- (\w+)$", _page("jbptt").read_text(), re.M)
    names = {n for n, v in _public("jbptt").items() if not inspect.ismodule(v)}
    assert sorted(listed) == sorted(names)
    assert not set(listed) & set(_deprecated("jbptt"))


def _build(tmp_path) -> pathlib.Path:
    site = tmp_path / "site"
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    return site


def _anchors(html: str) -> set[str]:
    return set(re.findall(r'id="(jbptt[\w.]*)"', html))


def test_strict_build_documents_every_public_name(tmp_path):
    site = _build(tmp_path)
    for module in MODULES:
        html = (site / "api" / _page(module).with_suffix(".html").name).read_text()
        anchors = _anchors(html)
        public = {n for n, v in _public(module).items() if not inspect.ismodule(v)}
        assert {f"{module}.{n}" for n in public} <= anchors, module
        assert not {f"{module}.{n}" for n in _deprecated(module)} & anchors, module
    for notebook in ("artbp_vs_tbptt", "vanishing_exploding", "reproductions"):
        html = (site / "notebooks" / f"{notebook}.html").read_text()
        assert "jp-CodeCell" in html and "jp-MarkdownCell" in html, notebook
    # a reST role in a docstring became a cross-reference to its page
    train = (site / "api" / "train.html").read_text()
    assert 'href="cells.html#jbptt.cells.Cell"' in train
    assert ":class:" not in train and ":func:" not in train


@pytest.mark.e2e
def test_getting_started_blocks_run():
    text = (ROOT / "docs" / "getting_started.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "getting_started.md", "exec"), namespace)  # noqa: S102
    assert namespace["g_sweep"]["cell"]["weight_hh"].shape[0] == 4
    assert len(namespace["hist"].loss) > 1
    assert jbptt.value_and_grad is namespace["jbptt"].value_and_grad
