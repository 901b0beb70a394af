"""Old public names, forwarded with a warning (optax's ``_src/deprecations.py``).

A public module that dropped or moved a name keeps it working for a release:
its module-level ``__getattr__`` (PEP 562) looks the name up in a table of
:class:`Moved` entries, warns with a ``DeprecationWarning`` naming the new
spelling, and returns the very object the old name gave.

Examples:
  >>> import warnings
  >>> from jbptt._src.deprecations import Moved, forward
  >>> __getattr__ = forward("mymod", {"old": Moved(len, "builtins.len")})
  >>> with warnings.catch_warnings(record=True) as caught:
  ...     warnings.simplefilter("always")
  ...     __getattr__("old") is len, caught[0].category.__name__
  (True, 'DeprecationWarning')
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple


class Moved(NamedTuple):
    """One forwarded name.

    Attributes:
      value: the object the old name gives (unchanged, so old code keeps
        working).
      new: the new spelling, named in the warning (e.g.
        ``"jbptt.estimators.Problem"``), or what to do instead.
    """

    value: Any
    new: str


def message(module: str, name: str, moved: Moved) -> str:
    """The warning for ``module.name``: what to write instead."""
    return (
        f"{module}.{name} is deprecated and will be removed in a future "
        f"release; use {moved.new} instead."
    )


def forward(module: str, table: dict[str, Moved]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving the old names of ``table`` with a
    ``DeprecationWarning``; any other name raises ``AttributeError``."""

    def __getattr__(name: str) -> Any:
        moved = table.get(name)
        if moved is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(message(module, name, moved), DeprecationWarning, stacklevel=2)
        return moved.value

    return __getattr__
