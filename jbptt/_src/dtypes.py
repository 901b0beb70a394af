"""The floating dtype of params and the casts of the mixed-precision policy.

Params keep their own dtype; the recurrence runs in the compute dtype (that of
``xs``). These two helpers are shared by the core scan, the budget
interpreter and the losses.
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


def cast(tree, dtype):
    """Floating leaves of ``tree`` in ``dtype`` (no-op where they already are).

    Mixed precision: params are kept in their own dtype and cast once to the
    compute dtype (that of ``xs``) before a scan; the casts' transposes bring
    cotangents back to the params' dtype.

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
