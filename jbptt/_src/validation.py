"""Trace-time argument checks (static shapes and dtypes only).

Every check here runs once per trace, on shapes and dtypes, never on values,
so it costs nothing inside ``jit`` and works on tracers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jbptt._src.cell import Cell

tree_util = jax.tree_util


def _shape_dtype(a):
    return tuple(np.shape(a)), jnp.result_type(a)


def check_xs(xs) -> tuple[int, tuple[int, ...]]:
    """Return ``(T, batch_shape)`` of time-major inputs ``xs``."""
    if not hasattr(xs, "shape") or not hasattr(xs, "dtype"):
        raise TypeError(f"xs must be an array, got {type(xs).__name__}.")
    if xs.ndim < 2:
        raise ValueError(
            f"xs must be time-major with shape (T, I) or (T, B, I), got shape "
            f"{tuple(xs.shape)}."
        )
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(
            f"xs must have a floating dtype, got {xs.dtype}; convert it, e.g. "
            "xs.astype(jnp.float32)."
        )
    if xs.shape[0] == 0:
        raise ValueError("xs has T = 0 time steps; a sequence needs T ≥ 1.")
    return xs.shape[0], tuple(xs.shape[1:-1])


def check_w(w, T: int, dtype):
    """Default link weights to ones; check shape ``(T,)`` and floating dtype."""
    if w is None:
        return jnp.ones((T,), dtype)
    shape, w_dtype = _shape_dtype(w)
    if shape != (T,):
        raise ValueError(
            f"w (link weights) must have shape (T,) = ({T},), got {shape}."
        )
    if not jnp.issubdtype(w_dtype, jnp.floating):
        raise TypeError(f"w (link weights) must be floating, got {w_dtype}.")
    return jnp.asarray(w, dtype)


def _float_dtypes(tree):
    return {
        jnp.result_type(a)
        for a in tree_util.tree_leaves(tree)
        if jnp.issubdtype(jnp.result_type(a), jnp.floating)
    }


def check_h0(cell: Cell, params, h0, batch_shape, dtype=None) -> None:
    """``h0`` must be shaped like ``cell.initial_state(params, batch_shape)``,
    with floating leaves in ``dtype`` when given (the compute dtype of ``xs``
    under mixed precision), else in the params' dtype."""
    expected = jax.eval_shape(lambda p: cell.initial_state(p, batch_shape), params)
    if dtype is not None:
        expected = tree_util.tree_map(
            lambda e: jax.ShapeDtypeStruct(e.shape, dtype)
            if jnp.issubdtype(e.dtype, jnp.floating)
            else e,
            expected,
        )
    got = tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(*_shape_dtype(a)), h0)
    if tree_util.tree_structure(expected) != tree_util.tree_structure(got):
        raise ValueError(
            f"h0 does not match the state of {cell.name}: expected a pytree like "
            f"{_describe(expected)}, got {_describe(got)}. Use "
            f"cell.initial_state(params, {batch_shape})."
        )
    leaves = zip(
        tree_util.tree_leaves(expected), tree_util.tree_leaves(got), strict=True
    )
    for e, g in leaves:
        if e.shape != g.shape:
            raise ValueError(
                f"h0 has shape {_describe(got)} but xs has batch shape "
                f"{batch_shape}, so {cell.name} expects {_describe(expected)}."
            )
        if e.dtype != g.dtype:
            raise TypeError(
                f"h0 has dtype {g.dtype} but expected {e.dtype}; h0 and xs share "
                "one floating dtype (the compute dtype)."
            )


def _describe(tree) -> str:
    return str(tree_util.tree_map(lambda a: f"{a.dtype}{list(a.shape)}", tree))


def check_scan_args(cell: Cell, params, h0, xs, w):
    """All checks for ``rnn_scan``; returns ``w`` (ones when ``None``)."""
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a jbptt Cell, got {type(cell).__name__}.")
    T, batch_shape = check_xs(xs)
    dtypes = _float_dtypes(params)
    if len(dtypes) > 1:
        raise TypeError(f"params mix floating dtypes {sorted(map(str, dtypes))}.")
    # Mixed precision: xs (and h0) may have another floating dtype than the
    # params; it is the compute dtype, the params keep theirs.
    if cell.input_size is not None:
        size = cell.input_size(params)
        if xs.shape[-1] != size:
            raise ValueError(
                f"xs has feature size {xs.shape[-1]} (shape {tuple(xs.shape)}) "
                f"but {cell.name} was initialised with input_size={size}."
            )
    check_h0(cell, params, h0, batch_shape, xs.dtype)
    if cell.input_size is None:
        _check_step_runs(cell, params, h0, xs)
    return check_w(w, T, xs.dtype)


def _check_step_runs(cell: Cell, params, h0, xs) -> None:
    """For cells whose input size is unknown: one abstract step must trace."""
    try:
        new_h, _ = jax.eval_shape(cell.step, params, h0, xs[0])
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{cell.name}.step failed on h0 {_describe(h0)} and x_t of shape "
            f"{tuple(xs.shape[1:])} (xs shape {tuple(xs.shape)}); check the "
            f"feature size of xs. Original error: {err}"
        ) from err
    if tree_util.tree_structure(new_h) != tree_util.tree_structure(h0) or any(
        a.shape != b.shape
        for a, b in zip(
            tree_util.tree_leaves(new_h), tree_util.tree_leaves(h0), strict=True
        )
    ):
        raise ValueError(
            f"{cell.name}.step returns a state {_describe(new_h)} that differs "
            f"from h0 {_describe(h0)}; the state must keep its structure."
        )


def check_ys(ys, T: int) -> None:
    for leaf in tree_util.tree_leaves(ys):
        shape = np.shape(leaf)
        if not shape or shape[0] != T:
            raise ValueError(
                f"ys must be time-major with length T = {T} (the length of xs), "
                f"got a leaf of shape {shape}."
            )
