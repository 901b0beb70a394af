"""Vanishing and exploding gradients, measured.

For the recurrence h_t = f(θ, h_{t-1}, x_t) with per-step losses ℓ_t, the part
of the gradient that travels τ steps back is the cotangent

.. math::

    u_{t,τ} = (∂h_t/∂h_{t-τ})ᵀ\\, ∂ℓ_t/∂h_t
            = J_{t-τ+1}ᵀ \\cdots J_tᵀ\\, ∂ℓ_t/∂h_t, \\qquad J_s = ∂h_s/∂h_{s-1},

and its norm ‖u_{t,τ}‖, averaged over t, is the per-lag gradient profile: it
decays geometrically when the Jacobians contract (vanishing gradients) and
grows when they expand (exploding gradients) (Bengio et al. 1994; Pascanu et
al. 2013). The products of the J_s along a trajectory also give the
finite-time Lyapunov exponents (Benettin et al. 1980), whose largest value is
the asymptotic log growth rate of ‖u_{t,τ}‖ per lag.

All the u_{t,τ} for τ < L come out of one reverse scan carrying a
lag-indexed buffer of cotangents: at step t the buffer holds u_{t+τ,τ} at
h_t for every τ; it receives ∂ℓ_t/∂h_t at lag 0, and one Jacobian-transpose
product, vmapped over the lag axis, moves every entry one step (and one lag)
back. Cost: L times a gradient's reverse scan in flops, one scan in latency.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jbptt._src import validation
from jbptt._src.api import value_and_grad
from jbptt._src.cell import Cell
from jbptt._src.losses import sum_of_losses
from jbptt._src.scan import forward, states_before, step_transpose
from jbptt._src.truncation import tbptt

tree_map = jax.tree_util.tree_map
tree_leaves = jax.tree_util.tree_leaves


class LagNorms(NamedTuple):
    """Per-lag gradient norms (see :func:`per_lag_norms`).

    Attributes:
      mean: ``[L]`` (or ``[L, *batch]`` with ``per_sequence=True``): for each
        lag τ, ‖u_{t,τ}‖ averaged over the T − τ steps t ≥ τ (and over the
        batch unless ``per_sequence``).
      per_step: ``[T, L]`` (or ``[T, L, *batch]``): ‖u_{t,τ}‖ for every loss
        step t (zero where τ > t), batch-averaged unless ``per_sequence``;
        ``None`` unless ``per_step=True``.
    """

    mean: jax.Array
    per_step: jax.Array | None


def _last_leaf(state):
    # h for the (c, h) LSTM states of jbptt and Flax; the state for arrays.
    return tree_leaves(state)[-1]


def _state_norm(tree):
    """‖·‖ over the hidden (last) axis of every state leaf, jointly."""
    return jnp.sqrt(sum(jnp.sum(a * a, axis=-1) for a in tree_leaves(tree)))


def _check_max_lag(max_lag) -> None:
    validation.positive_int("max_lag", max_lag)


def per_lag_norms(
    cell: Cell,
    loss_fn: Callable,
    max_lag: int,
    *,
    output: Callable | None = None,
    per_sequence: bool = False,
    per_step: bool = False,
):
    """Per-lag gradient norms ``‖(∂h_t/∂h_{t-τ})ᵀ ∂ℓ_t/∂h_t‖``, one reverse scan.

    The norm is taken over the whole state at step t − τ: for LSTM's
    ``(c, h)`` it is √(‖u_c‖² + ‖u_h‖²), the norm of the cotangent of both
    leaves. Each sequence of a batch is its own problem (sequences do not
    interact), so the norm is over the hidden axis of one sequence; it is then
    averaged over the batch, or kept per sequence. The cotangents are those of
    ``loss_fn`` as written: a loss that averages over a batch of B scales each
    sequence's cotangent by 1/B.

    Args:
      cell: a :class:`jbptt.cells.Cell`.
      loss_fn: per-step loss ``(params, out_t, y_t) -> scalar``.
      max_lag: number of lags L (lags 0..L−1); at most T.
      output: ``state -> out_t`` for cells without hand-derived rules, so that
        ∂ℓ_t/∂h_t is defined (default: the last leaf of the state, i.e. the
        state itself for array states and ``h`` for ``(c, h)`` states).
        Built-in cells use their own.
      per_sequence: keep the batch axes instead of averaging over them.
      per_step: also return the norms for every loss step t (``[T, L, ...]``).

    Returns:
      A pure function ``(params, h0, xs, ys) -> LagNorms``.

    Raises:
      ValueError: if ``max_lag`` is not a positive int at most T.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt import diagnostics
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> params = model.init(jax.random.key(0), 2, 8)
      >>> xs, ys = jnp.ones((20, 4, 2)), jnp.zeros((20, 4, 1))
      >>> h0 = model.cell.initial_state(params, (4,))
      >>> fn = diagnostics.per_lag_norms(model.cell, model.loss_fn, max_lag=10)
      >>> fn(params, h0, xs, ys).mean.shape
      (10,)
    """
    _check_max_lag(max_lag)
    if output is not None and not callable(output):
        raise TypeError(f"output must be callable, got {type(output).__name__}.")

    def fn(params, h0, xs, ys):
        validation.check_scan_args(cell, params, h0, xs, None)
        validation.check_ys(ys, xs.shape[0])
        T, batch_shape = xs.shape[0], xs.shape[1:-1]
        if max_lag > T:
            raise ValueError(f"max_lag={max_lag} exceeds the T={T} steps of xs.")
        L = max_lag

        _, outs, r = forward(cell, params, h0, xs)
        hs = r.hs
        if cell.rules is not None:  # built-in cells know their output map
            out_of = cell.rules.output
        else:
            out_of = output or _last_leaf
            got = jax.eval_shape(out_of, hs)
            if got.shape != outs.shape:
                raise ValueError(
                    f"output(state) has shape {got.shape} but {cell.name}.step "
                    f"returns outputs of shape {outs.shape}; pass output= to map "
                    "a state to the step output."
                )
        hs_prev = states_before(r)
        # ∂ℓ_t/∂out_t for all t at once, then through out_t = output(h_t).
        douts = jax.grad(lambda o: sum_of_losses(loss_fn, params, o, ys))(outs)
        gs = jax.vjp(out_of, hs)[1](douts)[0]  # ∂ℓ_t/∂h_t, stacked like hs
        transpose = step_transpose(cell, params)  # d ↦ J_tᵀ d, one step

        def jac_t_product(h_prev, h, res_t, x_t):
            """d ↦ J_tᵀ d for one step, vmapped over the lag axis of d."""
            return jax.vmap(lambda d: transpose(h_prev, h, res_t, x_t, d))

        def body(buf, inp):
            # buf[τ] (τ ≥ 1): u_{t+τ,τ}, the cotangent at h_t of loss t+τ.
            h_prev, h, res_t, x_t, g_t = inp
            d = tree_map(lambda b, g: b.at[0].set(g), buf, g_t)  # lag 0: ∂ℓ_t/∂h_t
            norms = _state_norm(d)  # [L, *batch]
            # J_tᵀ u_{t+τ,τ} = u_{t+τ,τ+1} at h_{t-1}: shift one lag (drop L−1).
            back = jac_t_product(h_prev, h, res_t, x_t)(tree_map(lambda a: a[:-1], d))
            buf = tree_map(lambda a: jnp.concatenate([jnp.zeros_like(a[:1]), a]), back)
            return buf, norms

        buf0 = tree_map(lambda a: jnp.zeros((L,) + a.shape, a.dtype), h0)
        _, norms = jax.lax.scan(
            body, buf0, (hs_prev, hs, r.res, xs, gs), reverse=True
        )  # [T, L, *batch], indexed by the state step s = t − τ
        counts = (T - jnp.arange(L)).astype(norms.dtype)  # steps t ≥ τ per lag
        mean = jnp.sum(norms, 0) / counts.reshape((L,) + (1,) * len(batch_shape))
        if not per_sequence:
            batch_axes = tuple(range(1, 1 + len(batch_shape)))
            mean = jnp.mean(mean, axis=batch_axes)
            norms = jnp.mean(norms, axis=tuple(a + 1 for a in batch_axes))
        if not per_step:
            return LagNorms(mean, None)
        # re-index by the loss step t = s + τ (zero where τ > t)
        t, tau = jnp.arange(T)[:, None], jnp.arange(L)[None, :]
        s = (t - tau).reshape((T, L) + (1,) * (norms.ndim - 2))
        by_loss = jnp.take_along_axis(norms, jnp.clip(s, 0, T - 1), axis=0)
        return LagNorms(mean, jnp.where(s >= 0, by_loss, 0.0))

    return fn


def memory_length(norms, fraction: float = 0.01) -> jax.Array:
    """Effective memory: first lag whose norm is below ``fraction`` × lag 0.

    Args:
      norms: per-lag norms with the lag axis first (``[L, ...]``), e.g.
        ``LagNorms.mean``.
      fraction: threshold relative to the lag-0 norm, in (0, 1).

    Returns:
      Integer array of shape ``norms.shape[1:]``; ``L`` where the norm never
      falls below the threshold within the L lags measured.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jbptt import diagnostics
      >>> int(diagnostics.memory_length(0.5 ** jnp.arange(10.0), fraction=0.1))
      4
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction!r}.")
    norms = jnp.asarray(norms)
    if norms.ndim < 1:
        raise ValueError("norms must have a lag axis first, got a scalar.")
    below = norms < fraction * norms[:1]
    return jnp.where(jnp.any(below, 0), jnp.argmax(below, 0), norms.shape[0])


