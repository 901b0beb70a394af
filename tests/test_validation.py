"""Every bad input gets a clear error naming the argument (trace time)."""

import re

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


# ------------------------------------------------ the shared validators ---

from jbptt._src import validation  # noqa: E402


@pytest.mark.parametrize(
    "value", [3, np.int64(3), np.int8(3), np.array(3), jnp.array(3)]
)
def test_integer_accepts_numpy_and_0d_integers(value):
    out = validation.positive_int("k", value)
    assert out == 3 and type(out) is int


@pytest.mark.parametrize(
    "value, err, match",
    [
        (True, ValueError, "a bool is not a number"),
        (np.bool_(False), ValueError, "a bool is not a number"),
        (0, ValueError, "k must be a positive int, got 0"),
        (2.5, ValueError, "k must be a positive int, got 2.5"),
        ("3", TypeError, "k must be a positive int, got str"),
        (None, TypeError, "k must be a positive int, got NoneType"),
        (np.ones(2, int), TypeError, r"got ndarray of shape \(2,\)"),
    ],
)
def test_integer_refuses(value, err, match):
    with pytest.raises(err, match=match):
        validation.positive_int("k", value)


@pytest.mark.parametrize(
    "bad", [float("nan"), float("inf"), -1.0, 0.0, np.float32("nan")]
)
def test_positive_float_refuses_nonfinite_and_nonpositive(bad):
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        validation.positive_float("lr", bad)
    assert validation.positive_float("clip", None, allow_none=True) is None
    assert validation.positive_float("lr", np.float32(0.5)) == 0.5


@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan")])
def test_probability(bad):
    with pytest.raises(ValueError, match=r"c must be a probability in \[0, 1\)"):
        validation.probability("c", bad)
    assert validation.probability("c", np.float64(0.0)) == 0.0


def test_prng_key_typed_legacy_and_refused():
    typed = validation.prng_key("key", jax.random.key(5))
    legacy = validation.prng_key("key", jax.random.PRNGKey(5))
    np.testing.assert_array_equal(
        jax.random.key_data(typed), jax.random.key_data(legacy)
    )
    batch = validation.prng_key("keys", jax.random.split(jax.random.PRNGKey(0), 3))
    assert batch.shape == (3,)
    for bad in (0, np.zeros(2, np.int32), "key"):
        with pytest.raises(TypeError, match="key must be a PRNG key"):
            validation.prng_key("key", bad)


@pytest.mark.parametrize(
    "w, err, match",
    [
        ([1.0, 1.0], ValueError, r"must have shape \(T,\) = \(3,\), got \(2,\)"),
        ([1.0, jnp.nan, 1.0], ValueError, r"finite and ≥ 0, got w\[1\] = nan"),
        ([1.0, 1.0, -0.5], ValueError, r"got w\[2\] = -0.5"),
        (jnp.array([1.0, jnp.inf, 0.0]), ValueError, r"w\[1\] = inf"),
        ("www", TypeError, "w \\(link weights\\) must be an array"),
        ([1, 1, 1], TypeError, "must be floating"),
    ],
)
def test_link_weights(w, err, match):
    with pytest.raises(err, match=match):
        validation.link_weights(w, 3, jnp.float64)


def test_link_weights_values_unchecked_when_traced():
    f = jax.jit(lambda w: validation.link_weights(w, 2, jnp.float64))
    assert np.isnan(f(jnp.array([1.0, jnp.nan]))[1])


def test_nan_link_weights_are_reported_by_value_and_grad(elman_problem):
    model, params, h0, xs, ys = elman_problem
    grad_fn = jbptt.value_and_grad(model.cell, model.loss_fn)
    w = jnp.ones(xs.shape[0]).at[2].set(jnp.nan)
    with pytest.raises(ValueError, match=r"w \(link weights\) must be finite"):
        grad_fn(params, h0, xs, ys, w)
    with pytest.raises(ValueError, match=r"w\[0\] = -1.0"):
        jbptt.rnn_scan(model.cell, params, h0, xs, -jnp.ones(xs.shape[0]))


@pytest.mark.parametrize("make", [cells.elman, cells.lstm, cells.gru])
def test_missing_params_keys_name_the_cell(make):
    cell = make()
    params = cell.init(jax.random.key(0), 2, 3)
    name = sorted(params)[-1]
    broken = {k: v for k, v in params.items() if k != name}
    with pytest.raises(
        ValueError, match=rf"params of {re.escape(cell.name)}.*missing \['{name}'\]"
    ):
        cell.initial_state(broken)
    with pytest.raises(ValueError, match=rf"missing \['{name}'\]"):
        jbptt.rnn_scan(cell, broken, cell.initial_state(params), jnp.ones((3, 2)))
    with pytest.raises(TypeError, match="must be a dict"):
        cell.initial_state([1, 2])


def test_batch_shape_checked_and_batch_zero_allowed():
    cell = cells.gru()
    params = cell.init(jax.random.key(0), 2, 3)
    assert cell.initial_state(params, (0,)).shape == (0, 3)
    with pytest.raises(TypeError, match="batch_shape must be a tuple"):
        cell.initial_state(params, 4)
    with pytest.raises(ValueError, match=r"batch_shape\[0\] must be an int ≥ 0"):
        cell.initial_state(params, (-1,))


def test_check_loss_names_ys():
    out_t = jax.ShapeDtypeStruct((3, 4), jnp.float64)

    def loss_fn(params, out, y):
        return jnp.mean((out @ params - y) ** 2)

    validation.check_loss(loss_fn, jnp.ones((4, 1)), out_t, jnp.ones((5, 3, 1)))
    with pytest.raises(ValueError, match="check the shape of ys"):
        validation.check_loss(loss_fn, jnp.ones((4, 1)), out_t, jnp.ones((5, 2, 7)))
    with pytest.raises(ValueError, match="must return a scalar"):
        validation.check_loss(lambda p, o, y: o, None, out_t, jnp.ones((5, 3)))
