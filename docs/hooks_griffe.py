"""A Griffe extension: jbptt's docstrings in Markdown for mkdocstrings.

The docstrings are Google style with a few reST constructs. This turns
``:class:`X``` / ``:func:`X``` (and ``:meth:``, ``:mod:``, ``:attr:``,
``:data:``) into cross-references when ``X`` names a documented public name
(``jbptt.train.Trainer``; ``Trainer`` as seen from the module that writes it,
or the one public name so called), into code when it names something
internal, and ``.. math::`` blocks into display math. A spelled-out public
path (``jbptt.sweep.gradient_fn``) always becomes a cross-reference, so one
that names nothing fails the strict build where its docstring is rendered.
"""

from __future__ import annotations

import re

import griffe

FACADES = (
    "adaptive cells checks data diagnostics estimators forward_mode runs "
    "sharding sweep train truncation"
).split()
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")
_MATH = re.compile(r"^( *)\.\. math::\n\n((?:\1 +\S.*\n|\n)+)", re.M)


def _require_docstring(member: griffe.Object | griffe.Alias) -> None:
    """Warn (which fails the strict build) about a public name without one."""
    docstring = member.docstring
    if docstring is None or not docstring.value.strip():
        griffe.logger.warning(f"{member.path}: a public name without a docstring")


def _public_names(pkg: griffe.Module) -> dict[str, str]:
    """Where each public name is documented: canonical path -> public path.

    A facade re-exports with ``from jbptt._src.x import name as name`` and has
    no ``__all__``; its names without a leading underscore are marked public
    so that mkdocstrings lists them (the old names served by the module's
    ``__getattr__`` are not members at all).
    """
    public = {"jbptt": "jbptt"}
    for facade in [pkg] + [pkg.members[name] for name in FACADES]:
        public.setdefault(facade.path, facade.path)
        for name, member in facade.members.items():
            if name.startswith("_") or (facade is pkg and name in FACADES):
                continue
            member.public = True
            _require_docstring(member)
            path = f"{facade.path}.{name}"
            public[path] = path
            if member.is_alias:
                public.setdefault(member.target_path, path)
    return public


def _canonical(obj: griffe.Object, name: str) -> str | None:
    """``name`` resolved in ``obj``'s scope (its module's imports included)."""
    head, _, rest = name.partition(".")
    if head == "jbptt":
        return name
    try:
        path = obj.resolve(head)
    except (griffe.NameResolutionError, AttributeError):
        return None
    return f"{path}.{rest}" if rest else path


def _documented_member(pkg: griffe.Module, path: str) -> bool:
    try:
        member = pkg.modules_collection.get_member(path)
    except (KeyError, griffe.AliasResolutionError, ValueError):
        return False
    return bool(member.docstring and member.docstring.value.strip())


def _unique(public: dict[str, str], name: str) -> str | None:
    """The public path whose last parts are ``name``, if exactly one is."""
    head, _, rest = name.partition(".")
    found = {p for p in public.values() if p.endswith(f".{head}")}
    if len(found) != 1:
        return None
    (path,) = found
    return f"{path}.{rest}" if rest else path


def _target(pkg, public: dict[str, str], obj, name: str) -> str | None:
    path = _canonical(obj, name) or _unique(public, name)
    if path is None:
        return None
    if path.startswith("jbptt.") and "._" not in path and path == name:
        return public.get(path, path)  # spelled out: must name a documented object
    if path in public:
        return public[path]
    owner, _, attr = path.rpartition(".")
    if owner in public and _documented_member(pkg, path):
        return f"{public[owner]}.{attr}"
    return None


def _role(pkg, public, obj, match: re.Match) -> str:
    short, name = match.group(1), match.group(2).rstrip("()")
    text = name.rsplit(".", 1)[-1] if short else name
    target = _target(pkg, public, obj, name)
    return f"[`{text}`][{target}]" if target else f"`{text}`"


def _math(match: re.Match) -> str:
    body = "\n".join(line.strip() for line in match.group(2).strip().splitlines())
    # reST math aligns its lines with & and \\; MathJax needs an environment
    if "&" in body or "\\\\" in body:
        body = f"\\begin{{aligned}}\n{body}\n\\end{{aligned}}"
    indent = match.group(1)
    lines = ["$$", *body.splitlines(), "$$"]
    return "".join(f"{indent}{line}\n" for line in lines) + "\n"


def _objects(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)


class ReSTRoles(griffe.Extension):
    """Rewrite the reST roles and math of every docstring of the package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        if pkg.path != "jbptt":
            return
        public = _public_names(pkg)
        for obj in _objects(pkg):
            if obj.docstring is None:
                continue
            text = _MATH.sub(_math, obj.docstring.value)
            text = _ROLE.sub(lambda m, o=obj: _role(pkg, public, o, m), text)
            obj.docstring.value = text
