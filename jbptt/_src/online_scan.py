"""The sequence estimate and the training segment of an online estimator,
as scans of its one-step rule (:func:`scans`), and the carry they share
(:class:`OnlineState`)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jbptt._src import sequences, validation

tree_map = jax.tree_util.tree_map


class OnlineState(NamedTuple):
    """Carry of an online estimator: the cell state and the influence."""

    h: Any
    influence: Any


def scans(init, step, windowed=None):
    """``(estimate, segment)`` of :class:`jbptt.forward_mode.OnlineEstimator`
    from ``init`` and ``step``: scans of ``step``, or, where
    ``windowed(cell)`` gives one, a run of many steps at once under the
    fixed params (``(cell, loss_fn, params, h, influence, xs, ys, keep,
    resets, h_reset) -> (losses, Σ_t g_t, h, influence)``, the same sums)."""

    def estimate(key, cell, loss_fn, params, h0, xs, ys, *, resets=None,
                 reset_state=None):  # fmt: skip
        xs = sequences.as_inputs(cell, params, xs)  # integer token ids -> float ids
        validation.check_scan_args(cell, params, h0, xs, None)
        validation.check_ys(ys, xs.shape[0])
        batch_shape = tuple(xs.shape[1:-1])
        resets = sequences.check_resets(resets, xs.shape[0], batch_shape)
        h_reset = sequences.reset_target(cell, params, h0, xs, resets, reset_state)
        state = init(cell, params, h0, xs[0])
        keep = jnp.ones(xs.shape[:1], xs.dtype)  # Σ_t g_t: a segment of real steps
        losses, g, h, _ = segment(
            cell, loss_fn, params, state.h, state.influence, xs, ys, None, keep,
            key, resets, h_reset,
        )  # fmt: skip
        return (jnp.sum(losses), h), g

    def segment(cell, loss_fn, params, h, influence, xs, ys, w, mask, key,
                resets=None, reset_state=None):  # fmt: skip
        # Σ_t g_t over the segment's real steps, params fixed within it.
        # resets [n, *batch] (false on padding) restart from reset_state.
        run = None if windowed is None else windowed(cell)
        if run is not None:
            losses, g, h, influence = run(
                cell, loss_fn, params, h, influence, xs, ys, mask, resets,
                reset_state,
            )  # fmt: skip
            return losses, g, h, influence

        def body(carry, inp):
            state, acc = carry
            k, x_t, y_t, m_t, r_t = inp
            new, (loss, g) = step(
                cell, loss_fn, k, params, state, x_t, y_t, r_t, reset_state
            )
            keep = m_t > 0  # padded steps leave state and gradient alone
            state = tree_map(lambda a, b: jnp.where(keep, a, b), new, state)
            acc = tree_map(lambda a, b: a + jnp.where(keep, b, 0.0), acc, g)
            return (state, acc), jnp.where(keep, loss, 0.0)

        keys = jax.random.split(key, xs.shape[0])
        zeros = tree_map(jnp.zeros_like, params)
        carry = (OnlineState(h, influence), zeros)
        (state, g), losses = jax.lax.scan(body, carry, (keys, xs, ys, mask, resets))
        return losses, g, state.h, state.influence

    return estimate, segment
