"""Integer token ids as xs: a token model (``jbptt.readout(...,
vocab_size=V)``) takes ``[T, *batch]`` int ids in ``loss``,
``value_and_grad``, ``rnn_scan`` and ``forward``; the embedding's gradient
equals ``jax.grad`` of a plain ``lax.scan`` forward with the lookup; other
cells refuse integer xs, naming xs and ``vocab_size=``."""

import jax
import jax.numpy as jnp
import pytest
from jax.flatten_util import ravel_pytree

import jbptt
from jbptt import cells, truncation

T, B, V = 7, 3, 6


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _plain_loss(cell, loss_fn, params, h0, tokens, ys, w):
    """Σ_t ℓ_t by lax.scan of the cell on E[token_t], link weights on the
    state entering each step."""

    def body(h, inp):
        tok, y, w_t = inp
        h = jax.tree_util.tree_map(
            lambda a: a + (w_t - 1) * (a - jax.lax.stop_gradient(a)), h
        )
        h, out = cell.step(params["cell"], h, params["embed"][tok])
        return h, loss_fn(params, out, y)

    _, losses = jax.lax.scan(body, h0, (tokens, ys, w))
    return jnp.sum(losses)


def _tokens(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return (
        jax.random.randint(k1, (T, B), 0, V, jnp.int32),
        jax.random.randint(k2, (T, B), 0, V, jnp.int32),
    )


def _equals_plain(cell, model, params, h0, tokens, ys, w):
    """value_and_grad of the token model equals jax.grad of the plain scan
    (the embedding's gradient too); returns the plain gradient."""
    (L, _), g = jbptt.value_and_grad(model.cell, model.loss_fn)(
        params, h0, tokens, ys, w
    )
    L_ref, g_ref = jax.value_and_grad(_plain_loss, argnums=2)(
        cell, model.loss_fn, params, h0, tokens, ys, w
    )
    assert abs(float(L - L_ref)) <= 1e-12 * abs(float(L_ref))
    assert _rel(g["embed"], g_ref["embed"]) <= 1e-10
    assert _rel(ravel_pytree(g)[0], ravel_pytree(g_ref)[0]) <= 1e-10
    return g_ref


@pytest.mark.parametrize(
    "cell_name, truncated", [("elman", True), ("lstm", False), ("gru", True)]
)
def test_value_and_grad_of_token_ids(cell_name, truncated):
    cell = getattr(cells, cell_name)()
    model = jbptt.readout(cell, V, "xent", vocab_size=V)
    params = model.init(jax.random.key(1), 4, 5)
    h0 = model.cell.initial_state(params, (B,))
    tokens, ys = _tokens()
    w = truncation.tbptt(T, 3) if truncated else jnp.ones(T)
    _equals_plain(cell, model, params, h0, tokens, ys, w)
    L_loss, _ = jbptt.loss(model.cell, model.loss_fn)(params, h0, tokens, ys)
    L_enc, _ = jbptt.loss(model.cell, model.loss_fn)(
        params, h0, model.encode(tokens), ys
    )
    assert float(L_loss) == float(L_enc)


@pytest.mark.parametrize("cell_name", ["lru", "min_gru", "min_lstm", "stack"])
def test_token_ids_on_diagonal_cells(cell_name):
    """A token model around a diagonal cell runs the elementwise diagonal
    reverse pass (a diagonal stack, layer by layer), and its gradients (the
    embedding's included) equal jax.grad of the plain scan's under
    truncation, by the default strategy and by DiagonalScan."""
    from jbptt._src import diagonal_scan, diagonal_stack, scan

    if cell_name == "stack":
        cell, path = cells.stack([cells.min_gru(), cells.lru()]), diagonal_stack
    else:
        cell, path = getattr(cells, cell_name)(), diagonal_scan
    model = jbptt.readout(cell, V, "xent", vocab_size=V)
    assert scan.cell_path(model.cell).backward is path.backward
    params = model.init(jax.random.key(1), 4, 4)
    h0 = model.cell.initial_state(params, (B,))
    tokens, ys = _tokens(seed=2)
    w = truncation.tbptt(T, 3)
    g_ref = _equals_plain(cell, model, params, h0, tokens, ys, w)
    strategy = jbptt.DiagonalScan("sequential", chunk=3)
    (_, _), g_diag = jbptt.value_and_grad(model.cell, model.loss_fn, adjoint=strategy)(
        params, h0, tokens, ys, w
    )
    assert _rel(ravel_pytree(g_diag)[0], ravel_pytree(g_ref)[0]) <= 1e-10
    ws = jnp.stack([w, jnp.ones(T)])
    (_, _), gs = jbptt.grads_for_weights(
        model.cell, model.loss_fn, params, h0, tokens, ys, ws
    )
    g0 = jax.tree_util.tree_map(lambda a: a[0], gs)
    assert _rel(ravel_pytree(g0)[0], ravel_pytree(g_ref)[0]) <= 1e-10


def test_token_ids_with_lengths_and_resets():
    model = jbptt.readout(cells.lstm(), V, "xent", vocab_size=V)
    params = model.init(jax.random.key(2), 4, 5)
    h0 = model.cell.initial_state(params, (B,))
    tokens, ys = _tokens(3)
    lengths = jnp.array([T, 4, 2])
    resets = jnp.zeros((T, B), bool).at[3, 0].set(True)
    grad_fn = jbptt.value_and_grad(model.cell, model.loss_fn)
    kw = dict(lengths=lengths, resets=resets)
    (L, h_T), g = grad_fn(params, h0, tokens, ys, **kw)
    (L2, h_T2), g2 = grad_fn(params, h0, model.encode(tokens), ys, **kw)
    assert float(L) == float(L2)
    assert _rel(ravel_pytree(g)[0], ravel_pytree(g2)[0]) == 0
    forward = jbptt.loss(model.cell, model.loss_fn)
    ref = jax.grad(lambda p: forward(p, h0, tokens, ys, **kw)[0])(params)
    assert _rel(ravel_pytree(g)[0], ravel_pytree(ref)[0]) <= 1e-10


def test_rnn_scan_and_forward_take_token_ids():
    """The cotangent of integer xs is JAX's float0, as for any integer input."""
    model = jbptt.readout(cells.gru(), V, "xent", vocab_size=V)
    params = model.init(jax.random.key(0), 4, 5)
    h0 = model.cell.initial_state(params, (B,))
    tokens, _ = _tokens()

    def f(p, xs):
        return jnp.sum(jbptt.rnn_scan(model.cell, p, h0, xs)[1] ** 2)

    g, g_xs = jax.grad(f, argnums=(0, 1), allow_int=True)(params, tokens)
    assert g_xs.dtype == jax.dtypes.float0 and g_xs.shape == tokens.shape
    g_enc = jax.grad(f)(params, model.encode(tokens))
    assert _rel(ravel_pytree(g)[0], ravel_pytree(g_enc)[0]) == 0
    h_T, outs, res = jbptt.forward(model.cell, params, h0, tokens)
    assert outs.shape == (T, B, 5) and res.xs.shape == (T, B, 1)


def test_estimate_takes_token_ids_and_estimators_name_model_encode():
    """estimators.estimate and an online estimator's estimate take the ids
    as value_and_grad does (the windows equal the same estimate on
    model.encode's float ids, full() and exact RTRL equal value_and_grad);
    a Problem, which takes float ids, refuses integer ids naming
    model.encode."""
    from jbptt import estimators, forward_mode

    model = jbptt.readout(cells.min_gru(), V, "xent", vocab_size=V)
    params = model.init(jax.random.key(0), 4, 5)
    h0 = model.cell.initial_state(params, (B,))
    tokens, ys = _tokens()
    args = (model.cell, model.loss_fn)
    key = jax.random.key(1)
    g = estimators.estimate(*args, estimators.tbptt(3), params, h0, tokens, ys, key)
    xs = model.encode(tokens)
    g_enc = estimators.estimate(*args, estimators.tbptt(3), params, h0, xs, ys, key)
    assert _rel(ravel_pytree(g)[0], ravel_pytree(g_enc)[0]) == 0
    g_full = estimators.estimate(*args, estimators.full(), params, h0, tokens, ys)
    _, g_ref = jbptt.value_and_grad(*args)(params, h0, tokens, ys)
    assert _rel(ravel_pytree(g_full)[0], ravel_pytree(g_ref)[0]) <= 1e-12
    problem = estimators.Problem(*args, params, h0, tokens, ys)
    with pytest.raises(TypeError, match=r"integer token ids.*model\.encode\(xs\)"):
        estimators.tbptt(3).samples(problem, key, 2)
    _, g_rtrl = forward_mode.rtrl().estimate(key, *args, params, h0, tokens, ys)
    assert _rel(ravel_pytree(g_rtrl)[0], ravel_pytree(g_ref)[0]) <= 1e-12


def test_integer_xs_refused_by_cells_without_embedding():
    cell = cells.elman()
    params = cell.init(jax.random.key(0), 1, 4)
    tokens, _ = _tokens()
    with pytest.raises(TypeError, match="xs must have a floating dtype.*vocab_size"):
        jbptt.rnn_scan(
            cell, params, cell.initial_state(params, (B,)), tokens[..., None]
        )


def test_compute_dtype_that_cannot_hold_the_ids_is_refused():
    # ids travel as floats of the compute dtype: bfloat16 is exact only up
    # to 256, so a larger vocabulary would silently read other tokens
    h0 = None
    xs = ys = jnp.zeros((5, 2), jnp.int32)
    for V, ok in ((300, False), (200, True)):
        model = jbptt.readout(cells.elman(), V, "xent", vocab_size=V)
        p = model.init(jax.random.key(0), 4, 8)
        h0 = model.cell.initial_state(p, (2,))
        vg = jbptt.value_and_grad(model.cell, model.loss_fn, compute_dtype=jnp.bfloat16)
        if ok:
            value, _ = vg(p, h0, xs, ys)
            assert all(jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(value))
        else:
            with pytest.raises(ValueError, match="bfloat16.*vocab_size is 300"):
                vg(p, h0, xs, ys)
