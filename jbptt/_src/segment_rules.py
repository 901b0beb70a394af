"""The truncation estimators' online segment functions (the traced half of
their :class:`jbptt.estimators.OnlineRule`): one segment's gradient, a
forward-only block and one block of a split segment.

A segment ``[s, e]`` of the stream runs the reverse scan with the segment's
link weights ``w`` (1 for TBPTT, ARTBP's ``1/(1 − c_t)`` compensation), its
carried state entering with the gradient stopped (the cut before it):

    g_seg = ∇_θ^{(w)} Σ_{t=s}^{e} ℓ_t(θ, h_t, y_t),  h_{s−1} = stop_gradient(·).

A segment longer than the longest compiled bucket is split into blocks:
forward through them (:func:`truncation_advance`), then :func:`truncation_block`
from the last one back, each handing ``dh_start`` (the cotangent leaving
through its first link) to the block before. The reverse scan is linear in
its cotangents, so the blocks' gradients sum to the segment's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jbptt._src import sequences
from jbptt._src.api import rnn_scan
from jbptt._src.losses import per_step_losses

tree_map = jax.tree_util.tree_map


def no_state(cell, params, h0, x0):
    """``OnlineRule.init`` of a stateless estimator: carries ``()``."""
    return ()


def _scan_keywords(n, resets, reset_state, adjoint) -> dict:
    """``rnn_scan``'s keywords for a segment of ``n`` real steps: its loops
    stop there where the strategy takes ``steps=``; other strategies run the
    padded steps too, which carry no loss and so no gradient."""
    kw = dict(resets=resets, reset_state=reset_state, adjoint=adjoint)
    if adjoint is None or adjoint.takes_steps:
        kw["steps"] = n
    return kw


def _outputs_and_last(cell, params, h, xs, w, mask, kw):
    """The segment's outputs and its state after its real steps:
    ``rnn_scan``'s ``h_T``, its cotangent carried by the reverse pass, with
    the cell as it is (a diagonal stack keeps its layer-by-layer path).

    Where the loops stop at the real steps (``steps=`` taken) ``h_T`` is that
    state; otherwise the padding is a ``lengths`` mask, on which the state
    stays and the outputs are zero (the losses there are masked anyway)."""
    if "steps" not in kw:
        real = (mask > 0).reshape((-1,) + (1,) * (xs.ndim - 2))
        kw = dict(kw, lengths=jnp.broadcast_to(real, xs.shape[:-1]))
    h_last, outs = rnn_scan(cell, params, h, xs, w, **kw)
    return outs, h_last


def truncation_segment(
    cell, loss_fn, params, h, est_state, xs, ys, w, mask, key, resets=None,
    reset_state=None, adjoint=None,
):  # fmt: skip
    """One online segment: the reverse scan with the segment's link weights
    ``w`` and the carried state entering with its gradient stopped.
    ``resets [n, *batch]``: episode starts, from ``reset_state`` (the link
    into the previous step cut, :func:`jbptt.rnn_scan`). ``adjoint``: how the
    reverse pass runs (``None``: ``jbptt.ReverseScan()``). Returns ``(losses,
    grads, h_last, est_state)``."""
    n = jnp.sum(mask).astype(int)  # real steps: the loops stop there
    kw = _scan_keywords(n, resets, reset_state, adjoint)

    def seg_loss(params):
        outs, h_last = _outputs_and_last(cell, params, h, xs, w, mask, kw)
        losses = jnp.where(mask > 0, per_step_losses(loss_fn, params, outs, ys), 0.0)
        return jnp.sum(losses), (losses, h_last)

    (_, (losses, h_last)), g = jax.value_and_grad(seg_loss, has_aux=True)(params)
    return losses, g, jax.lax.stop_gradient(h_last), est_state


def truncation_advance(cell, params, h, xs, mask, resets=None, reset_state=None):
    """The state after the block's real steps, forward only (the blocks
    before the last of a split segment); resets restart from
    ``reset_state``."""

    def body(t, h):
        x = jax.lax.dynamic_index_in_dim(xs, t, 0, False)
        if resets is not None:
            r = jax.lax.dynamic_index_in_dim(resets, t, 0, False)
            h = sequences.select(r, reset_state, h)
        return cell.step(params, h, x)[0]

    n = jnp.sum(mask).astype(int)  # the real steps only
    return jax.lax.fori_loop(jnp.zeros_like(n), n, body, h)


def truncation_block(
    cell, loss_fn, params, h, xs, ys, w, mask, dh_end, resets=None, reset_state=None,
    adjoint=None,
):  # fmt: skip
    """One block of a split segment: the gradient of the block's losses plus
    ``⟨dh_end, h_last⟩`` (``dh_end``: the cotangent arriving from the later
    blocks), and ``dh_start``, the cotangent leaving through the block's
    first link (scaled by ``w[0]``), to hand to the block before."""
    n = jnp.sum(mask).astype(int)  # real steps: the loops stop there
    kw = _scan_keywords(n, resets, reset_state, adjoint)

    def block_loss(params, h):
        outs, h_last = _outputs_and_last(cell, params, h, xs, w, mask, kw)
        losses = jnp.where(mask > 0, per_step_losses(loss_fn, params, outs, ys), 0.0)
        carried = sum(  # ⟨dh_end, h_last⟩ whose gradient in h_last is dh_end
            jnp.sum(jnp.real(a * b))  # (complex states too: JAX's convention)
            for a, b in zip(
                jax.tree_util.tree_leaves(h_last),
                jax.tree_util.tree_leaves(dh_end),
                strict=True,
            )
        )
        return jnp.sum(losses) + carried, (losses, h_last)

    grad = jax.value_and_grad(block_loss, argnums=(0, 1), has_aux=True)
    (_, (losses, h_last)), (g, dh_start) = grad(params, h)
    return losses, g, jax.lax.stop_gradient(h_last), dh_start
