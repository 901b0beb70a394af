"""Checkpointed mode and the shared-forward multi-weight gradients.

``adjoint=jbptt.ReverseScan(checkpoint="sqrt")`` (or a segment length) must give the
same values and gradients as the plain reverse scan, with link weights, for every cell
kind; ``grads_for_weights`` must equal K separate ``value_and_grad`` calls.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jbptt
from jbptt import cells, truncation


def loss_fn(params, out_t, y_t):
    del params
    return 0.5 * jnp.mean((out_t - y_t) ** 2)


def _generic():
    def init(key, i, h):
        k1, k2 = jax.random.split(key)
        return {
            "A": 0.4 * jax.random.normal(k1, (h, h)) / jnp.sqrt(h),
            "B": jax.random.normal(k2, (h, i)),
        }

    def step(p, state, x):
        h, m = state  # a two-part state, no reverse rules
        h = jnp.tanh(h @ p["A"].T + x @ p["B"].T + 0.5 * m)
        return (h, 0.9 * m + 0.1 * h), h

    def initial_state(p, batch_shape=()):
        z = jnp.zeros(batch_shape + (p["A"].shape[0],))
        return (z, z)

    return cells.from_fn(init, step, initial_state, name="generic")


CELLS = {
    "elman": cells.elman,
    "lstm": cells.lstm,
    "gru": cells.gru,
    "generic": _generic,
}


def _problem(name, T=23, B=2, I=3, H=5):
    cell = CELLS[name]()
    k = jax.random.split(jax.random.key(7), 4)
    params = cell.init(k[0], I, H)
    h0 = jax.tree_util.tree_map(
        lambda a: 0.3 * jax.random.normal(k[1], a.shape, a.dtype),
        cell.initial_state(params, (B,)),
    )
    xs = jax.random.normal(k[2], (T, B, I))
    ys = jax.random.normal(k[3], (T, B, H))
    return cell, params, h0, xs, ys


def _max_rel(a, b):
    errs = [
        float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(y)) + 1e-300))
        for x, y in zip(
            jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True
        )
    ]
    return max(errs)


def _weights(T):
    key = jax.random.key(3)
    return {
        "full": None,
        "tbptt": truncation.tbptt(T, 4),
        "random": jax.random.uniform(key, (T,), minval=0.0, maxval=2.0),
    }


@pytest.mark.parametrize(
    "name, checkpoint",
    [(name, "sqrt") for name in CELLS] + [("elman", 1), ("lstm", 4), ("generic", 7)],
)
def test_value_and_grad_checkpoint_matches_plain(name, checkpoint):
    cell, params, h0, xs, ys = _problem(name)
    plain = jax.jit(jbptt.value_and_grad(cell, loss_fn, argnums=(0, 1)))
    ck = jax.jit(
        jbptt.value_and_grad(
            cell,
            loss_fn,
            argnums=(0, 1),
            adjoint=jbptt.ReverseScan(checkpoint=checkpoint),
        )
    )
    for w in _weights(xs.shape[0]).values():
        (L0, hT0), g0 = plain(params, h0, xs, ys, w)
        (L1, hT1), g1 = ck(params, h0, xs, ys, w)
        assert abs(float(L1 - L0)) <= 1e-12 * abs(float(L0))
        assert _max_rel(hT1, hT0) <= 1e-12
        assert _max_rel(g1, g0) <= 1e-10


@pytest.mark.parametrize("name", list(CELLS))
def test_default_equals_every_forced_checkpoint(name):
    """The default segmenting (every step stored: the fastest measured, see
    docs/design.md) and each forced one give the same loss, state and
    gradients (float64), with link weights and a reset."""
    cell, params, h0, xs, ys = _problem(name)
    T = xs.shape[0]
    resets = jnp.zeros((T, 2), bool).at[9, 1].set(True)
    w = _weights(T)["random"]
    default = jax.jit(jbptt.value_and_grad(cell, loss_fn, argnums=(0, 1)))
    (L0, hT0), g0 = default(params, h0, xs, ys, w, resets=resets)
    forced = [jbptt.ReverseScan(checkpoint=s) for s in (None, 1, 5, T - 1, T, "sqrt")]
    for checkpoint in [*forced, jbptt.Budget(max_states=3)]:
        vg = jbptt.value_and_grad(cell, loss_fn, argnums=(0, 1), adjoint=checkpoint)
        (L1, hT1), g1 = jax.jit(vg)(params, h0, xs, ys, w, resets=resets)
        assert abs(float(L1 - L0)) <= 1e-12 * abs(float(L0)), checkpoint
        assert _max_rel(hT1, hT0) <= 1e-12, checkpoint
        assert _max_rel(g1, g0) <= 1e-10, checkpoint


@pytest.mark.parametrize("name", ["lstm", "generic"])
def test_rnn_scan_checkpoint_matches_plain(name):
    cell, params, h0, xs, ys = _problem(name, T=17)
    w = _weights(17)["random"]

    def f(params, h0, checkpoint):
        h_T, outs = jbptt.rnn_scan(
            cell, params, h0, xs, w, adjoint=jbptt.ReverseScan(checkpoint=checkpoint)
        )
        return jnp.sum(jnp.sin(outs) * ys) + sum(
            jnp.sum(a**2) for a in jax.tree_util.tree_leaves(h_T)
        )

    grad = jax.jit(jax.grad(f, argnums=(0, 1)), static_argnums=2)
    g0 = grad(params, h0, None)
    for checkpoint in ("sqrt", 5, 16):
        np.testing.assert_allclose(
            f(params, h0, checkpoint), f(params, h0, None), rtol=1e-12
        )
        assert _max_rel(grad(params, h0, checkpoint), g0) <= 1e-10


def test_checkpoint_matches_jax_grad_reference():
    """Full BPTT through the checkpointed scan is ordinary autodiff."""
    model = jbptt.readout(cells.gru(), output_size=2)
    params = model.init(jax.random.key(0), 3, 6)
    xs = jax.random.normal(jax.random.key(1), (30, 3))
    ys = jax.random.normal(jax.random.key(2), (30, 2))
    h0 = model.cell.initial_state(params)
    ref = jax.grad(jbptt.loss(model.cell, model.loss_fn), has_aux=True)
    vg = jbptt.value_and_grad(
        model.cell, model.loss_fn, adjoint=jbptt.ReverseScan(checkpoint="sqrt")
    )
    assert _max_rel(vg(params, h0, xs, ys)[1], ref(params, h0, xs, ys)[0]) <= 1e-10


def test_checkpoint_stores_fewer_states():
    """Compiled temporaries shrink when only segment starts are kept."""
    cell, params, h0, xs, ys = _problem("lstm", T=1024, B=1, I=2, H=32)

    def temp(checkpoint):
        vg = jbptt.value_and_grad(
            cell, loss_fn, adjoint=jbptt.ReverseScan(checkpoint=checkpoint)
        )
        m = jax.jit(vg).lower(params, h0, xs, ys).compile().memory_analysis()
        return m.temp_size_in_bytes

    assert temp("sqrt") < 0.2 * temp(None)


@pytest.mark.parametrize("bad", ["log", 0, -3, 2.5, True])
def test_bad_checkpoint_is_rejected(bad):
    cell, params, h0, xs, ys = _problem("elman")
    adjoint = jbptt.ReverseScan(checkpoint=bad)
    with pytest.raises(ValueError, match="checkpoint"):
        jbptt.value_and_grad(cell, loss_fn, adjoint=adjoint)(params, h0, xs, ys)
    with pytest.raises(ValueError, match="checkpoint"):
        jbptt.rnn_scan(cell, params, h0, xs, adjoint=adjoint)


@pytest.mark.parametrize("name", list(CELLS))
def test_grads_for_weights_matches_separate_calls(name):
    cell, params, h0, xs, ys = _problem(name)
    T = xs.shape[0]
    ws = jnp.stack([w if w is not None else jnp.ones(T) for w in _weights(T).values()])
    multi = jax.jit(lambda *a: jbptt.grads_for_weights(cell, loss_fn, *a))
    (L, h_T), grads = multi(params, h0, xs, ys, ws)
    vg = jax.jit(jbptt.value_and_grad(cell, loss_fn))
    for k in range(ws.shape[0]):
        (L_k, h_T_k), g_k = vg(params, h0, xs, ys, ws[k])
        np.testing.assert_allclose(L, L_k, rtol=1e-12)
        assert _max_rel(h_T, h_T_k) <= 1e-12
        g_row = jax.tree_util.tree_map(lambda a, k=k: a[k], grads)
        assert _max_rel(g_row, g_k) <= 1e-10


def test_grads_for_weights_rejects_bad_ws():
    cell, params, h0, xs, ys = _problem("elman")
    with pytest.raises(ValueError, match="ws must have shape"):
        jbptt.grads_for_weights(cell, loss_fn, params, h0, xs, ys, jnp.ones(23))
    with pytest.raises(ValueError, match="ws must have shape"):
        jbptt.grads_for_weights(cell, loss_fn, params, h0, xs, ys, jnp.ones((2, 5)))
    with pytest.raises(TypeError, match="floating"):
        ws = jnp.ones((2, 23), jnp.int32)
        jbptt.grads_for_weights(cell, loss_fn, params, h0, xs, ys, ws)
