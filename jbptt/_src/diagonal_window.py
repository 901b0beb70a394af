"""Exact RTRL on a diagonal cell over windows of steps under fixed params:
BPTT inside a window, the diagonal influence
(:mod:`jbptt._src.diagonal_rtrl`) read and advanced once per window, the
same sums as the step-by-step rule."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jbptt._src import diagonal_rtrl as diag
from jbptt._src import diagonal_scan, sequences

tree_map = jax.tree_util.tree_map


def window(cell, loss_fn, params, h, infl, xs, ys, keep, resets, h_reset):
    r"""``K`` steps under fixed params at once: ``(losses [K], Σ_t g_t, h_K,
    e_K)``, the sums of :func:`jbptt._src.diagonal_rtrl.step`'s, exactly.

    Unrolling the influence over the window, with ``ã_s = a_s`` (``0`` at a
    step that restarts an episode, ``1`` on padding) and
    ``P_s = Π_{r>s} ã_r``:

    .. math::

        e_K = (Π_s ã_s) ⊙ e_0 + \textstyle\sum_s P_s ⊙
              ∂(a_s ⊙ h_{s-1} + b_s)/∂θ, \qquad
        \textstyle\sum_s g_s = ∇_θ \sum_s ℓ_s \big|_{h_0}
              + \mathrm{Re} \sum_j δ_0[j]\, e_0[j],

    ``δ_0 = ∂\sum_s ℓ_s/∂h_0``: BPTT inside the window, the carried
    influence read once, at the window's start, and the immediate terms
    summed by one vjp of the gates over the K steps (for a projection
    ``W x``, a ``[H, K]`` by ``[K, I]`` product per example) instead of K
    passes over ``e``.

    Args:
      cell: a diagonal cell.
      loss_fn: its per-step loss ``(params, out_t, y_t) -> scalar``.
      params: the params (fixed over the window).
      h: ``h_0 [*batch, H]``.
      infl: ``e_0`` (:func:`jbptt._src.diagonal_rtrl.zeros`).
      xs: ``[K, *batch, I]``.
      ys: targets, time-major.
      keep: ``[K]``, positive on real steps (padding leaves all alone).
      resets: ``[K, *batch]`` bool or ``None``; restart from ``h_reset``.
      h_reset: the state an episode restarts from (``[*batch, H]``).
    """
    K = xs.shape[0]
    batch_shape, B, _ = diag.per_example(xs[0])
    lay = diag.layout(cell, params, xs.reshape((-1, xs.shape[-1]))[0])
    real = keep > 0
    run = _window_forward(cell, loss_fn, xs, ys, real, resets, h_reset)
    (_, (losses, h_K, h_prev, a)), (g_in, delta0) = jax.value_and_grad(
        run, argnums=(0, 1), has_aux=True
    )(params, h)
    if resets is not None:  # e_{s-1} := 0 where an episode restarts
        a = jnp.where(resets[..., None], 0, a)
    after = jax.lax.associative_scan(jnp.multiply, a, reverse=True)  # Π_{r≥s}
    P = jnp.concatenate([after[1:], jnp.ones_like(after[:1])])  # Π_{r>s}
    P = jnp.where(real.reshape((K,) + (1,) * (P.ndim - 1)), P, 0)
    flat = (xs.reshape(K, B, -1), P.reshape(K, B, -1), h_prev.reshape(K, B, -1))
    summed = _window_terms(lay, cell.diagonal.gates, params, *flat)
    A = after[0].reshape(B, lay.H)
    new = tuple(
        None
        if e is None
        else (A.reshape(A.shape + (1,) * (e.ndim - 2)) * e + f).astype(e.dtype)
        for e, f in zip(infl, summed, strict=True)
    )
    g = tree_map(jnp.add, g_in, diag.read(lay, params, infl, delta0.reshape(B, lay.H)))
    return losses, g, h_K, new


def recurrence(a, b, h0, real, resets, h_reset):
    """``h_s = a_s ⊙ h_{s-1} + b_s`` over a window's ``K`` steps from
    ``h0``, padded steps (``real [K]`` false) the identity, resets
    (``[K, *batch]`` or ``None``) restarting from ``h_reset``: ``(h_K,
    h_{s-1} [K, …] after the resets, h_s [K, …], a [K, …] with the padding's
    1)``."""
    shape = jnp.broadcast_shapes(a.shape, b.shape)
    m = real.reshape((-1,) + (1,) * (len(shape) - 1))
    a = jnp.where(m, jnp.broadcast_to(a, shape), 1)
    b = jnp.where(m, jnp.broadcast_to(b, shape), 0)

    def body(h_prev, inp):
        a_s, b_s, r_s = inp
        if r_s is not None:
            h_prev = sequences.select(r_s, h_reset, h_prev)
        h_s = a_s * h_prev + b_s  # h_s = a_s ⊙ h_{s-1} + b_s
        return h_s, (h_prev, h_s)

    h_K, (h_prev, hs) = jax.lax.scan(body, h0, (a, b, resets))
    return h_K, h_prev, hs, a


def _window_forward(cell, loss_fn, xs, ys, real, resets, h_reset):
    """``(params, h_0) -> (Σ ℓ_s, (ℓ [K], h_K, h_{s-1} [K, …], a [K, …]))``
    over one window, padded steps the identity."""
    gates, readout = cell.diagonal.gates, cell.diagonal.readout

    def run(params, h0):
        a, b = gates(params, xs)  # every step at once
        h_K, h_prev, hs, a = recurrence(a, b, h0, real, resets, h_reset)
        per_step = jax.vmap(loss_fn, in_axes=(None, 0, 0))
        losses = jnp.where(real, per_step(params, readout(params, hs, xs), ys), 0)
        return jnp.sum(losses), (losses, h_K, h_prev, a)

    return run


def _window_terms(lay, gates, params, X, P, H_prev):
    """Per leaf, ``Σ_s P_s ⊙ ∂(a_s ⊙ h_{s-1} + b_s)/∂θ`` per example
    (``X [K, B, I]``, ``P, H_prev [K, B, H]``); ``None`` for unused leaves."""
    cplx = jnp.issubdtype(lay.dtype, jnp.complexfloating)

    def one(p, x_b, p_b, h_b):  # [H]: Σ_s P_s ⊙ (a_s ⊙ h_{s-1} + b_s)
        return jnp.sum(p_b * diag.affine_state(gates, p, h_b, x_b), axis=0)

    def units(x_b, p_b, h_b):
        return diag.units_vjp(lambda p: one(p, x_b, p_b, h_b), params, cplx)

    per_unit = jax.tree_util.tree_leaves(jax.vmap(units, in_axes=1)(X, P, H_prev))
    out = []
    for k, (kind, f) in enumerate(zip(lay.kinds, per_unit, strict=True)):
        if kind == diag.SHARED:
            f = jax.vmap(
                lambda x_b, p_b, h_b, k=k: diag.leaf_jac(
                    lambda p: one(p, x_b, p_b, h_b), params, k, cplx
                ),
                in_axes=1,
            )(X, P, H_prev)
        out.append(None if kind == diag.UNUSED else f)
    return tuple(out)


def windows(
    cell, loss_fn, params, h, infl, xs, ys, keep, resets, h_reset, size, one=window
):  # fmt: skip
    """``one`` (default :func:`window`) over ``n`` steps in windows of at
    most ``size`` (the last one padded): ``(losses [n], Σ_t g_t, h_n, e_n)``."""
    n = xs.shape[0]
    if n <= size:
        return one(cell, loss_fn, params, h, infl, xs, ys, keep, resets, h_reset)

    def body(carry, inp):
        h, infl, acc = carry
        x, y, k, r = inp
        losses, g, h, infl = one(cell, loss_fn, params, h, infl, x, y, k, r, h_reset)
        return (h, infl, tree_map(jnp.add, acc, g)), losses

    carry = (h, infl, tree_map(jnp.zeros_like, params))
    # [n, …] -> [windows, size, …], the last window zero-padded
    inputs = tree_map(
        lambda a: diagonal_scan.chunks(a, size, 0), (xs, ys, keep, resets)
    )
    (h, infl, g), losses = jax.lax.scan(body, carry, inputs)
    return diagonal_scan.unchunk(losses, n), g, h, infl


def windowed(size: int):
    """``cell -> run | None``: :func:`windows` of ``size`` steps on a
    diagonal cell, ``None`` (step by step) on any other."""

    def run(cell, loss_fn, params, h, infl, xs, ys, keep, resets, h_reset):
        return windows(
            cell, loss_fn, params, h, infl, xs, ys, keep, resets, h_reset, size
        )

    return lambda cell: run if diag.cell_is_diagonal(cell) else None
