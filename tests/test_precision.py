"""Mixed precision: float32 params, bfloat16/float16 compute.

The policy (``jbptt.value_and_grad``'s ``compute_dtype``): params and their
gradient stay float32; xs, h0, the recurrence and its reverse scan run in the
compute dtype; weight cotangents are summed over steps and the loss evaluated
in float32. Gradient error against the all-float32 gradient is bounded by
4 eps of the compute dtype (eps = 2^-7 for bfloat16, 2^-10 for float16).
Measured at T=20, B=4, H=8: at most 2.1 eps (bfloat16, Elman-ReLU, where a
rounding flips which units are active), at most 1 eps for every other cell
and dtype, so 4 eps leaves room for other seeds and platforms while still
failing if any piece (e.g. the sum over steps) ran at the compute precision
with the error growing in T, or if the result were not a gradient at all.
"""

import jax
import jax.numpy as jnp
import pytest
from helpers import CELLS, problem, rel_err

import jbptt

BUILT_IN = ["elman_tanh", "elman_identity", "elman_relu", "elman_nobias", "lstm", "gru"]


def _f32(tree):
    return jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float32) if jnp.issubdtype(a.dtype, jnp.floating) else a,
        tree,
    )


@pytest.mark.parametrize("name", [*BUILT_IN, "from_fn"])
def test_gradient_error_against_float32(name):
    model, *data = problem(CELLS[name](), T=20, batch=(4,), H=8)
    params, h0, xs, ys = _f32(data)
    (L, _), g = jbptt.value_and_grad(model.cell, model.loss_fn)(params, h0, xs, ys)
    for dtype in (jnp.bfloat16, jnp.float16):
        vg = jbptt.value_and_grad(model.cell, model.loss_fn, compute_dtype=dtype)
        (L_c, h_T), g_c = vg(params, h0, xs, ys)
        # params' dtype for the gradient and the loss, compute dtype for h_T
        assert {a.dtype for a in jax.tree_util.tree_leaves(g_c)} == {
            jnp.dtype(jnp.float32)
        }
        assert L_c.dtype == jnp.float32
        assert {a.dtype for a in jax.tree_util.tree_leaves(h_T)} == {jnp.dtype(dtype)}
        eps = float(jnp.finfo(dtype).eps)
        assert rel_err(g_c, g) <= 4 * eps, (jnp.dtype(dtype).name, rel_err(g_c, g))
        assert rel_err(L_c, L) <= 4 * eps


def test_rnn_scan_takes_low_precision_inputs_with_float32_params():
    # xs and h0 in bfloat16 with float32 params: the recurrence runs in their
    # promotion (float32); the cotangents of xs and h0 come back in bfloat16.
    cell = CELLS["lstm"]()
    _, params, h0, xs, _ = problem(cell, T=8, batch=(2,))
    params, h0, xs = _f32((params, h0, xs))
    p = params["cell"]
    h0_b, xs_b = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), (h0, xs))

    def f(p, xs, h0):
        h_T, outs = jbptt.rnn_scan(cell, p, h0, xs, lengths=jnp.array([8, 5]))
        return jnp.sum(outs.astype(jnp.float32) ** 2)

    g, gx, gh = jax.grad(f, (0, 1, 2))(p, xs_b, h0_b)
    ref = jax.grad(f)(p, xs, h0)
    assert {a.dtype for a in jax.tree_util.tree_leaves(g)} == {jnp.dtype(jnp.float32)}
    assert gx.dtype == jnp.bfloat16 and gh[0].dtype == jnp.bfloat16
    assert rel_err(g, ref) <= 4 * float(jnp.finfo(jnp.bfloat16).eps)
