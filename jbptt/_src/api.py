"""Loss and gradient of a recurrent model: the autodiff reference and the
hand-derived reverse scan, both for the same forward."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jbptt._src import validation
from jbptt._src.cell import Cell
from jbptt._src.scan import rnn_scan

LossFn = Callable  # (params, out_t, y_t) -> scalar, reduced over the batch


def sum_of_losses(loss_fn: LossFn, params, outs, ys) -> jax.Array:
    """L = Σ_t ℓ_t(θ, out_t, y_t), all steps evaluated as one batch."""
    return jnp.sum(jax.vmap(loss_fn, in_axes=(None, 0, 0))(params, outs, ys))


def link(h, w_t):
    """Identity forward, backward scaled by ``w_t``: h + (w−1)(h − sg(h))."""
    return jax.tree_util.tree_map(
        lambda a: a + (w_t - 1) * (a - jax.lax.stop_gradient(a)), h
    )


def loss(cell: Cell, loss_fn: LossFn):
    """The forward ``(params, h0, xs, ys, w=None) -> (L, h_T)`` by plain scan.

    This is the reference: ``jax.grad`` of it is ordinary autodiff through
    ``lax.scan``. Link weights, when given, are applied to the state entering
    each step as ``h + (w_t − 1)(h − stop_gradient(h))``, which leaves the
    forward unchanged and scales the backward by ``w_t`` exactly as
    :func:`value_and_grad` does.

    Args:
      cell: a :class:`jbptt.cells.Cell`.
      loss_fn: per-step loss ``(params, out_t, y_t) -> scalar``; it reduces
        over the batch itself. Readout weights live inside ``params``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> params = model.init(jax.random.key(0), 2, 4)
      >>> xs, ys = jnp.ones((5, 2)), jnp.zeros((5, 1))
      >>> forward = jbptt.loss(model.cell, model.loss_fn)
      >>> L, h_T = forward(params, model.cell.initial_state(params), xs, ys)
      >>> L.shape, h_T.shape
      ((), (4,))
    """

    def forward(params, h0, xs, ys, w=None):
        w = validation.check_scan_args(cell, params, h0, xs, w)
        validation.check_ys(ys, xs.shape[0])

        def body(h, inp):
            x_t, w_t = inp
            h, out = cell.step(params, link(h, w_t), x_t)
            return h, out

        h_T, outs = jax.lax.scan(body, h0, (xs, w))
        return sum_of_losses(loss_fn, params, outs, ys), h_T

    return forward


def value_and_grad(cell: Cell, loss_fn: LossFn, *, argnums=0):
    """``(params, h0, xs, ys, w=None) -> ((L, h_T), grads)`` by the reverse scan.

    Same values and, for ``w = None`` (full BPTT), the same gradients as
    ``jax.value_and_grad(jbptt.loss(cell, loss_fn), argnums, has_aux=True)``,
    computed by jbptt's explicit reverse scan (:func:`jbptt.rnn_scan`). With
    link weights ``w`` it returns the estimator ĝ of DESIGN.md: truncated
    (TBPTT), randomly truncated and reweighted (ARTBP), or anything else
    expressible as weights on the links between steps.

    Args:
      cell: a :class:`jbptt.cells.Cell`.
      loss_fn: per-step loss ``(params, out_t, y_t) -> scalar``.
      argnums: which of ``(params, h0)`` to differentiate: ``0`` (default),
        ``1`` or ``(0, 1)``, as in ``jax.value_and_grad``.

    Returns:
      A pure function; ``w`` is an ordinary (traceable, vmappable) argument.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt import truncation
      >>> model = jbptt.readout(jbptt.cells.lstm(), output_size=2)
      >>> params = model.init(jax.random.key(0), 3, 8)
      >>> xs, ys = jnp.ones((10, 4, 3)), jnp.zeros((10, 4, 2))
      >>> h0 = model.cell.initial_state(params, (4,))
      >>> grad_fn = jax.jit(jbptt.value_and_grad(model.cell, model.loss_fn))
      >>> (L, h_T), g = grad_fn(params, h0, xs, ys, truncation.tbptt(10, 5))
      >>> g["readout"]["V"].shape
      (2, 8)
    """
    if argnums not in (0, 1, (0, 1), (1, 0)):
        raise ValueError(
            f"argnums must be 0 (params), 1 (h0) or (0, 1), got {argnums!r}."
        )

    def objective(params, h0, xs, ys, w):
        h_T, outs = rnn_scan(cell, params, h0, xs, w)
        return sum_of_losses(loss_fn, params, outs, ys), h_T

    vg = jax.value_and_grad(objective, argnums=argnums, has_aux=True)

    def grad_fn(params, h0, xs, ys, w=None):
        w = validation.check_scan_args(cell, params, h0, xs, w)
        validation.check_ys(ys, xs.shape[0])
        return vg(params, h0, xs, ys, w)

    return grad_fn
