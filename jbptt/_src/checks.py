"""Value checks: finite data up front, divergence detection during training.

Two kinds of check, kept apart on purpose:

* :func:`check_finite` looks at *values* of concrete arrays, so it runs
  outside ``jit``, once, before a run (experiments and training entry points
  call it on their data). It names the argument and the first bad index.
* During training, values are traced. :func:`finite_flags` computes, inside
  the jitted step, one boolean per leaf (is every entry finite?);
  :func:`select_if` keeps the old state where the new one is not finite
  (``jnp.where``, no Python ``if`` on tracers); and after the step, on the
  concrete flags, :func:`nonfinite_names` says which quantities went bad and
  :func:`handle_nonfinite` applies the policy (``"raise"``, ``"stop"`` or
  ``"skip"``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

tree_util = jax.tree_util

POLICIES = ("raise", "stop", "skip")


def _leaf_name(name: str, path) -> str:
    return name + tree_util.keystr(path)


def check_finite(**named) -> None:
    """Reject NaN or ±inf in concrete data, naming the argument and index.

    Call it outside ``jit`` on the data of a run (``xs``, ``ys``, ...). Each
    keyword is an array or a pytree of arrays; ``None`` is skipped, as are
    integer and boolean leaves (always finite).

    Args:
      **named: arrays (or pytrees) to check, by the name to report.

    Raises:
      ValueError: on the first argument with a non-finite entry: its name
        (with the pytree path), the index of the first bad entry, its value
        and how many entries are bad.
      TypeError: if a leaf is a tracer (this is a value check: call it on
        concrete arrays, outside ``jit``).

    Examples:
      >>> import jax.numpy as jnp
      >>> import jbptt
      >>> jbptt.checks.check_finite(xs=jnp.ones((3, 2)), ys=jnp.zeros(3))
      >>> try:
      ...     jbptt.checks.check_finite(xs=jnp.array([[1.0, 2.0], [jnp.nan, 0.0]]))
      ... except ValueError as err:
      ...     print(str(err)[:45])
      xs contains non-finite values: xs[1, 0] = nan
    """
    for name, tree in named.items():
        if tree is None:
            continue
        for path, leaf in tree_util.tree_flatten_with_path(tree)[0]:
            label = _leaf_name(name, path)
            if isinstance(leaf, jax.core.Tracer):
                raise TypeError(
                    f"check_finite({name}=...) got a traced array for {label}; it "
                    "checks values, so call it on concrete arrays outside jit."
                )
            a = np.asarray(leaf)
            # jnp.issubdtype knows the ml_dtypes floats (bfloat16, float8_*)
            # that NumPy's own type hierarchy does not list as floating.
            if not (
                jnp.issubdtype(a.dtype, jnp.floating)
                or jnp.issubdtype(a.dtype, jnp.complexfloating)
            ):
                continue
            if not np.issubdtype(a.dtype, np.inexact):
                a = a.astype(np.float32)  # exact for every narrower float
            bad = ~np.isfinite(a)
            if bad.any():
                idx = tuple(int(i) for i in np.argwhere(bad)[0])
                where = f"{label}[{', '.join(map(str, idx))}]" if idx else label
                raise ValueError(
                    f"{name} contains non-finite values: {where} = {a[idx]} "
                    f"({int(bad.sum())} of {a.size} entries are NaN or inf). "
                    "Clean or mask the data before training."
                )


def finite_flags(**named) -> dict[str, Any]:
    """Per-leaf "all entries finite" flags, traceable (use inside ``jit``).

    Returns a dict ``name -> pytree of scalar bools`` of the same structure
    as each argument, cheap to return from a jitted step and to inspect
    afterwards with :func:`nonfinite_names`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jbptt._src import checks
      >>> f = jax.jit(lambda g: checks.finite_flags(loss=jnp.sum(g["W"]), grads=g))
      >>> flags = f({"W": jnp.array([1.0, jnp.inf]), "b": jnp.zeros(2)})
      >>> checks.nonfinite_names(flags)
      ["grads['W']", 'loss']
    """
    return {
        name: tree_util.tree_map(lambda a: jnp.all(jnp.isfinite(a)), tree)
        for name, tree in named.items()
    }


def all_finite(flags) -> jax.Array:
    """One scalar bool: every flag of :func:`finite_flags` is true (traceable)."""
    leaves = tree_util.tree_leaves(flags)
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def select_if(ok, new, old):
    """``new`` where the scalar ``ok`` is true, else ``old`` (leafwise, traceable).

    This is how a jitted step skips a non-finite update without a Python
    ``if`` on a traced value.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jbptt._src import checks
      >>> checks.select_if(jnp.array(False), {"a": jnp.ones(2)}, {"a": jnp.zeros(2)})
      {'a': Array([0., 0.], dtype=float64)}
    """
    return tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new, old)


def nonfinite_names(flags) -> list[str]:
    """Names (with pytree paths) of the quantities whose flag is false.

    Runs on concrete flags (after the jitted step returned); names are in
    sorted order of the argument names (as ``jit`` returns dicts).
    """
    out = []
    for name, tree in sorted(flags.items()):
        for path, ok in tree_util.tree_flatten_with_path(tree)[0]:
            if not bool(ok):
                out.append(_leaf_name(name, path))
    return out


class Divergence(NamedTuple):
    """A step at which a training quantity was not finite.

    Attributes:
      step: index of the update (segment) at which it happened.
      quantities: names of the non-finite quantities, e.g.
        ``("loss", "grads['cell']['W']")``.
      action: what was done: ``"raised"``, ``"stopped"`` or ``"skipped"``.
    """

    step: int
    quantities: tuple[str, ...]
    action: str

    def message(self) -> str:
        return (
            f"non-finite {', '.join(self.quantities)} at step {self.step} "
            f"({self.action})"
        )


class DivergenceError(FloatingPointError):
    """Raised by the ``"raise"`` policy; ``.divergence`` holds the details."""

    def __init__(self, divergence: Divergence):
        super().__init__(
            f"Training diverged: non-finite {', '.join(divergence.quantities)} "
            f"at step {divergence.step}. Lower the learning rate, clip gradients, "
            "or pass on_nonfinite='skip' to skip such updates."
        )
        self.divergence = divergence


def check_policy(on_nonfinite: str) -> str:
    """Validate an ``on_nonfinite`` policy name."""
    if on_nonfinite not in POLICIES:
        raise ValueError(
            f"Unknown on_nonfinite {on_nonfinite!r}. It needs to be one of "
            f"{list(POLICIES)}."
        )
    return on_nonfinite


def handle_nonfinite(step: int, flags, on_nonfinite: str) -> Divergence | None:
    """Apply the policy to the concrete flags of one step.

    Returns ``None`` when everything was finite, else a :class:`Divergence`
    (action ``"skipped"`` or ``"stopped"``: the caller keeps going or stops);
    raises :class:`DivergenceError` under ``"raise"``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jbptt._src import checks
      >>> flags = checks.finite_flags(loss=jnp.array(jnp.nan), grads=jnp.ones(2))
      >>> checks.handle_nonfinite(7, flags, "skip")
      Divergence(step=7, quantities=('loss',), action='skipped')
    """
    check_policy(on_nonfinite)
    names = nonfinite_names(flags)
    if not names:
        return None
    action = {"raise": "raised", "stop": "stopped", "skip": "skipped"}[on_nonfinite]
    div = Divergence(int(step), tuple(names), action)
    if on_nonfinite == "raise":
        raise DivergenceError(div)
    return div
