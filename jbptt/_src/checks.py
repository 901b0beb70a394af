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
        for label, a in _concrete(name, tree, "check_finite"):
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
                idx, where = _first(label, bad)
                raise ValueError(
                    f"{name} contains non-finite values: {where} = {a[idx]} "
                    f"({int(bad.sum())} of {a.size} entries are NaN or inf). "
                    "Clean or mask the data before training."
                )


def _host_value(leaf) -> np.ndarray:
    """``leaf`` whole, as a NumPy array. A ``jax.Array`` split over the
    devices of several processes (``jax.distributed``: a batch placed by
    :func:`jbptt.sharding.split_batch`, the state a data-parallel run
    returns) is gathered first; every process calls this on the same data,
    so every process gets the whole array and the same verdict."""
    if (
        isinstance(leaf, jax.Array)
        and not leaf.is_fully_addressable
        and not leaf.is_fully_replicated
    ):
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    return np.asarray(leaf)


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


# ------------------------------------------------ token ids and labels ---


def _concrete(name: str, tree, fn: str):
    """``tree``'s leaves as NumPy arrays; a tracer is a TypeError."""
    out = []
    for path, leaf in tree_util.tree_flatten_with_path(tree)[0]:
        label = _leaf_name(name, path)
        if isinstance(leaf, jax.core.Tracer):
            raise TypeError(
                f"{fn}({name}=...) got a traced array for {label}; it checks "
                "values, so call it on concrete arrays outside jit."
            )
        out.append((label, _host_value(leaf)))
    return out


def _first(label: str, bad: np.ndarray) -> tuple[tuple[int, ...], str]:
    """The first bad entry's index and its name, e.g. ``xs[1, 0]``."""
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    return idx, f"{label}[{', '.join(map(str, idx))}]" if idx else label


def _check_id_range(label: str, a: np.ndarray, size: int, what: str) -> None:
    # Ids index a table of `size` rows: valid ids are 0 ≤ id < size, whole.
    bad = (a < 0) | (a >= size) | (a != np.floor(a))
    if not bad.any():
        return
    idx, where = _first(label, bad)
    raise ValueError(
        f"{label} must hold {what} in [0, {size}), got {where} = {a[idx]} "
        f"({int(bad.sum())} of {a.size} entries are out of range). Under jit "
        "such an id gives NaN; fix or mask the data."
    )


def check_tokens(
    tokens, vocab_size, name: str = "xs", *, what: str = "token ids"
) -> None:
    """Reject integer ids outside ``[0, vocab_size)``, naming the argument.

    The host-side check of token ids (the ``xs`` of a model built with
    :func:`jbptt.readout` ``(..., vocab_size=V)``) and of cross-entropy class
    labels (the ``ys`` of ``loss="xent"``, with ``vocab_size`` the number of
    classes). Call it outside ``jit`` on concrete data; inside ``jit`` an
    out-of-range id is not refused but gives NaN (see :func:`jbptt.readout`).

    Args:
      tokens: an integer array (or a pytree of them).
      vocab_size: the number of valid ids (a positive int).
      name: the argument's name, for the message.
      what: what the ids are, for the message (e.g. ``"class labels"``).

    Raises:
      TypeError: ``tokens`` is not of an integer dtype (a float such as
        ``1.7`` is not an id), or is traced.
      ValueError: an id is negative or ≥ ``vocab_size``; the message gives
        the first bad index and value.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jbptt
      >>> jbptt.checks.check_tokens(jnp.array([[0, 4], [2, 1]]), 5)
      >>> try:
      ...     jbptt.checks.check_tokens(jnp.array([[0, 5], [2, 1]]), 5)
      ... except ValueError as err:
      ...     print(str(err)[:50])
      xs must hold token ids in [0, 5), got xs[0, 1] = 5
    """
    from jbptt._src import validation

    size = validation.positive_int("vocab_size", vocab_size)
    for label, a in _concrete(name, tokens, "check_tokens"):
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(
                f"{label} must hold integer token ids or class labels, got dtype "
                f"{a.dtype}; convert whole-valued floats with .astype(jnp.int32)."
            )
        _check_id_range(label, a, size, what)


def check_data(cell, loss_fn, *, xs, ys, prefix: str = "") -> None:
    """The host-level value checks of a model's data: ``xs`` and ``ys``
    finite (:func:`check_finite`), token ids of a token model's ``xs`` in
    ``[0, vocab_size)`` (integer ids, or the whole-valued float ids ``[T,
    ..., 1]`` of ``model.encode``) and class labels of a cross-entropy
    loss's ``ys`` in ``[0, output_size)`` (:func:`check_tokens`).

    Does nothing when ``xs`` or ``ys`` is traced (inside ``jit`` values are
    not inspected). ``prefix`` is put in front of the names, e.g.
    ``"problem."``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt._src.checks import check_data
      >>> model = jbptt.readout(jbptt.cells.elman(), 3, "xent", vocab_size=4)
      >>> try:
      ...     check_data(model.cell, model.loss_fn, xs=jnp.array([[0], [3]]),
      ...                ys=jnp.array([[2], [-1]]))
      ... except ValueError as err:
      ...     print(str(err)[:54])
      ys must hold class labels in [0, 3), got ys[1, 0] = -1
    """
    from jbptt._src import validation
    from jbptt._src.cell import token_vocab

    if validation.is_traced((xs, ys)):
        return
    check_finite(**{prefix + "xs": xs, prefix + "ys": ys})
    vocab = token_vocab(cell)
    if vocab is not None and hasattr(xs, "dtype"):
        a = np.asarray(xs)
        if jnp.issubdtype(a.dtype, jnp.integer) or jnp.issubdtype(
            a.dtype, jnp.floating
        ):
            _check_id_range(prefix + "xs", a, vocab, "token ids")
    classes = getattr(loss_fn, "num_classes", None)
    if classes is not None:
        check_tokens(ys, classes, prefix + "ys", what="class labels")
