"""mkdocs hooks of the documentation site (mkdocs.yml, ``hooks:``).

- The notebooks live in ``notebooks/`` at the repository root (where they run
  and are tested); the site shows them as ``notebooks/NAME.ipynb`` pages.
- docs/bad_inputs.md quotes error messages verbatim (its rows are executed
  by tests/test_checks.py); a message such as ``ys['y'][1] = inf`` would read
  as a Markdown reference link, so its brackets are written as entities.
- Pages link to files outside ``docs/`` (``../benchmarks/RESULTS.md``). The
  site is built into ``site/`` next to ``docs/`` with plain ``.html`` file
  names, so the same relative link reaches the file from a built page; mkdocs
  would report it as a link to a missing page, so it is set aside while mkdocs
  checks links and put back afterwards. A link to a file that does not exist
  is still a warning, which fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import logging
import pathlib
import posixpath
import re

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
_OUTSIDE = "jbptt-repo:"
_MESSAGE = re.compile(r'^(\|.*\| (?:`\w+`|exit \d+) )(".+")( \|)$', re.M)
_LINK = re.compile(r"\]\((\.\./[^)\s#]*)(#[^)\s]*)?\)")
log = logging.getLogger("mkdocs.plugins.jbptt")


@event_priority(100)  # before mkdocs-jupyter turns .ipynb files into pages
def on_files(files, config):
    """Add the repository's notebooks as ``notebooks/*.ipynb`` pages."""
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        files.append(
            File(
                f"notebooks/{path.name}",
                src_dir=str(NOTEBOOKS.parent),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files


def _outside_link(page, match: re.Match) -> str:
    link, anchor = match.group(1), match.group(2) or ""
    page_dir = posixpath.dirname(page.file.src_uri)
    target = posixpath.normpath(posixpath.join("docs", page_dir, link))
    if target.startswith("docs/"):
        return match.group(0)  # inside docs/: mkdocs checks it
    if not (ROOT / target).exists():
        log.warning("%s links to %s, which does not exist", page.file.src_uri, target)
    return f"]({_OUTSIDE}{link}{anchor})"


def _literal_brackets(match: re.Match) -> str:
    message = match.group(2).replace("[", "&#91;").replace("]", "&#93;")
    return f"{match.group(1)}{message}{match.group(3)}"


def on_page_markdown(markdown, page, config, files):
    """Set aside links that leave ``docs/`` after checking their targets."""
    if page.file.src_uri == "bad_inputs.md":
        markdown = _MESSAGE.sub(_literal_brackets, markdown)
    return _LINK.sub(lambda m: _outside_link(page, m), markdown)


def on_page_content(html, page, config, files):
    """Put back the links set aside by :func:`on_page_markdown`."""
    return html.replace(f'href="{_OUTSIDE}', 'href="')
