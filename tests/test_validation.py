"""Every bad input gets a clear error naming the argument (trace time)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jbptt
from jbptt import cells
from tests.helpers import fn_cell, problem


@pytest.fixture(scope="module")
def elman_problem():
    return problem(cells.elman("tanh"), T=4, batch=(3,), I=4, H=5)


def grad_fn(model):
    return jbptt.value_and_grad(model.cell, model.loss_fn)


def test_unknown_activation():
    with pytest.raises(ValueError, match=r"Unknown activation 'sigmoid'.*identity"):
        cells.elman("sigmoid")


def test_unknown_loss_and_bad_output_size():
    with pytest.raises(ValueError, match="Unknown loss 'l1'"):
        jbptt.readout(cells.gru(), 2, loss="l1")
    with pytest.raises(ValueError, match="output_size must be a positive int"):
        jbptt.readout(cells.gru(), 0)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_sizes_in_init(bad):
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        cells.lstm().init(jax.random.key(0), 3, bad)
    with pytest.raises(ValueError, match="input_size must be a positive int"):
        cells.elman().init(jax.random.key(0), bad, 3)


def test_xs_rank(elman_problem):
    model, params, h0, xs, ys = elman_problem
    with pytest.raises(ValueError, match=r"xs must be time-major .* got shape \(4,\)"):
        grad_fn(model)(params, h0, xs[:, 0, 0], ys)


def test_xs_feature_size(elman_problem):
    model, params, h0, xs, ys = elman_problem
    with pytest.raises(ValueError, match=r"xs has feature size 2 .*input_size=4"):
        grad_fn(model)(params, h0, xs[..., :2], ys)


def test_xs_feature_size_generic_cell():
    model, params, h0, xs, ys = problem(fn_cell(), T=4, I=4)
    with pytest.raises(ValueError, match=r"leaky_trace.step failed .*feature size"):
        grad_fn(model)(params, h0, xs[..., :3], ys)


def test_zero_steps(elman_problem):
    model, params, h0, xs, ys = elman_problem
    with pytest.raises(ValueError, match="T = 0"):
        grad_fn(model)(params, h0, xs[:0], ys[:0])


def test_ys_length(elman_problem):
    model, params, h0, xs, ys = elman_problem
    with pytest.raises(ValueError, match=r"ys must be time-major with length T = 4"):
        grad_fn(model)(params, h0, xs, ys[:3])
    with pytest.raises(ValueError, match=r"ys must be time-major with length T = 4"):
        jbptt.loss(model.cell, model.loss_fn)(params, h0, xs, ys[:3])


def test_h0_batch_mismatch(elman_problem):
    model, params, h0, xs, ys = elman_problem
    with pytest.raises(ValueError, match=r"h0 has shape .* batch shape \(3,\)"):
        grad_fn(model)(params, h0[:2], xs, ys)


def test_h0_wrong_structure_for_lstm():
    model, params, h0, xs, ys = problem(cells.lstm(), T=4)
    with pytest.raises(ValueError, match=r"h0 does not match the state of lstm\(\)"):
        grad_fn(model)(params, h0[1], xs, ys)


def test_h0_dtype():
    model, params, h0, xs, ys = problem(cells.gru(), T=4)
    with pytest.raises(TypeError, match="h0 has dtype float32"):
        grad_fn(model)(params, h0.astype(jnp.float32), xs, ys)


def test_integer_xs(elman_problem):
    model, params, h0, xs, ys = elman_problem
    with pytest.raises(TypeError, match="xs must have a floating dtype, got int"):
        grad_fn(model)(params, h0, xs.astype(jnp.int32), ys)


def test_mismatched_xs_dtype(elman_problem):
    # xs in another dtype than the params is mixed precision (compute in xs's
    # dtype); h0 must then share it.
    model, params, h0, xs, ys = elman_problem
    with pytest.raises(TypeError, match="h0 has dtype float64 but expected float32"):
        grad_fn(model)(params, h0, xs.astype(jnp.float32), ys)


def test_xs_not_an_array(elman_problem):
    model, params, h0, xs, ys = elman_problem
    with pytest.raises(TypeError, match="xs must be an array, got list"):
        grad_fn(model)(params, h0, xs.tolist(), ys)


@pytest.mark.parametrize(
    "w, message",
    [
        (np.ones(3), r"w \(link weights\) must have shape \(T,\) = \(4,\), got \(3,\)"),
        (np.ones((4, 1)), r"must have shape \(T,\) = \(4,\), got \(4, 1\)"),
        (np.ones(4, np.int32), "must be floating, got int32"),
    ],
)
def test_bad_link_weights(elman_problem, w, message):
    model, params, h0, xs, ys = elman_problem
    with pytest.raises((ValueError, TypeError), match=message):
        grad_fn(model)(params, h0, xs, ys, w)
    with pytest.raises((ValueError, TypeError), match=message):
        jbptt.rnn_scan(model.cell, params, h0, xs, w)


def test_bad_argnums():
    with pytest.raises(ValueError, match="argnums must be 0"):
        jbptt.value_and_grad(cells.gru(), lambda p, o, y: 0.0, argnums=2)


def test_not_a_cell(elman_problem):
    _, params, h0, xs, _ = elman_problem
    with pytest.raises(TypeError, match="cell must be a jbptt Cell"):
        jbptt.rnn_scan(nn.GRUCell(5), params, h0, xs)


def test_from_flax_rejects_non_cells_and_wrong_size():
    with pytest.raises(
        TypeError, match="from_flax expects a flax.linen recurrent cell"
    ):
        cells.from_flax(nn.Dense(3))
    with pytest.raises(
        ValueError, match="hidden_size=4 but the Flax module has features=5"
    ):
        cells.from_flax(nn.LSTMCell(5)).init(jax.random.key(0), 3, 4)


def test_from_fn_rejects_non_callables():
    with pytest.raises(TypeError, match="initial_state must be callable"):
        cells.from_fn(lambda *a: None, lambda *a: None, None)


def test_from_fn_state_changing_structure():
    cell = cells.from_fn(
        lambda k, i, h: {"A": jnp.ones((h, i))},
        lambda p, h, x: (jnp.concatenate([h, h]), h),
        lambda p, b=(): jnp.zeros(b + (p["A"].shape[0],)),
        name="grows",
    )
    params = cell.init(None, 2, 3)
    xs = jnp.ones((4, 2))
    with pytest.raises(ValueError, match="grows.step returns a state"):
        jbptt.rnn_scan(cell, params, cell.initial_state(params), xs)


def test_checks_run_under_jit(elman_problem):
    """Static checks fire at trace time inside jit too."""
    model, params, h0, xs, ys = elman_problem
    with pytest.raises(ValueError, match="ys must be time-major"):
        jax.jit(grad_fn(model))(params, h0, xs, ys[:2])
