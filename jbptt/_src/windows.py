"""A gradient estimate from explicit windows: ``ĝ = Σ_j ∇^{(w_j)} Σ_t
m_{j,t} ℓ_t`` for an :class:`~jbptt._src.estimators.Estimator`'s draw or
windows ``(w[J, T], m[J, T])`` given by hand (module
:mod:`jbptt._src.estimators`)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jbptt._src import sequences
from jbptt._src.api import rnn_scan
from jbptt._src.cell import Cell
from jbptt._src.estimators import Estimator
from jbptt._src.losses import per_step_losses


def estimate(
    cell: Cell,
    loss_fn: Callable,
    estimator,
    params,
    h0,
    xs,
    ys,
    key: jax.Array | None = None,
):
    """The gradient estimate ``ĝ = Σ_j ∇^{(w_j)} Σ_t m_{j,t} ℓ_t``.

    Windows are evaluated as one ``vmap`` over ``j``; the forward does not
    depend on ``w``, so it is shared by all windows and only the reverse scan
    is batched. Works under ``jit`` and ``vmap`` (e.g. over keys).

    Args:
      cell: a :class:`jbptt.cells.Cell`.
      loss_fn: per-step loss ``(params, out_t, y_t) -> scalar``.
      estimator: an :class:`Estimator` (sampled with ``key``) or windows
        ``(w[J, T], m[J, T])`` (or a single ``w[T]``, meaning ``m ≡ 1``).
      params, h0, xs, ys: as in :func:`jbptt.value_and_grad`.
      key: PRNG key for random estimators (ignored by deterministic ones).

    Returns:
      The gradient estimate, a pytree like ``params``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt import estimators
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> p = model.init(jax.random.key(0), 2, 3)
      >>> xs, ys = jnp.ones((6, 2)), jnp.zeros((6, 1))
      >>> h0 = model.cell.initial_state(p)
      >>> g = estimators.estimate(model.cell, model.loss_fn,
      ...                         estimators.williams_peng(2, 4), p, h0, xs, ys)
      >>> g["cell"]["W"].shape
      (3, 3)
    """
    xs = sequences.as_inputs(cell, params, xs)  # integer token ids -> float ids
    T = xs.shape[0]
    if isinstance(estimator, Estimator):
        if key is None:
            if not estimator.deterministic:
                raise ValueError(
                    f"estimator {estimator.name} is random: pass a PRNG key."
                )
            key = jax.random.key(0)
        w, m = estimator.sample(key, T)
    elif isinstance(estimator, tuple | list) and len(estimator) == 2:
        w, m = (jnp.asarray(a) for a in estimator)
    elif hasattr(estimator, "shape"):
        w = jnp.asarray(estimator)[None]
        m = jnp.ones_like(w)
    else:
        raise TypeError(
            "estimator must be an Estimator, a (w[J, T], m[J, T]) pair or "
            f"link weights w[T], got {type(estimator).__name__}."
        )
    if w.ndim != 2 or w.shape != m.shape or w.shape[1] != T:
        raise ValueError(
            f"windows must be w[J, T] and m[J, T] with T = {T} (len(xs)); got "
            f"w {tuple(w.shape)} and m {tuple(m.shape)}."
        )
    dtype = xs.dtype
    w, m = w.astype(dtype), m.astype(dtype)

    def window_loss(params, w_j, m_j):
        _, outs = rnn_scan(cell, params, h0, xs, w_j)
        losses = per_step_losses(loss_fn, params, outs, ys)
        return jnp.sum(m_j * losses)

    grads = jax.vmap(jax.grad(window_loss), in_axes=(None, 0, 0))(params, w, m)
    return jax.tree_util.tree_map(lambda g: jnp.sum(g, axis=0), grads)
