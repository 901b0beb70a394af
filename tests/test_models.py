"""readout: token embedding and MLP head, gradients and bad arguments."""

import jax
import jax.numpy as jnp
import pytest

import jbptt
from jbptt import cells
from tests.helpers import random_w, rel_err, tree_allclose

V = 6


def token_problem(cell, hidden=(7,), T=8, B=3):
    model = jbptt.readout(cell, V, "xent", vocab_size=V, hidden=hidden)
    params = model.init(jax.random.key(0), 4, 5)
    tokens = jax.random.randint(jax.random.key(1), (T + 1, B), 0, V)
    xs, ys = model.encode(tokens[:-1]), tokens[1:]
    h0 = model.cell.initial_state(params, (B,))
    return model, params, h0, xs, ys


@pytest.mark.parametrize(
    "make",
    [cells.lstm, lambda: cells.stack([cells.lstm(), cells.lstm()]), cells.gru],
    ids=["lstm", "stacked_lstm", "gru"],
)
def test_embedding_model_gradients_equal_autodiff(make):
    model, params, h0, xs, ys = token_problem(make())
    w = random_w(xs.shape[0])
    forward = jbptt.loss(model.cell, model.loss_fn)
    ref = jax.grad(lambda p: forward(p, h0, xs, ys, w)[0])(params)
    (_, _), got = jbptt.value_and_grad(model.cell, model.loss_fn)(params, h0, xs, ys, w)
    assert tree_allclose(got, ref, 1e-10), rel_err(got, ref)
    assert sorted(got) == ["cell", "embed", "readout"]
    # Rows of tokens that never occur get no gradient (a scatter-add).
    seen = jnp.zeros(V, bool).at[xs[..., 0].astype(int)].set(True)
    assert bool(jnp.all(jnp.where(seen[:, None], True, got["embed"] == 0)))


def test_embedding_lookup_is_the_cell_on_embedded_inputs():
    cell = cells.gru()
    model, params, h0, xs, _ = token_problem(cell, hidden=())
    _, outs = jbptt.rnn_scan(model.cell, params, h0, xs)
    emb = params["embed"][xs[..., 0].astype(int)]
    _, expected = jbptt.rnn_scan(cell, params["cell"], h0, emb)
    assert rel_err(outs, expected) == 0.0
    assert model.cell.rules is not None  # still on the hand-derived path


def test_mlp_head():
    model = jbptt.readout(cells.elman(), 3, hidden=(8, 6))
    params = model.init(jax.random.key(0), 2, 5)
    ro = params["readout"]
    assert [lay["V"].shape for lay in ro["hidden"]] == [(8, 5), (6, 8)]
    assert ro["V"].shape == (3, 6)
    outs = jax.random.normal(jax.random.key(1), (4, 5))
    z = jnp.tanh(
        jnp.tanh(outs @ ro["hidden"][0]["V"].T + ro["hidden"][0]["c"])
        @ ro["hidden"][1]["V"].T
        + ro["hidden"][1]["c"]
    )
    assert rel_err(model.predict(params, outs), z @ ro["V"].T + ro["c"]) <= 1e-15


def test_readout_rejects_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size must be None or a positive"):
        jbptt.readout(cells.lstm(), 3, vocab_size=0)
    with pytest.raises(ValueError, match="hidden must be a sequence of positive"):
        jbptt.readout(cells.lstm(), 3, hidden=8)
    model = jbptt.readout(cells.lstm(), V, "xent", vocab_size=V)
    with pytest.raises(TypeError, match="tokens must be integer ids"):
        model.encode(jnp.ones((3, 2)))
    params = model.init(jax.random.key(0), 4, 5)
    h0 = model.cell.initial_state(params, (2,))
    with pytest.raises(ValueError, match="feature size 3"):
        jbptt.rnn_scan(model.cell, params, h0, jnp.ones((5, 2, 3)))


def test_readout_losses_refuse_targets_that_would_broadcast():
    """ys[t] of shape [B, 1] against predictions [B, 2] would broadcast into a
    wrong loss without a word; the readout's losses refuse it, naming ys."""
    import jax
    import jax.numpy as jnp
    import pytest

    import jbptt

    for loss, bad in (("mse", jnp.ones((5, 3, 1))), ("xent", jnp.ones((5, 3, 1), int))):
        model = jbptt.readout(jbptt.cells.elman(), output_size=2, loss=loss)
        p = model.init(jax.random.key(0), 1, 4)
        h0, xs = model.cell.initial_state(p, (3,)), jnp.ones((5, 3, 1))
        with pytest.raises(ValueError, match=r"ys\[t\] has shape \(3, 1\)"):
            jbptt.value_and_grad(model.cell, model.loss_fn)(p, h0, xs, bad)


def test_readout_sizes_its_weights_by_a_diagonal_cells_output():
    """The LRU emits Re(C h) + D x, of the input's size, not H: the readout's
    weights take the cell's output size, and the model trains."""
    model = jbptt.readout(cells.lru(), output_size=1)
    params = model.init(jax.random.key(0), 2, 5)
    assert params["readout"]["V"].shape == (1, 2)
    xs = jax.random.normal(jax.random.key(1), (6, 3, 2))
    ys = xs[..., :1]
    h0 = model.cell.initial_state(params, (3,))
    (L, _), g = jbptt.value_and_grad(model.cell, model.loss_fn)(params, h0, xs, ys)
    ref = jax.grad(lambda p: jbptt.loss(model.cell, model.loss_fn)(p, h0, xs, ys)[0])
    assert tree_allclose(g, ref(params))
    # cells whose output is the state keep V [O, H]
    assert jbptt.readout(cells.min_gru(), 1).init(jax.random.key(0), 2, 5)["readout"][
        "V"
    ].shape == (1, 5)
