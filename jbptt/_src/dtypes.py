"""The dtype rule: the floating dtype of params, the compute dtype and the
casts of the mixed-precision policy.

The recurrence runs in the compute dtype: ``compute_dtype=`` when given,
else JAX's type promotion of the params' floating dtype and that of ``xs``
(float32 params with float64 inputs run in float64, float64 params with
float32 inputs too; low precision is asked for with ``compute_dtype=``).
Params keep their own dtype, and so does their gradient. These helpers are
shared by the entry points (:mod:`jbptt._src.api`, the trainer), the core
scan, the budget interpreter and the losses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def float_dtype(params):
    """The params' floating dtype (``None`` if they have no floating leaf).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jbptt._src.dtypes import float_dtype
      >>> float_dtype({"n": jnp.zeros(2, jnp.int32), "W": jnp.zeros(2, jnp.float32)})
      dtype('float32')
    """
    for a in jax.tree_util.tree_leaves(params):
        if jnp.issubdtype(a.dtype, jnp.floating):
            return a.dtype
    return None


def compute_dtype(params, xs, given=None):
    """The dtype the recurrence runs in: ``given`` (``compute_dtype=``) when
    not ``None``, else ``jnp.promote_types`` of the params' floating dtype
    and ``xs``'s (``xs``'s own when it is not floating: its checks refuse it).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jbptt._src.dtypes import compute_dtype
      >>> p = {"W": jnp.zeros(2, jnp.float32)}
      >>> compute_dtype(p, jnp.zeros((3, 2), jnp.float64))
      dtype('float64')
      >>> compute_dtype(p, jnp.zeros((3, 2), jnp.bfloat16))
      dtype('float32')
      >>> compute_dtype(p, jnp.zeros((3, 2)), jnp.bfloat16)
      dtype(bfloat16)
    """
    if given is not None:
        return jnp.dtype(given)
    x = jnp.result_type(xs)
    p = float_dtype(params)
    if p is None or not jnp.issubdtype(x, jnp.floating):
        return x
    return jnp.promote_types(p, x)


def cast(tree, dtype):
    """Floating leaves of ``tree`` in ``dtype`` (no-op where they already are).

    Mixed precision: params are kept in their own dtype and cast once to the
    compute dtype (:func:`compute_dtype`; the scan finds ``xs`` in it) before
    a scan; the casts' transposes bring cotangents back to the params' dtype.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jbptt._src.dtypes import cast
      >>> tree = {"W": jnp.ones(2), "n": jnp.arange(2, dtype=jnp.int32)}
      >>> t = cast(tree, jnp.bfloat16)
      >>> t["W"].dtype, t["n"].dtype
      (dtype(bfloat16), dtype('int32'))
    """

    def cast_leaf(a):
        if jnp.issubdtype(a.dtype, jnp.floating) and a.dtype != dtype:
            return a.astype(dtype)
        return a

    return jax.tree_util.tree_map(cast_leaf, tree)