def decay_rate(norms, lags=None) -> jax.Array:
    """Least-squares slope of ``log norm`` against lag: log growth per step.

    Negative: vanishing gradients (norm ∝ e^{slope·τ}); positive: exploding.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jbptt import diagnostics
      >>> round(float(diagnostics.decay_rate(0.5 ** jnp.arange(10.0))), 4)
      -0.6931
    """
    y = jnp.log(jnp.asarray(norms))
    x = jnp.arange(y.shape[0], dtype=y.dtype) if lags is None else jnp.asarray(lags)
    xc = x - jnp.mean(x)
    return jnp.sum(xc * (y - jnp.mean(y))) / jnp.sum(xc * xc)


# ------------------------------------------------------ Jacobian spectra ---


def step_jacobians(cell: Cell, params, h0, xs) -> jax.Array:
    """Step Jacobians ``J_t = ∂h_t/∂h_{t-1}`` along the trajectory from ``h0``.

    States are flattened per sequence (``(c, h)`` → ``[c; h]``), so N is the
    total state size (2H for LSTM). Uses ``jax.jacfwd``: meant for small N.

    Returns:
      ``[T, *batch, N, N]``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jbptt import cells, diagnostics
      >>> cell = cells.lstm()
      >>> p = cell.init(jax.random.key(0), 2, 3)
      >>> h0 = cell.initial_state(p)
      >>> J = diagnostics.step_jacobians(cell, p, h0, jnp.ones((5, 2)))
      >>> J.shape
      (5, 6, 6)
    """
    validation.check_scan_args(cell, params, h0, xs, None)
    batch_ndim = xs.ndim - 2
    hs_prev = states_before(forward(cell, params, h0, xs)[2])

    def jac(h_prev, x):  # one sequence, one step
        flat, unravel = ravel_pytree(h_prev)
        f = lambda v: ravel_pytree(cell.step(params, unravel(v), x)[0])[0]  # noqa: E731
        return jax.jacfwd(f)(flat)

    for _ in range(batch_ndim):
        jac = jax.vmap(jac)
    return jax.vmap(jac)(hs_prev, xs)


