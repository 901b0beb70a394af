"""cells.stack: gradients of stacked cells equal autodiff of the plain scan."""

import jax
import jax.numpy as jnp
import pytest

import jbptt
from jbptt import cells
from jbptt.cells import ReverseRules
from tests.helpers import fn_cell, problem, random_w, rel_err, tree_allclose

STACKS = {
    "elman_elman": lambda: [cells.elman("tanh"), cells.elman("relu")],
    "lstm_lstm": lambda: [cells.lstm(), cells.lstm()],
    "gru_gru": lambda: [cells.gru(), cells.gru()],
    "gru_lstm_elman": lambda: [cells.gru(), cells.lstm(), cells.elman()],
    "nested": lambda: [cells.stack([cells.lstm(), cells.gru()]), cells.elman()],
    "with_from_fn": lambda: [cells.lstm(), fn_cell()],
}


def reference_and_jbptt(cell, T=6, w=None, **kw):
    model, params, h0, xs, ys = problem(cell, T=T, **kw)
    w = random_w(T) if w is None else w
    forward = jbptt.loss(model.cell, model.loss_fn)
    ref = jax.grad(lambda p, h: forward(p, h, xs, ys, w)[0], argnums=(0, 1))(params, h0)
    vg = jbptt.value_and_grad(model.cell, model.loss_fn, argnums=(0, 1))
    (L, _), got = vg(params, h0, xs, ys, w)
    return got, ref, L, forward(params, h0, xs, ys, w)[0]


@pytest.mark.parametrize("name", sorted(STACKS))
def test_stack_gradients_equal_autodiff_with_link_weights(name):
    got, ref, L, L_ref = reference_and_jbptt(cells.stack(STACKS[name]()))
    assert tree_allclose(got, ref, 1e-10), rel_err(got, ref)
    assert abs(float(L - L_ref)) <= 1e-12 * abs(float(L_ref))


def test_stack_gradients_without_batch_and_with_per_layer_sizes():
    cell = cells.stack([cells.lstm(), cells.gru()])
    model, params, h0, xs, ys = problem(cell, T=5, batch=(), H=(6, 3))
    assert params["cell"][0]["weight_hh"].shape == (24, 6)
    assert params["cell"][1]["weight_ih"].shape == (9, 6)
    w = random_w(5, seed=3)
    ref = jax.grad(
        lambda p: jbptt.loss(model.cell, model.loss_fn)(p, h0, xs, ys, w)[0]
    )(params)
    (_, _), got = jbptt.value_and_grad(model.cell, model.loss_fn)(params, h0, xs, ys, w)
    assert tree_allclose(got, ref, 1e-10), rel_err(got, ref)


def test_stacked_step_equals_layers_run_one_by_one():
    layers = [cells.gru(), cells.lstm()]
    cell = cells.stack(layers)
    params = cell.init(jax.random.key(0), 3, 4)
    xs = jax.random.normal(jax.random.key(1), (8, 2, 3))
    _, outs = jbptt.rnn_scan(cell, params, cell.initial_state(params, (2,)), xs)
    z = xs
    for layer, p in zip(layers, params, strict=True):
        _, z = jbptt.rnn_scan(layer, p, layer.initial_state(p, (2,)), z)
    assert rel_err(outs, z) <= 1e-14


def test_stack_of_builtin_cells_keeps_hand_derived_rules():
    """Built-in layers compose their rules (no per-step vjp) once the scan
    passes the states to `linear` (ReverseRules.linear_states)."""
    fast = "linear_states" in ReverseRules._fields
    assert (cells.stack([cells.lstm(), cells.gru()]).rules is not None) == fast
    assert cells.stack([cells.lstm(), fn_cell()]).rules is None


@pytest.mark.parametrize(
    "layers, match",
    [
        ([], "at least one cell"),
        (cells.lstm(), "list of jbptt cells"),
        ([cells.lstm(), "gru"], r"layers\[1\] must be a jbptt Cell"),
    ],
)
def test_stack_rejects_bad_layers(layers, match):
    with pytest.raises(TypeError, match=match):
        cells.stack(layers)


def test_stack_rejects_wrong_number_of_hidden_sizes():
    cell = cells.stack([cells.elman(), cells.elman()])
    with pytest.raises(ValueError, match="hidden_size must be an int or 2 ints"):
        cell.init(jax.random.key(0), 2, (3, 4, 5))
    params = cell.init(jax.random.key(0), 2, 3)
    with pytest.raises(ValueError, match="input_size=2"):
        jbptt.rnn_scan(cell, params, cell.initial_state(params, ()), jnp.ones((4, 3)))


def test_bench_stack_quick_runs(tmp_path):
    from benchmarks import bench_stack

    rows = bench_stack.main(
        ["--quick", "--cells", "gru", "min_gru", "--out", str(tmp_path)]
    )
    assert [r["layer_by_layer"] for r in rows] == [False, True]
    for row in rows:
        assert row["stacked_ms"] > 0 and row["one_by_one_ms"] > 0
        assert row["grad_rel_diff"] <= 1e-10  # same model, same link weights
    assert rows[0]["generic_ms"] is None and rows[1]["generic_ms"] > 0
    assert (tmp_path / "results_stack.csv").exists()
    assert (tmp_path / "results_stack.json").exists()
