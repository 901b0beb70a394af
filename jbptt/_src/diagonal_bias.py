r"""The truncation bias of a linear diagonal recurrence, in closed form.

For ``h_t = λ ⊙ h_{t-1} + b_t`` with λ constant per unit (possibly complex:
the LRU at fixed params) and per-step losses ℓ_t, let ``c_t = ∂ℓ_t/∂h_t``
(JAX's convention for a complex state: ``dℓ_t = Re(c_t · dh_t)``). The exact
adjoint is the per-lag sum

.. math::

    δ_t = \sum_{t' ≥ t} λ^{t'-t} c_{t'},

and every parameter's gradient is a sum over pairs ``(s ≤ t)`` of per-lag
terms weighted by ``λ^{t-s}``: through ``b_s`` (the input weights ``B, γ``)
the cotangent is ``δ_s``, through λ (``ν, θ``) it is ``Σ_s δ_s h_{s-1}``.
TBPTT(k) in chunks (link weight 0 where ``t % k == 0``) keeps only the pairs
inside one chunk, so its bias is minus the pairs that cross a chunk
boundary. Grouped by ``s``, those pairs sum in closed form: with ``n(s)`` the
start of the chunk after ``s``'s,

.. math::

    Δ_s = δ̃_s − δ_s = −λ^{n(s)-s}\, δ_{n(s)} \quad (0 \text{ when } n(s) ≥ T),

and the bias is ``Δ_s`` on ``b_s``, ``Σ_s Δ_s h_{s-1}`` on λ, carried to the
parameters by one vjp of the cell's gates.

For a stationary input the bias depends on |λ| and k alone: a pair at lag τ
crosses a boundary of TBPTT(k) for a fraction ``min(τ, k)/k`` of the
positions in a chunk, so the fraction of the per-lag weight ``Σ_τ |λ|^τ``
that TBPTT(k) drops is

.. math::

    f(|λ|, k) = \frac{\sum_{τ ≥ 1} \min(τ, k)\,|λ|^τ}{k \sum_{τ ≥ 0} |λ|^τ}
              = \frac{|λ|\,(1 - |λ|^k)}{k\,(1 - |λ|)}

(``f = |λ|`` at k = 1, ``f → 1`` as ``|λ| → 1``, ``f ≈ |λ|/(k(1−|λ|))`` once
``|λ|^k`` is small): the relative bias of the input weights' gradient when the
per-lag terms are aligned and of equal size at lag 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jbptt._src import validation
from jbptt._src.cell import Cell
from jbptt._src.losses import sum_of_losses


class LinearBias(NamedTuple):
    """TBPTT(k)'s bias (TBPTT minus exact) on a linear diagonal recurrence.

    Attributes:
      lam: ``[H]``, the bias of the gradient w.r.t. λ (JAX's cotangent
        convention: a real loss changes by ``Re(lam · dλ)``).
      b: ``[T, *batch, H]``, the bias of the cotangent of each ``b_t``.
    """

    lam: jax.Array
    b: jax.Array


def _adjoints(lam, dl_dh):
    """δ_t = c_t + λ δ_{t+1}: the exact per-lag sums Σ_{t' ≥ t} λ^{t'-t} c_{t'}."""

    def back(d, c):
        d = c + lam * d
        return d, d

    _, deltas = jax.lax.scan(back, jnp.zeros_like(dl_dh[0]), dl_dh, reverse=True)
    return deltas


def _states_before(lam, bs, h0):
    """h_{t-1} for every t (h_{-1} = h0)."""

    def fwd(h, b):
        return lam * h + b, h

    _, before = jax.lax.scan(fwd, h0, bs)
    return before


def _dropped(lam, deltas, k: int):
    """Δ_s = −λ^{n(s)−s} δ_{n(s)}: the pairs of lag ≥ n(s) − s that cross the
    boundary at n(s), the start of the chunk after s's."""
    T = deltas.shape[0]
    s = jnp.arange(T)
    nxt = (s // k + 1) * k  # start of the next chunk
    lag = nxt - s  # 1 … k
    at_next = jnp.take(deltas, jnp.minimum(nxt, T - 1), axis=0)
    alive = (nxt < T).reshape((T,) + (1,) * (deltas.ndim - 1))
    power = lam ** lag.reshape((T,) + (1,) * (deltas.ndim - 1))
    return jnp.where(alive, -power * at_next, 0.0)


def linear_truncation_bias(lam, bs, dl_dh, k: int, h0=None) -> LinearBias:
    r"""TBPTT(k)'s bias on ``h_t = λ ⊙ h_{t-1} + b_t``, in closed form.

    Args:
      lam: ``[H]`` constant decay per unit, real or complex.
      bs: ``[T, *batch, H]`` the inputs ``b_t``.
      dl_dh: ``[T, *batch, H]`` ``c_t = ∂ℓ_t/∂h_t`` at the forward states
        (``jax.grad``'s convention for a complex state).
      k: TBPTT length (chunks of k steps: link weight 0 where ``t % k == 0``).
      h0: ``[*batch, H]`` initial state (default zeros).

    Returns:
      :class:`LinearBias`: the gradient bias w.r.t. λ and the cotangent bias
      of every ``b_t`` (TBPTT(k) minus exact).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jbptt._src.diagonal_bias import linear_truncation_bias
      >>> lam = jnp.array([0.5])
      >>> c = jnp.zeros((4, 1)).at[2].set(1.0)  # one loss, at t = 2
      >>> bias = linear_truncation_bias(lam, jnp.ones((4, 1)), c, 2)
      >>> bias.b[:, 0].tolist()  # t = 0, 1 lose λ², λ (chunk [0, 1] | [2, 3])
      [-0.25, -0.5, 0.0, 0.0]
    """
    k = validation.positive_int("k", k)
    lam, bs, dl_dh = jnp.asarray(lam), jnp.asarray(bs), jnp.asarray(dl_dh)
    if bs.shape != dl_dh.shape or bs.ndim < 2 or bs.shape[-1:] != lam.shape:
        raise ValueError(
            f"bs and dl_dh must both have shape [T, *batch, H] with H = "
            f"lam.shape = {lam.shape}, got {bs.shape} and {dl_dh.shape}."
        )
    h0 = jnp.zeros(bs.shape[1:], bs.dtype) if h0 is None else jnp.asarray(h0)
    dtype = jnp.result_type(lam, bs, dl_dh, h0)
    lam, bs, dl_dh = lam.astype(dtype), bs.astype(dtype), dl_dh.astype(dtype)
    dropped = _dropped(lam, _adjoints(lam, dl_dh), k)
    before = _states_before(lam, bs, h0.astype(dtype))
    lead = tuple(range(bs.ndim - 1))
    return LinearBias(jnp.sum(dropped * before, axis=lead), dropped)


def _constant_gates(cell: Cell, params, xs):
    if getattr(cell, "diagonal", None) is None:
        raise TypeError(
            f"cell must be a diagonal linear recurrence (jbptt.cells.diagonal, "
            f"lru, …), got {cell.name!r}."
        )
    lam, bs = cell.diagonal.gates(params, xs)
    if jnp.ndim(lam) != 1:
        raise ValueError(
            f"diagonal_truncation_bias needs a decay constant over steps and "
            f"batch (shape [H], as the LRU's λ), got the gates' a of shape "
            f"{jnp.shape(lam)}: it reads the input."
        )
    return lam, jnp.broadcast_to(bs, xs.shape[:-1] + lam.shape)


def _state_cotangents(cell: Cell, loss_fn, params, hs, xs, ys):
    """c_t = ∂ℓ_t/∂h_t at the forward states (readout and loss only)."""

    def loss_of_states(h):
        return sum_of_losses(loss_fn, params, cell.diagonal.readout(params, h, xs), ys)

    return jax.grad(loss_of_states)(hs)


def diagonal_truncation_bias(cell: Cell, loss_fn: Callable, params, h0, xs, ys, k: int):
    r"""TBPTT(k)'s gradient bias on a diagonal cell with constant decay.

    The closed form of ``linear_truncation_bias`` (in λ, ``b_t`` and
    ``∂ℓ_t/∂h_t``; module ``jbptt._src.diagonal_bias``) carried to the
    parameters: for the LRU, the bias of ``nu_log, theta_log`` (through λ)
    and of ``gamma_log, B_re, B_im`` (through ``b_t``); parameters the gates
    do not read (the readout's) have no truncation bias. It equals
    ``value_and_grad(cell, loss_fn)(params, h0, xs, ys, truncation.tbptt(T,
    k))`` minus the exact gradient.

    Args:
      cell: a diagonal cell (:func:`jbptt.cells.diagonal`,
        :func:`jbptt.cells.lru`, or a model's ``cell``) whose gates' ``a`` is
        constant (shape ``[H]``).
      loss_fn: per-step loss ``(params, out_t, y_t) -> scalar``.
      params: the cell's (or model's) params.
      h0: ``[*batch, H]`` initial state.
      xs: ``[T, *batch, I]`` inputs.
      ys: ``[T, ...]`` targets.
      k: TBPTT length.

    Returns:
      A tree like ``params``: TBPTT(k)'s gradient minus the exact gradient.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt import cells, diagnostics, truncation
      >>> cell = cells.lru(r_min=0.5, r_max=0.99)
      >>> p = cell.init(jax.random.key(0), 2, 4)
      >>> xs = jax.random.normal(jax.random.key(1), (12, 3, 2))
      >>> h0 = cell.initial_state(p, (3,))
      >>> mse = lambda p, out, y: jnp.mean((out - y) ** 2)
      >>> bias = diagnostics.diagonal_truncation_bias(cell, mse, p, h0, xs, xs, 4)
      >>> vg = jbptt.value_and_grad(cell, mse)
      >>> g_k = vg(p, h0, xs, xs, truncation.tbptt(12, 4))[1]
      >>> g = vg(p, h0, xs, xs)[1]
      >>> bool(jnp.allclose(bias["B_re"], g_k["B_re"] - g["B_re"], atol=1e-5))
      True
    """
    k = validation.positive_int("k", k)
    lam, bs = _constant_gates(cell, params, xs)
    h0 = jnp.broadcast_to(jnp.asarray(h0), bs.shape[1:]).astype(bs.dtype)
    hs = _states_before(lam, jnp.concatenate([bs, bs[:1]]), h0)[1:]  # h_0 … h_{T-1}
    dl_dh = _state_cotangents(cell, loss_fn, params, hs, xs, ys)
    bias = linear_truncation_bias(lam, bs, dl_dh, k, h0)
    a, vjp = jax.vjp(lambda p: cell.diagonal.gates(p, xs), params)
    ct_a = bias.lam if jnp.iscomplexobj(a[0]) else jnp.real(bias.lam)
    ct_b = jnp.sum(bias.b, axis=tuple(range(bias.b.ndim - a[1].ndim)))
    ct_b = ct_b if jnp.iscomplexobj(a[1]) else jnp.real(ct_b)
    return vjp((ct_a.astype(a[0].dtype), ct_b.astype(a[1].dtype)))[0]


def geometric_truncation_bias(modulus, k):
    r"""``f(|λ|, k) = |λ|(1 − |λ|^k) / (k(1 − |λ|))``: TBPTT(k)'s dropped
    fraction of the per-lag weight ``Σ_τ |λ|^τ`` for a stationary input.

    Args:
      modulus: ``|λ|`` in ``[0, 1]`` (any shape; arrays broadcast with k).
      k: TBPTT length(s), ≥ 1.

    Returns:
      ``f`` in ``[0, 1]``: ``|λ|`` at k = 1, 1 at ``|λ| = 1``, → 0 as k → ∞.

    Examples:
      >>> from jbptt import diagnostics
      >>> round(float(diagnostics.geometric_truncation_bias(0.9, 1)), 6)
      0.9
      >>> round(float(diagnostics.geometric_truncation_bias(0.5, 2)), 6)
      0.375
    """
    r, k = jnp.asarray(modulus), jnp.asarray(k)
    if not validation.is_traced(r) and not bool(jnp.all((r >= 0) & (r <= 1))):
        raise ValueError(f"modulus must lie in [0, 1], got {np.asarray(modulus)}.")
    if not validation.is_traced(k) and not bool(jnp.all(k >= 1)):
        raise ValueError(f"k must be ≥ 1 (TBPTT lengths), got {np.asarray(k)}.")
    r_safe = jnp.where(r < 1, r, 0.5)  # the r = 1 limit is 1 (f → r)
    f = r_safe * (1 - r_safe**k) / (k * (1 - r_safe))
    return jnp.where(r < 1, f, 1.0)
