"""flax.nnx and Equinox cells: gradients, their structure, and bad modules."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

import jbptt
from jbptt import cells
from tests.helpers import problem, random_w, rel_err, tree_allclose

eqx = pytest.importorskip("equinox")  # the `equinox` extra (in `dev`)

F64 = {"param_dtype": jnp.float64, "rngs": nnx.Rngs(0)}


class LeakyNNX(nnx.Module):
    """A user nnx cell: h ← (1 − a) h + a tanh(W [x; h])."""

    def __init__(self, in_features, hidden_features, rngs):
        self.in_features, self.hidden_features = in_features, hidden_features
        self.dense = nnx.Linear(
            in_features + hidden_features,
            hidden_features,
            param_dtype=jnp.float64,
            rngs=rngs,
        )
        self.a = nnx.Param(jnp.full((hidden_features,), 0.7))

    def initialize_carry(self, input_shape):
        return jnp.zeros(input_shape[:-1] + (self.hidden_features,))

    def __call__(self, h, x):
        a = self.a[...]
        h = (1 - a) * h + a * jnp.tanh(self.dense(jnp.concatenate([x, h], -1)))
        return h, h


class LeakyEqx(eqx.Module):
    """A user Equinox cell without a hidden_size attribute."""

    W: jax.Array

    def __call__(self, x, h):
        return 0.5 * h + jnp.tanh(self.W @ jnp.concatenate([x, h]))


NNX = {
    "lstm": lambda: nnx.LSTMCell(4, 5, **F64),
    "gru": lambda: nnx.GRUCell(4, 5, **F64),
    "optimized_lstm": lambda: nnx.OptimizedLSTMCell(4, 5, **F64),
    "simple": lambda: nnx.SimpleCell(4, 5, dtype=jnp.float64, **F64),
    "user": lambda: LeakyNNX(4, 5, nnx.Rngs(0)),
}
EQX = {
    "lstm": lambda: eqx.nn.LSTMCell(4, 5, dtype=jnp.float64, key=jax.random.key(0)),
    "gru": lambda: eqx.nn.GRUCell(4, 5, dtype=jnp.float64, key=jax.random.key(0)),
}


def check_gradients(cell, **kw):
    model, params, h0, xs, ys = problem(cell, T=6, **kw)
    w = random_w(6)
    forward = jbptt.loss(model.cell, model.loss_fn)
    ref = jax.grad(lambda p, h: forward(p, h, xs, ys, w)[0], argnums=(0, 1))(params, h0)
    vg = jbptt.value_and_grad(model.cell, model.loss_fn, argnums=(0, 1))
    (_, _), got = vg(params, h0, xs, ys, w)
    assert tree_allclose(got, ref, 1e-10), rel_err(got, ref)
    return params, got


@pytest.mark.parametrize("name", sorted(NNX))
def test_nnx_cell_gradients_equal_autodiff(name):
    params, (g, _) = check_gradients(cells.from_nnx(NNX[name]()))
    assert isinstance(g["cell"], nnx.State)  # the module's own structure
    assert jax.tree_util.tree_structure(g) == jax.tree_util.tree_structure(params)


@pytest.mark.parametrize("name", sorted(EQX))
def test_equinox_cell_gradients_equal_autodiff(name):
    params, (g, _) = check_gradients(cells.from_equinox(EQX[name]()))
    assert isinstance(g["cell"], type(EQX[name]()))
    # The user's optax code runs unchanged on the module-shaped gradients.
    opt = optax.sgd(0.1)
    updates, _ = opt.update(g, opt.init(params))
    new = eqx.apply_updates(params, updates)
    assert rel_err(new["cell"].weight_hh, params["cell"].weight_hh) > 0


def test_user_equinox_cell_with_initial_state():
    W = 0.3 * jax.random.normal(jax.random.key(0), (5, 9), jnp.float64)
    cell = cells.from_equinox(
        LeakyEqx(W),
        initial_state=lambda p, batch: jnp.zeros(batch + (5,), p.W.dtype),
    )
    check_gradients(cell)


def test_nnx_lstm_matches_flax_linen_convention():
    """nnx.LSTMCell's carry is (c, h) and its output h, as cells.lstm()."""
    cell = cells.from_nnx(nnx.LSTMCell(3, 4, **F64))
    params = cell.init(jax.random.key(0), 3, 4)
    c, h = cell.initial_state(params, (2,))
    (c1, h1), y = cell.step(params, (c + 1.0, h), jnp.ones((2, 3)))
    assert rel_err(y, h1) == 0.0 and c1.shape == (2, 4)


@pytest.mark.parametrize(
    "module",
    [nn.LSTMCell(4), nnx.Linear(2, 3, rngs=nnx.Rngs(0)), "lstm"],
    ids=["linen_cell", "nnx_linear", "string"],
)
def test_from_nnx_rejects_non_cells(module):
    with pytest.raises(TypeError, match="module must be a flax.nnx recurrent cell"):
        cells.from_nnx(module)


def test_from_equinox_rejects_non_cells():
    with pytest.raises(TypeError, match="module must be an Equinox recurrent cell"):
        cells.from_equinox(nnx.GRUCell(2, 3, rngs=nnx.Rngs(0)))
    with pytest.raises(TypeError, match="no int hidden_size.*initial_state"):
        cells.from_equinox(eqx.nn.Linear(2, 3, key=jax.random.key(0)))
    with pytest.raises(TypeError, match="initial_state must be callable"):
        cells.from_equinox(EQX["gru"](), initial_state=3)


def test_adapters_check_sizes_against_the_module():
    with pytest.raises(ValueError, match="hidden_size=6 but the nnx module has"):
        cells.from_nnx(NNX["gru"]()).init(jax.random.key(0), 4, 6)
    with pytest.raises(ValueError, match="input_size=3 but the Equinox module"):
        cells.from_equinox(EQX["lstm"]()).init(jax.random.key(0), 3, 5)