def singular_values(jacobians) -> jax.Array:
    """Singular values of each Jacobian, descending; ``[..., 0]`` is ‖J_t‖₂.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jbptt import diagnostics
      >>> diagnostics.singular_values(jnp.diag(jnp.array([0.5, 2.0]))).tolist()
      [2.0, 0.5]
    """
    return jnp.linalg.svd(jnp.asarray(jacobians), compute_uv=False)


def lyapunov_exponents(jacobians) -> jax.Array:
    """Finite-time Lyapunov exponents of the product ``J_{T-1} ⋯ J_0`` (QR).

    Benettin et al. (1980): Q_0 = I; J_t Q_{t-1} = Q_t R_t; then
    λ_i = (1/T) Σ_t log |R_t[i, i]|. Re-orthonormalising every step keeps the
    product from over- or underflowing. λ_1 is the log growth rate per step
    of generic perturbations (and of back-propagated cotangents); λ_1 < 0
    means vanishing, > 0 exploding gradients.

    Args:
      jacobians: ``[T, *batch, N, N]``, e.g. from :func:`step_jacobians`.

    Returns:
      ``[*batch, N]``, sorted descending.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jbptt import diagnostics
      >>> J = jnp.broadcast_to(jnp.diag(jnp.array([0.5, 2.0])), (10, 2, 2))
      >>> jnp.round(diagnostics.lyapunov_exponents(J), 4).tolist()
      [0.6931, -0.6931]
    """
    J = jnp.asarray(jacobians)
    if J.ndim < 3 or J.shape[-1] != J.shape[-2]:
        raise ValueError(
            f"jacobians must have shape [T, ..., N, N], got {tuple(J.shape)}."
        )
    tiny = jnp.finfo(J.dtype).tiny

    def body(q, j):
        q, r = jnp.linalg.qr(j @ q)
        return q, jnp.log(jnp.maximum(jnp.abs(jnp.diagonal(r, 0, -2, -1)), tiny))

    q0 = jnp.broadcast_to(jnp.eye(J.shape[-1], dtype=J.dtype), J.shape[1:])
    _, logs = jax.lax.scan(body, q0, J)
    return -jnp.sort(-jnp.mean(logs, 0), axis=-1)


