"""Cell conventions: PyTorch equations and weight conversion, Flax carries."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jbptt import cells
from tests.helpers import rel_err

torch = pytest.importorskip("torch")  # optional peer; `make test` installs it


def run_jbptt(cell, params, xs):
    h0 = cell.initial_state(params, xs.shape[1:2])
    _, outs = jax.lax.scan(lambda h, x: cell.step(params, h, x), h0, xs)
    return outs


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("bias", [True, False])
def test_torch_weights_convert_one_to_one(kind, bias):
    torch.manual_seed(0)
    layer = getattr(torch.nn, kind)(4, 6, bias=bias).double()
    xs = torch.randn(9, 3, 4, dtype=torch.float64)
    expected, _ = layer(xs)
    if kind == "LSTM":
        cell, params = cells.lstm(), cells.lstm_params_from_torch(layer.state_dict())
    else:
        cell, params = cells.gru(), cells.gru_params_from_torch(layer.state_dict())
    outs = run_jbptt(cell, params, jnp.asarray(xs.numpy()))
    assert rel_err(outs, jnp.asarray(expected.detach().numpy())) <= 1e-12


def test_conversion_accepts_numpy_and_checks_keys():
    sd = {k: v.numpy() for k, v in torch.nn.GRU(2, 3).state_dict().items()}
    params = cells.gru_params_from_torch(sd)
    assert params["weight_hh"].shape == (9, 3)
    with pytest.raises(ValueError, match=r"missing \['weight_hh_l0'\]"):
        cells.lstm_params_from_torch({"weight_ih_l0": np.zeros((8, 2))})
    with pytest.raises(ValueError, match=r"torch.nn.LSTM layer stores \(4·H, H\)"):
        cells.lstm_params_from_torch(sd)  # a GRU state_dict


def test_flax_lstm_carry_order_matches_builtin():
    """Flax's LSTMCell carry is (c, h), the order cells.lstm() uses."""
    cell = cells.from_flax(nn.LSTMCell(4, param_dtype=jnp.float64))
    params = cell.init(jax.random.key(0), 3, 4)
    c, h = cell.initial_state(params, (2,))
    (c1, h1), y = cell.step(params, (c + 1.0, h), jnp.ones((2, 3)))
    assert rel_err(y, h1) == 0.0
    assert float(jnp.max(jnp.abs(c1))) > float(jnp.max(jnp.abs(h1)))


def test_default_init_matches_torch_range():
    params = cells.lstm().init(jax.random.key(0), 3, 16)
    bound = 1 / 4
    for a in jax.tree_util.tree_leaves(params):
        assert float(jnp.max(jnp.abs(a))) <= bound
    assert params["weight_ih"].shape == (64, 3)


def test_lstm_forget_bias_moves_only_the_forget_gate_at_init():
    base = cells.lstm().init(jax.random.key(0), 3, 4)
    cell = cells.lstm(forget_bias=1.5)
    moved = cell.init(jax.random.key(0), 3, 4)
    delta = np.asarray(moved["bias_hh"] - base["bias_hh"])
    np.testing.assert_array_equal(delta, np.repeat([0.0, 1.5, 0.0, 0.0], 4))
    for name in ("weight_ih", "weight_hh", "bias_ih"):
        np.testing.assert_array_equal(moved[name], base[name])
    assert cell.name == "lstm(forget_bias=1.5)" and cells.lstm(0.0).name == "lstm()"
    # the equations are the same: from the same params, the same step
    h0 = cell.initial_state(moved, (2,))
    x = jnp.ones((2, 3))
    out = cell.step(moved, h0, x)[1]
    assert rel_err(out, cells.lstm().step(moved, h0, x)[1]) == 0.0
    with pytest.raises(ValueError, match="forget_bias"):
        cells.lstm(float("nan"))
