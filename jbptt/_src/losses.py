"""Per-step and per-sequence losses of a recurrent model's outputs.

A loss function is ``loss_fn(params, out_t, y_t) -> scalar``: one step's loss,
reduced over the batch by the function itself (or, with a padding mask, one
sequence's step, vmapped here over time and batch).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jbptt._src import dtypes

LossFn = Callable  # (params, out_t, y_t) -> scalar, reduced over the batch


def per_step_losses(loss_fn: LossFn, params, outs, ys) -> jax.Array:
    """[T]: ℓ_t(θ, out_t, y_t) for every step, evaluated as one batch."""
    return jax.vmap(loss_fn, in_axes=(None, 0, 0))(params, outs, ys)


def sum_of_losses(loss_fn: LossFn, params, outs, ys) -> jax.Array:
    """L = Σ_t ℓ_t(θ, out_t, y_t)."""
    return jnp.sum(per_step_losses(loss_fn, params, outs, ys))


def per_sequence_losses(loss_fn: LossFn, params, outs, ys, batch_ndim: int):
    """[T, *batch]: ℓ(θ, out_{t,b}, y_{t,b}), ``loss_fn`` called on one
    sequence's step (no batch axes) and vmapped over time and batch."""
    f = loss_fn
    for _ in range(batch_ndim + 1):
        f = jax.vmap(f, in_axes=(None, 0, 0))
    return f(params, outs, ys)


def total_loss(loss_fn: LossFn, params, outs, ys, mask=None) -> jax.Array:
    """L = Σ_t ℓ_t, or with a padding mask Σ_{t,b} mask_{t,b} ℓ(out_{t,b},
    y_{t,b}): the sum of the sequences' own losses over their real steps.

    Mixed precision: the loss is evaluated in the params' dtype (the outputs
    are cast to it), so the readout and the sum over steps are exact to it.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jbptt._src.losses import total_loss
      >>> mse = lambda p, o, y: jnp.sum((o - y) ** 2)
      >>> float(total_loss(mse, {}, jnp.ones((3, 2)), jnp.zeros((3, 2))))
      6.0
    """
    dtype = dtypes.float_dtype(params)
    if dtype is not None:
        outs = dtypes.cast(outs, dtype)
    if mask is None:
        return sum_of_losses(loss_fn, params, outs, ys)
    ls = per_sequence_losses(loss_fn, params, outs, ys, mask.ndim - 1)
    return jnp.sum(jnp.where(mask, ls, jnp.zeros((), ls.dtype)))
