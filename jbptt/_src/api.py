"""Loss and gradient of a recurrent model: the autodiff reference and the
hand-derived reverse scan, both for the same forward."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jbptt._src import scan as _scan
from jbptt._src import validation
from jbptt._src.cell import Cell
from jbptt._src.checkpointing import Budget, budget_loss, check_budget
from jbptt._src.scan import rnn_scan

LossFn = Callable  # (params, out_t, y_t) -> scalar, reduced over the batch


def per_step_losses(loss_fn: LossFn, params, outs, ys) -> jax.Array:
    """[T]: ℓ_t(θ, out_t, y_t) for every step, evaluated as one batch."""
    return jax.vmap(loss_fn, in_axes=(None, 0, 0))(params, outs, ys)


def sum_of_losses(loss_fn: LossFn, params, outs, ys) -> jax.Array:
    """L = Σ_t ℓ_t(θ, out_t, y_t)."""
    return jnp.sum(per_step_losses(loss_fn, params, outs, ys))


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


def value_and_grad(cell: Cell, loss_fn: LossFn, *, argnums=0, checkpoint=None):
    """``(params, h0, xs, ys, w=None) -> ((L, h_T), grads)`` by the reverse scan.

    Same values and, for ``w = None`` (full BPTT), the same gradients as
    ``jax.value_and_grad(jbptt.loss(cell, loss_fn), argnums, has_aux=True)``,
    computed by jbptt's explicit reverse scan (:func:`jbptt.rnn_scan`). With
    link weights ``w`` it returns the estimator ĝ of docs/design.md: truncated
    (TBPTT), randomly truncated and reweighted (ARTBP), or anything else
    expressible as weights on the links between steps.

    Args:
      cell: a :class:`jbptt.cells.Cell`.
      loss_fn: per-step loss ``(params, out_t, y_t) -> scalar``.
      argnums: which of ``(params, h0)`` to differentiate: ``0`` (default),
        ``1`` or ``(0, 1)``, as in ``jax.value_and_grad``.
      checkpoint: ``None`` (default) stores every step's state; ``"sqrt"``
        (or an int segment length) runs the sequence in segments of about
        √T steps, evaluating the loss inside each segment, and stores only
        the segment-start states: memory O(√T) states instead of O(T), for
        about one extra forward pass. ``jbptt.Budget(max_states=M)`` stores
        at most M states and recomputes the fewest steps (Gruslys et al.
        2016's dynamic program). Values and gradients are unchanged.

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

    if isinstance(checkpoint, Budget):
        budgeted = budget_loss(cell, loss_fn, check_budget(checkpoint))
    else:
        budgeted = None
        _scan.segment_length(2, checkpoint)  # bad values fail here, not at call

    def objective(params, h0, xs, ys, w):
        if budgeted is not None:
            return budgeted(params, h0, xs, ys, w)
        S = _scan.segment_length(xs.shape[0], checkpoint)
        if S is None:
            h_T, outs = rnn_scan(cell, params, h0, xs, w)
            return sum_of_losses(loss_fn, params, outs, ys), h_T

        # Checkpointed: each segment computes its own losses, so neither the
        # states nor the outputs of all T steps are ever stored at once.
        def segment(h, inp):
            xs_s, ys_s, w_s = inp
            h, outs = rnn_scan(cell, params, h, xs_s, w_s)
            return h, sum_of_losses(loss_fn, params, outs, ys_s)

        T = xs.shape[0]
        h_T, (head, losses) = _scan.scan_segments(segment, h0, (xs, ys, w), T, S)
        L = jnp.sum(losses)
        return (L if head is None else head + L), h_T

    vg = jax.value_and_grad(objective, argnums=argnums, has_aux=True)

    def grad_fn(params, h0, xs, ys, w=None):
        w = validation.check_scan_args(cell, params, h0, xs, w)
        validation.check_ys(ys, xs.shape[0])
        return vg(params, h0, xs, ys, w)

    return grad_fn


def grads_for_weights(cell: Cell, loss_fn: LossFn, params, h0, xs, ys, ws):
    """Gradients for K link-weight vectors from one shared forward pass.

    The forward values, the loss and the loss's own cotangents do not depend
    on ``w`` (only the reverse scan does), so they are computed
    once; the K reverse scans run batched (``vmap`` over ``ws``), which also
    turns each step's ``[B, H] @ [H, G·H]`` product into a K-times larger one.

    Args:
      cell: a :class:`jbptt.cells.Cell`.
      loss_fn: per-step loss ``(params, out_t, y_t) -> scalar``.
      params, h0, xs, ys: as for :func:`value_and_grad`.
      ws: link weights ``[K, T]``, one row per estimator configuration.

    Returns:
      ``((L, h_T), grads)``: the loss and final state (shared), and the
      params gradients stacked over K (each leaf ``[K, ...]``); row k equals
      ``value_and_grad(cell, loss_fn)(params, h0, xs, ys, ws[k])[1]``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt import truncation
      >>> model = jbptt.readout(jbptt.cells.gru(), output_size=1)
      >>> params = model.init(jax.random.key(0), 2, 4)
      >>> xs, ys = jnp.ones((6, 2)), jnp.zeros((6, 1))
      >>> h0 = model.cell.initial_state(params)
      >>> ws = jnp.stack([truncation.tbptt(6, k) for k in (1, 2, 6)])
      >>> (L, h_T), g = jbptt.grads_for_weights(
      ...     model.cell, model.loss_fn, params, h0, xs, ys, ws)
      >>> g["readout"]["V"].shape
      (3, 1, 4)
    """
    validation.check_scan_args(cell, params, h0, xs, None)
    validation.check_ys(ys, xs.shape[0])
    T = xs.shape[0]
    if getattr(ws, "ndim", None) != 2 or ws.shape[1] != T:
        raise ValueError(
            f"ws must have shape (K, T) = (K, {T}), got "
            f"{getattr(ws, 'shape', type(ws).__name__)}."
        )
    validation.check_w(ws[0], T, xs.dtype)  # floating dtype
    ws = jnp.asarray(ws, xs.dtype)
    # One forward and one loss vjp, then K reverse scans: a vmap of backward.
    h_T, outs, residuals = _scan.forward(cell, params, h0, xs)
    L, loss_vjp = jax.vjp(lambda p, o: sum_of_losses(loss_fn, p, o, ys), params, outs)
    dparams_loss, douts = loss_vjp(jnp.ones_like(L))
    dh_T = jax.tree_util.tree_map(jnp.zeros_like, h_T)

    def one(w):
        dparams, _, _ = _scan._backward(cell, params, residuals, w, dh_T, douts)
        return jax.tree_util.tree_map(jnp.add, dparams, dparams_loss)

    return (L, h_T), jax.vmap(one)(ws)