# ---------------------------------------------------- truncation tie-in ---


def relative_bias(cell: Cell, loss_fn: Callable):
    """``(params, h0, xs, ys, w) -> ‖ĝ_w − ∇L‖ / ‖∇L‖``, exact and deterministic.

    ĝ_w is the gradient with link weights ``w`` (e.g.
    ``jbptt.truncation.tbptt(T, k)``); vmap over a stack of ``w`` to sweep.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt import diagnostics, truncation
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> p = model.init(jax.random.key(0), 1, 4)
      >>> xs, ys = jnp.ones((8, 1)), jnp.zeros((8, 1))
      >>> bias = diagnostics.relative_bias(model.cell, model.loss_fn)
      >>> float(bias(p, model.cell.initial_state(p), xs, ys, truncation.full(8)))
      0.0
    """
    grad_fn = value_and_grad(cell, loss_fn)

    def fn(params, h0, xs, ys, w):
        _, g = grad_fn(params, h0, xs, ys)
        _, g_w = grad_fn(params, h0, xs, ys, w)
        diff, _ = ravel_pytree(tree_map(jnp.subtract, g_w, g))
        return jnp.linalg.norm(diff) / jnp.linalg.norm(ravel_pytree(g)[0])

    return fn


def dropped_fraction(per_step_norms, w) -> jax.Array:
    """Fraction of the per-lag gradient mass that link weights ``w`` change.

    The cotangent u_{t,τ} crosses links t, t−1, …, t−τ+1, so link weights
    scale it by P_{t,τ} = Π_{s=t-τ+1}^{t} w_s (zero if TBPTT cuts any of
    them). This returns Σ |1 − P_{t,τ}| ‖u_{t,τ}‖ / Σ ‖u_{t,τ}‖: for TBPTT(k)
    the share of the profile's mass beyond the kept lags, a prediction of the
    TBPTT bias read off the profile alone (the bias itself also depends on
    how the dropped parts align in parameter space; see :func:`relative_bias`).

    Args:
      per_step_norms: ``[T, L]``, ``LagNorms.per_step``.
      w: link weights ``[T]``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jbptt import diagnostics, truncation
      >>> n = jnp.tril(jnp.ones((4, 4)))  # equal mass at every (t, τ ≤ t)
      >>> float(diagnostics.dropped_fraction(n, truncation.tbptt(4, 2)))
      0.4
    """
    n = jnp.asarray(per_step_norms)
    if n.ndim != 2:
        raise ValueError(f"per_step_norms must be [T, L], got shape {n.shape}.")
    T, L = n.shape
    w = jnp.asarray(w, n.dtype)
    if w.shape != (T,):
        raise ValueError(f"w must have shape (T,) = ({T},), got {w.shape}.")
    t, tau = jnp.arange(T)[:, None], jnp.arange(L)[None, :]
    # going from lag τ−1 to τ crosses link t−τ+1 (indices < 0 carry no mass).
    step = jnp.where(tau >= 1, w[jnp.clip(t - tau + 1, 0, T - 1)], 1.0)
    scale = jnp.cumprod(step, axis=1)  # P_{t,τ}
    return jnp.sum(jnp.abs(1.0 - scale) * n) / jnp.sum(n)


def tbptt_ks(T: int, ks: Sequence[int]) -> jax.Array:
    """Stacked TBPTT(k) link weights ``[len(ks), T]`` for a vmapped sweep.

    Examples:
      >>> from jbptt._src import diagnostics
      >>> diagnostics.tbptt_ks(4, [1, 2]).tolist()
      [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0]]
    """
    return jnp.stack([tbptt(T, int(k)) for k in ks])
