"""Batches of real sequences: variable lengths, padding masks and resets.

A batch ``xs [T, *batch, I]`` may hold sequences of different lengths
(``lengths [*batch]``, or a boolean mask ``[T, *batch]`` that is true on real
steps) and streams of concatenated episodes (``resets [T, *batch]``, true at
the first step of each new episode, as in streaming RL). The recurrence with
both, per sequence and with link weight ``w_t``::

    h̃_{t-1} = h0 if resets_t else h_{t-1}
    h_t     = f(θ, h̃_{t-1}, x_t) if mask_t else h_{t-1}      (padding: frozen)
    out_t   = out of that step if mask_t else 0

so ``h_T`` is each sequence's state after its last real step, padded steps add
no loss and no gradient, and a reset cuts the link into the previous episode:
the cotangent that would reach ``h_{t-1}`` goes to ``h0`` instead. Link
weights scale the link through the cell's step; a padded step passes the state
(and its cotangent) through unchanged.

The checks here run at trace time on shapes and dtypes; the range of
``lengths`` (1 ≤ length ≤ T) is checked whenever its values are concrete.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jbptt._src import validation
from jbptt._src.cell import token_vocab

tree_map = jax.tree_util.tree_map


def _describe(a) -> str:
    return f"shape {tuple(np.shape(a))} and dtype {jnp.result_type(a)}"


def _is_concrete(a) -> bool:
    return not isinstance(a, jax.core.Tracer)


def check_mask(lengths, T: int, batch_shape: tuple[int, ...]):
    """The padding mask ``[T, *batch]`` (bool) from ``lengths``, or ``None``.

    Args:
      lengths: ``None``; integer lengths of shape ``batch_shape`` (each in
        ``[1, T]``); or a boolean mask of shape ``(T, *batch_shape)``, true on
        real steps.
      T: number of time steps of ``xs``.
      batch_shape: batch shape of ``xs``.

    Raises:
      ValueError: wrong shape, or a length outside ``[1, T]``.
      TypeError: a dtype other than integer (lengths) or bool (mask).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jbptt._src.sequences import check_mask
      >>> check_mask(jnp.array([2, 3]), 3, (2,)).astype(int).T.tolist()
      [[1, 1, 0], [1, 1, 1]]
    """
    if lengths is None:
        return None
    if isinstance(lengths, int | list | tuple) and not isinstance(lengths, bool):
        lengths = np.asarray(lengths)
    if not hasattr(lengths, "shape"):
        raise TypeError(
            f"lengths must be an integer array of shape {batch_shape} or a boolean "
            f"mask of shape {(T, *batch_shape)}, got {type(lengths).__name__}."
        )
    shape, dtype = tuple(np.shape(lengths)), jnp.result_type(lengths)
    if shape == (T, *batch_shape) and shape != batch_shape:
        if dtype != jnp.bool_:
            raise TypeError(
                f"lengths given as a [T, *batch] mask must be boolean (true on real "
                f"steps), got {_describe(lengths)}; use mask.astype(bool)."
            )
        return jnp.asarray(lengths)
    if shape != batch_shape:
        raise ValueError(
            f"lengths must have the batch shape of xs {batch_shape} (one length per "
            f"sequence) or be a boolean mask of shape {(T, *batch_shape)}, got "
            f"{_describe(lengths)}."
        )
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(
            f"lengths must be integers (steps per sequence), got {_describe(lengths)}."
        )
    if _is_concrete(lengths):
        bad = np.asarray(lengths)
        if bad.size and (bad.min() < 1 or bad.max() > T):
            raise ValueError(
                f"lengths must lie in [1, T] = [1, {T}], got values from "
                f"{bad.min()} to {bad.max()}."
            )
    t = jnp.arange(T).reshape((T,) + (1,) * len(batch_shape))
    return t < jnp.asarray(lengths)[None]


def check_resets(resets, T: int, batch_shape: tuple[int, ...]):
    """``resets`` as a bool array ``[T, *batch]`` (or ``None``), checked.

    Raises:
      ValueError: wrong shape.
      TypeError: not boolean.
    """
    if resets is None:
        return None
    if not hasattr(resets, "shape"):
        raise TypeError(
            f"resets must be a boolean array of shape {(T, *batch_shape)}, got "
            f"{type(resets).__name__}."
        )
    if tuple(resets.shape) != (T, *batch_shape):
        raise ValueError(
            f"resets must have shape (T, *batch) = {(T, *batch_shape)} (true where "
            f"a new episode starts), got {_describe(resets)}."
        )
    if jnp.result_type(resets) != jnp.bool_:
        raise TypeError(
            f"resets must be boolean (true where a new episode starts), got "
            f"{_describe(resets)}; use resets.astype(bool)."
        )
    return jnp.asarray(resets)


def as_inputs(cell, params, xs):
    """``xs`` as the floating inputs the scan takes.

    Integer token ids ``[T, *batch]`` given to a token cell (see
    :func:`jbptt._src.cell.token_vocab`) become float ids ``[T, *batch, 1]``
    in the params' floating dtype (exact below 2^24 in float32): the cell's
    embedding looks them up again, so its fast path is unchanged. The
    conversion is part of the traced function, so the cotangent of integer
    ``xs`` is JAX's ``float0``. Anything else is returned as it is (and
    checked later).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt._src.sequences import as_inputs
      >>> model = jbptt.readout(jbptt.cells.elman(), 3, "xent", vocab_size=3)
      >>> p = model.init(jax.random.key(0), 2, 4)
      >>> as_inputs(model.cell, p, jnp.array([[0, 2], [1, 1]])).shape
      (2, 2, 1)
    """
    if token_vocab(cell) is None or not hasattr(xs, "dtype"):
        return xs
    if not jnp.issubdtype(jnp.result_type(xs), jnp.integer):
        return xs
    dtype = jnp.zeros((), float).dtype
    for a in jax.tree_util.tree_leaves(params):
        if jnp.issubdtype(jnp.result_type(a), jnp.floating):
            dtype = jnp.result_type(a)
            break
    return jnp.asarray(xs)[..., None].astype(dtype)


def check_args(cell, params, h0, xs, w, lengths, resets):
    """All checks of a scan over a batch of sequences: the core's
    (:func:`jbptt._src.validation.check_scan_args`), then link weights,
    lengths and resets. Returns ``(w, mask, resets)``."""
    from jbptt._src import validation

    validation.check_scan_args(cell, params, h0, xs, None)
    T, batch_shape = xs.shape[0], tuple(xs.shape[1:-1])
    w = check_link_weights(w, T, batch_shape, xs.dtype)
    return w, check_mask(lengths, T, batch_shape), check_resets(resets, T, batch_shape)


def reset_target(cell, params, h0, xs, resets, reset_state):
    """The state a reset restarts from: ``reset_state`` (checked like ``h0``),
    by default ``h0``; ``None`` without resets."""
    if resets is None:
        return None
    if reset_state is None:
        return h0
    from jbptt._src import validation

    try:
        validation.check_h0(cell, params, reset_state, tuple(xs.shape[1:-1]), xs.dtype)
    except (TypeError, ValueError) as err:
        raise type(err)(f"reset_state (checked like h0): {err}") from err
    return reset_state


def check_link_weights(w, T: int, batch_shape: tuple[int, ...], dtype):
    """Link weights ``[T]`` (shared by the batch) or ``[T, *batch]`` (per
    sequence), floating, cast to ``dtype``; ones when ``None``."""
    if w is None:
        return jnp.ones((T,), dtype)
    if isinstance(w, list | tuple):
        w = np.asarray(w)
    if not hasattr(w, "shape") or not hasattr(w, "dtype"):
        raise TypeError(
            f"w (link weights) must be an array of shape ({T},), got "
            f"{type(w).__name__}."
        )
    shape = tuple(np.shape(w))
    if shape not in ((T,), (T, *batch_shape)):
        raise ValueError(
            f"w (link weights) must have shape (T,) = ({T},), got {shape}; one "
            f"weight per sequence would be (T, *batch) = {(T, *batch_shape)}."
        )
    if not jnp.issubdtype(jnp.result_type(w), jnp.floating):
        raise TypeError(f"w (link weights) must be floating, got {jnp.result_type(w)}.")
    if not validation.is_traced(w):  # concrete values: finite and ≥ 0
        a = np.asarray(w, np.float64).reshape(-1)
        bad = ~(np.isfinite(a) & (a >= 0))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"w (link weights) must be finite and ≥ 0, got w[{i}] = {a[i]}."
            )
    return jnp.asarray(w, dtype)


def check_ys_batched(ys, T: int, batch_shape: tuple[int, ...]) -> None:
    """With a padding mask the loss is evaluated per sequence, so every leaf of
    ``ys`` needs the axes ``(T, *batch)`` in front."""
    lead = (T, *batch_shape)
    for leaf in jax.tree_util.tree_leaves(ys):
        if tuple(np.shape(leaf))[: len(lead)] != lead:
            raise ValueError(
                f"with lengths, ys must be time-major with the batch axes of xs, "
                f"(T, *batch, ...) = {lead} + ..., got a leaf of shape "
                f"{tuple(np.shape(leaf))}."
            )


def bcast(v, a):
    """``v [*batch]`` (or a scalar) shaped to broadcast against a state leaf
    ``a [*batch, ...]``: trailing unit axes."""
    v = jnp.asarray(v)
    if v.ndim == 0 or v.ndim == a.ndim:  # broadcasts as it is: no op added
        return v
    return v.reshape(v.shape + (1,) * (a.ndim - v.ndim))


def select(m, on, off):
    """Per sequence: ``on`` where ``m`` (``[*batch]`` bool), else ``off``
    (pytrees of arrays with leading batch axes)."""
    return tree_map(lambda a, b: jnp.where(bcast(m, a), a, b), on, off)


def zero_padding(mask, outs):
    """``outs [T, *batch, ...]`` with padded steps set to zero."""
    return tree_map(
        lambda a: jnp.where(bcast(mask, a), a, jnp.zeros((), a.dtype)), outs
    )
