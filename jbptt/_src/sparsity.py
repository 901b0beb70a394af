"""Sparsity of one step's parameter Jacobian, and its compressed storage:
what SnAp-1 (:func:`jbptt.forward_mode.snap1`) keeps of the influence."""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from jbptt._src import influence
from jbptt._src.cell import Cell


def sparsity_pattern(cell: Cell, params, h, x, *, draws: int = 3) -> np.ndarray:
    """Boolean ``[S, P]`` pattern of the immediate Jacobian ``∂h_t/∂θ``.

    Computed from the structure of one step: the union of the nonzeros of
    ``F`` at ``draws`` random points (random state, input and parameters of
    the right shapes), so no accidental zero (e.g. ``h_{t-1} = 0``) hides an
    entry. Rows index one example's flattened state, columns the flattened
    params. Runs eagerly on shapes only, so it works inside ``jit``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jbptt import cells, forward_mode
      >>> cell = cells.elman()
      >>> params = cell.init(jax.random.key(0), 2, 3)
      >>> M = forward_mode.sparsity_pattern(
      ...     cell, params, cell.initial_state(params), jnp.ones(2))
      >>> M.shape, int(M.sum(0).max())  # every param touches one unit
      ((3, 18), 1)
    """
    fl = influence.flatten(cell, params, h, x)
    x_b = fl.x_examples(x)[0]
    return pattern(fl, x_b.shape, x_b.dtype, draws)


def pattern(fl, x_shape, x_dtype, draws: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    dt = fl.theta.dtype
    theta = rng.normal(size=(draws,) + fl.theta.shape).astype(dt)
    s = rng.normal(size=(draws, fl.S)).astype(dt)
    x_b = rng.normal(size=(draws,) + tuple(x_shape)).astype(x_dtype)
    jac = jax.jit(jax.vmap(jax.jacrev(fl.f_b, argnums=0)))  # [draws, S, P]
    with jax.ensure_compile_time_eval():  # concrete even inside a trace
        F = np.asarray(jac(theta, s, x_b))
    return np.any(F != 0, axis=0)


class Sparse(NamedTuple):
    """A column-compressed pattern and a row colouring for reading it."""

    rows: np.ndarray  # [k, P] row index of each column's nonzeros (pad: 0)
    valid: np.ndarray  # [k, P] which of those are real
    colors: np.ndarray  # [C, S] indicator of the rows of each colour
    entry_color: np.ndarray  # [k, P] colour of rows[a, p]


def compress(mask: np.ndarray) -> Sparse:
    """Compress ``mask`` [S, P] by columns (k = the most nonzeros in one
    column) and colour its rows so that no two rows of one colour share a
    column: then one VJP with the colour's indicator as cotangent reads every
    pattern entry of those rows at once (Curtis, Powell & Reid 1974)."""
    S, P = mask.shape
    k = max(1, int(mask.sum(0).max()))
    order = np.argsort(~mask, axis=0, kind="stable")[:k]  # nonzero rows first
    valid = np.take_along_axis(mask, order, axis=0)
    rows = np.where(valid, order, 0).astype(np.int32)
    conflict = (mask.astype(np.int64) @ mask.T.astype(np.int64)) > 0  # [S, S]
    color = np.full(S, -1)
    for i in range(S):  # greedy colouring
        used = set(color[conflict[i] & (color >= 0)].tolist())
        color[i] = next(c for c in range(S) if c not in used)
    colors = np.stack([color == c for c in range(color.max() + 1)])
    return Sparse(rows, valid, colors, color[rows].astype(np.int32))
