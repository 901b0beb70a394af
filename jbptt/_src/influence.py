"""What forward-mode estimators share: the problem flattened to θ ∈ R^P,
per-example states s ∈ R^S and a batch of B examples (:class:`Flat`), the
one-step Jacobians, and the memory and FLOPs an influence representation
costs (:class:`Footprint`). Used by :mod:`jbptt._src.forward_mode` and
:mod:`jbptt._src.sparsity`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jbptt._src import validation
from jbptt._src.cell import Cell


class Footprint(NamedTuple):
    """What an online estimator's memory and work are on a given problem (per
    sequence batch).

    Attributes:
      state_bytes: the influence representation carried from step to step
        (RTRL ``B·S·P``, UORO ``B·(S+P)``, SnAp-1 ``B·k·P`` numbers).
      work_bytes: transient arrays of one step (the one-step Jacobians, or
        for SnAp-1 their parts on the pattern).
      flops_per_step: estimated FLOPs of one step's influence update and
        gradient read-out, from ``C``, XLA's FLOP count of one cell step.
    """

    state_bytes: int
    work_bytes: int
    flops_per_step: float


class Flat(NamedTuple):
    cell: Cell
    theta: jax.Array  # [P]
    unravel_p: Callable
    batch_shape: tuple[int, ...]
    B: int
    S: int
    unravel_s: Callable  # [S] -> one example's state pytree
    f_b: Callable  # (θ[P], s[S], x_b) -> s'[S], one example, one step
    to_flat: Callable  # batched state pytree -> [B, S]
    from_flat: Callable  # [B, S] -> batched state pytree
    x_examples: Callable  # x_t[batch..., I] -> [B, I]


def flatten(cell: Cell, params, h, x) -> Flat:
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a jbptt Cell, got {type(cell).__name__}.")
    if not hasattr(x, "shape") or np.ndim(x) < 1:
        raise ValueError(
            f"x (one step's input) must be an array of shape (I,) or (B, I), got "
            f"{getattr(x, 'shape', type(x).__name__)}."
        )
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves or not all(
        jnp.issubdtype(jnp.result_type(a), jnp.floating) for a in leaves
    ):
        raise TypeError("params must be a non-empty pytree of floating arrays.")
    batch_shape = tuple(x.shape[:-1])
    validation.check_h0(cell, params, h, batch_shape)
    theta, unravel_p = ravel_pytree(params)
    B = math.prod(batch_shape)
    nb = len(batch_shape)

    def examples(tree):  # batch... -> [B, ...]
        return jax.tree_util.tree_map(lambda a: a.reshape((B,) + a.shape[nb:]), tree)

    def batched(tree):  # [B, ...] -> batch...
        return jax.tree_util.tree_map(
            lambda a: a.reshape(batch_shape + a.shape[1:]), tree
        )

    first = jax.tree_util.tree_map(lambda a: a[0], examples(h))
    s0, unravel_s = ravel_pytree(first)

    def f_b(theta, s, x_b):
        new, _ = cell.step(unravel_p(theta), unravel_s(s), x_b)
        return ravel_pytree(new)[0]

    def to_flat(tree):
        return jax.vmap(lambda e: ravel_pytree(e)[0])(examples(tree))

    def from_flat(H):
        return batched(jax.vmap(unravel_s)(H))

    return Flat(
        cell,
        theta,
        unravel_p,
        batch_shape,
        B,
        s0.size,
        unravel_s,
        f_b,
        to_flat,
        from_flat,
        lambda x_t: x_t.reshape((B,) + x_t.shape[nb:]),
    )


def loss_and_next(cell, loss_fn, fl: Flat, x_t, y_t):
    """ℓ_t and h_t as functions of (θ, H_{t-1}[B, S]), batched as the user's."""

    def fn(theta, H):
        params = fl.unravel_p(theta)
        new, out = cell.step(params, fl.from_flat(H), x_t)
        return loss_fn(params, out, y_t), fl.to_flat(new)

    return fn


def step_flops(fl: Flat, x_b) -> float:
    """C: XLA's FLOP count of one example's cell step (a shape-only estimate
    ``2·P`` when XLA reports none)."""
    args = (
        jax.ShapeDtypeStruct(fl.theta.shape, fl.theta.dtype),
        jax.ShapeDtypeStruct((fl.S,), fl.theta.dtype),
        jax.ShapeDtypeStruct(x_b.shape, x_b.dtype),
    )
    try:
        analysis = jax.jit(fl.f_b).lower(*args).compile().cost_analysis()
        if isinstance(analysis, list | tuple):
            analysis = analysis[0] if analysis else {}
        flops = float((analysis or {}).get("flops", 0.0))
    except Exception:  # noqa: BLE001 -- cost analysis is best-effort
        flops = 0.0
    return flops if flops > 0 else 2.0 * fl.theta.size


def check_bytes(name: str, cost: Footprint, max_bytes: int, what: str) -> None:
    need = cost.state_bytes + cost.work_bytes
    if need > max_bytes:
        raise ValueError(
            f"{name}: {what} need {need:,} bytes ({need / 2**20:.1f} MiB: "
            f"{cost.state_bytes:,} carried + {cost.work_bytes:,} per step), above "
            f"max_bytes={max_bytes:,}. Use a smaller hidden size or batch, raise "
            "max_bytes, or use uoro() (memory O(S + P))."
        )


def nbytes(fl: Flat, n: int) -> int:
    return int(n) * fl.theta.dtype.itemsize


def jacobians(fl: Flat, H, X):
    """Dense one-step Jacobians per example: F [B, S, P], D [B, S, S]."""
    jac = jax.jacrev(fl.f_b, argnums=(0, 1))  # S reverse passes
    return jax.vmap(jac, in_axes=(None, 0, 0))(fl.theta, H, X)
