"""A scan that may stop early: the loop under every forward and reverse scan."""

from __future__ import annotations

import jax
import jax.numpy as jnp

tree_map = jax.tree_util.tree_map


def loop(body, carry, xs, steps=None, reverse=False, unroll=1):
    """``lax.scan(body, carry, xs, reverse=reverse)`` over the first ``steps``
    steps only.

    ``steps`` is an int scalar (may be traced) or ``None`` (all steps, a plain
    ``lax.scan``). Otherwise a ``while_loop`` whose trip count is ``steps``
    runs, so the work is proportional to the real steps of a padded bucket.
    The stacked outputs keep their static length T and are zero after
    ``steps``; in reverse, the loop runs t = steps − 1, …, 0.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jbptt._src.loops import loop
      >>> c, ys = loop(lambda c, x: (c + x, c), 0.0, jnp.arange(5.0), steps=3)
      >>> float(c), ys.tolist()
      (3.0, [0.0, 0.0, 1.0, 0.0, 0.0])
    """
    if steps is None:
        return jax.lax.scan(body, carry, xs, reverse=reverse, unroll=unroll)
    T = jax.tree_util.tree_leaves(xs)[0].shape[0]
    _, out = jax.eval_shape(body, carry, tree_map(lambda a: a[0], xs))
    stacked = tree_map(lambda o: jnp.zeros((T, *o.shape), o.dtype), out)

    def step(state):
        i, c, ys = state
        t = steps - 1 - i if reverse else i
        c, y = body(
            c, tree_map(lambda a: jax.lax.dynamic_index_in_dim(a, t, 0, False), xs)
        )
        ys = tree_map(
            lambda b, v: jax.lax.dynamic_update_index_in_dim(b, v, t, 0), ys, y
        )
        return i + 1, c, ys

    i0 = jnp.zeros((), jnp.asarray(steps).dtype)
    _, carry, stacked = jax.lax.while_loop(
        lambda state: state[0] < steps, step, (i0, carry, stacked)
    )
    return carry, stacked
