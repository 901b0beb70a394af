"""Exact RTRL for diagonal recurrences: forward_mode.rtrl() on a diagonal cell
carries one influence per params leaf (O(|θ|)), and its summed online
gradient is BPTT's, for real and complex states, shared leaves and resets."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import jbptt
from jbptt import cells, estimators, forward_mode
from jbptt._src import diagonal_rtrl, diagonal_window

T, B, I, H = 9, 3, 2, 4


def _mse(params, out, y):
    return jnp.sum((out - y) ** 2)


def _shared_cell():
    """a = σ(W_a (P x)), b = (1 − a) ⊙ (W_b x): P [H, I] feeds every unit
    (shared), W_a [H, H] and W_b [H, I] feed their own row's unit."""

    def gates(p, x):
        a = jax.nn.sigmoid((x @ p["P"].T) @ p["W_a"].T)
        return a, (1 - a) * (x @ p["W_b"].T)

    def init(key, i, h):
        k = jax.random.split(key, 3)
        return {
            "P": jax.random.normal(k[0], (h, i)),
            "W_a": jax.random.normal(k[1], (h, h)) / h,
            "W_b": jax.random.normal(k[2], (h, i)),
        }

    return cells.diagonal(gates, init, input_size=lambda p: p["P"].shape[1])


CELLS = {
    "lru": lambda: cells.lru(r_min=0.5, r_max=0.95),
    "min_gru": cells.min_gru,
    "min_lstm": cells.min_lstm,
    "shared": _shared_cell,
}


def _problem(name, seed=0, T=T):
    cell = CELLS[name]()
    k = jax.random.split(jax.random.key(seed), 4)
    p = cell.init(k[0], I, H)
    h0 = cell.initial_state(p, (B,))
    h0 = h0 + 0.3 * jax.random.normal(k[1], h0.shape).astype(h0.dtype)
    xs = jax.random.normal(k[2], (T, B, I))
    O = cell.step(p, h0, xs[0])[1].shape[-1]
    ys = jax.random.normal(k[3], (T, B, O))
    resets = jax.random.bernoulli(jax.random.key(seed + 7), 0.25, (T, B))
    return cell, p, h0, xs, ys, resets.at[0].set(False).at[4, 0].set(True)


def _scan_reference(cell, p, h0, xs, ys, resets, h_reset):
    """jax.grad of a plain lax.scan of cell.step, restarting at resets."""

    def total(p):
        def body(h, inp):
            x, y, r = inp
            h = jnp.where(r[:, None], h_reset, h)
            h, out = cell.step(p, h, x)
            return h, _mse(p, out, y)

        h_T, losses = jax.lax.scan(body, h0, (xs, ys, resets))
        return jnp.sum(losses), h_T

    return jax.value_and_grad(total, has_aux=True)(p)


def _rel(a, b):
    a, b = ravel_pytree(a)[0], ravel_pytree(b)[0]
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("with_resets", [False, True])
def test_diagonal_rtrl_equals_bptt(name, with_resets):
    """Σ_t g_t over a sequence is the BPTT gradient to 1e-12 (complex LRU
    state, a shared projection leaf, resets to a state other than h0)."""
    cell, p, h0, xs, ys, resets = _problem(name)
    resets = resets if with_resets else jnp.zeros_like(resets)
    h_reset = 0.5 * h0[::-1]
    (L, h_T), g = forward_mode.rtrl().estimate(
        jax.random.key(0), cell, _mse, p, h0, xs, ys,
        resets=resets, reset_state=h_reset,
    )  # fmt: skip
    (L_ref, h_ref), g_ref = _scan_reference(cell, p, h0, xs, ys, resets, h_reset)
    assert _rel(g, g_ref) <= 1e-12
    assert abs(float(L - L_ref)) <= 1e-12 * abs(float(L_ref))
    assert _rel(h_T, h_ref) <= 1e-12
    (_, _), g_core = jbptt.value_and_grad(cell, _mse)(
        p, h0, xs, ys, resets=resets, reset_state=h_reset
    )
    assert _rel(g, g_core) <= 1e-12


@pytest.mark.parametrize("name", sorted(CELLS))
def test_diagonal_rtrl_read_out_by_einsum_past_the_unrolled_batch(name, monkeypatch):
    """Above UNROLLED_BATCH examples a unit leaf's read-out is an einsum
    instead of B added terms: the same gradient, BPTT's to 1e-12."""
    monkeypatch.setattr(diagonal_rtrl, "UNROLLED_BATCH", 0)
    cell, p, h0, xs, ys, resets = _problem(name)
    (_, _), g = forward_mode.rtrl().estimate(
        jax.random.key(0), cell, _mse, p, h0, xs, ys, resets=resets
    )
    (_, _), g_ref = _scan_reference(cell, p, h0, xs, ys, resets, h0)
    assert _rel(g, g_ref) <= 1e-12


def test_layout_probes_structure_not_shapes():
    """P [H, I] has a unit-sized leading axis but feeds every unit: shared.
    The LRU's readout-only C, D carry nothing."""
    cell, p, h0, xs, *_ = _problem("shared")
    lay = diagonal_rtrl.layout(cell, p, xs[0, 0])
    assert dict(zip(sorted(p), lay.kinds, strict=True)) == {
        "P": "shared", "W_a": "unit", "W_b": "unit",
    }  # fmt: skip
    cell, p, h0, xs, *_ = _problem("lru")
    lay = diagonal_rtrl.layout(cell, p, xs[0, 0])
    kinds = dict(zip(sorted(p), lay.kinds, strict=True))
    assert {k for k, v in kinds.items() if v == "unused"} == {"C_im", "C_re", "D"}
    assert lay.dtype == jnp.complex128


@pytest.mark.parametrize("name", sorted(CELLS))
def test_carried_memory_is_the_formula(name):
    """cost().state_bytes = (B·Σ per-unit sizes + B·H·Σ shared sizes) × the
    influence's item size, equal to the arrays actually carried, and the
    cost report says exact and prints the same number."""
    cell, p, h0, xs, ys, _ = _problem(name)
    shared = {"P"} if name == "shared" else set()
    unused = {"C_re", "C_im", "D"} if name == "lru" else set()
    unit = set(p) - shared - unused
    size = 16 if name == "lru" else 8  # complex128 or float64
    n = B * sum(p[k].size for k in unit) + B * H * sum(p[k].size for k in shared)
    problem = estimators.Problem(cell, _mse, p, h0, xs, ys)
    est = forward_mode.rtrl()
    assert est.cost(problem).state_bytes == n * size
    carried = est.init(cell, p, h0, xs[0]).influence
    assert sum(e.nbytes for e in jax.tree_util.tree_leaves(carried)) == n * size
    report = est.cost_report(problem)
    assert "exact" in report and f"carries {n * size:,} bytes" in report
    # the work: one step's term, and a window's [w, B, H] arrays besides it
    window = 8 * 64 * B * H * size
    assert est.footprint(cell, p, h0, xs[0]).work_bytes == n * size + window
    assert f"{window:,} bytes more" in report
    one = forward_mode.rtrl(window=1)
    assert one.footprint(cell, p, h0, xs[0]).work_bytes == n * size
    assert "windows" not in one.cost_report(problem)
    dense = forward_mode.rtrl(diagonal=False)
    if name != "lru":  # the flat influence matrix is real-only
        P = ravel_pytree(p)[0].size
        assert dense.cost(problem).state_bytes == B * H * P * 8


def test_diagonal_and_dense_rtrl_agree_and_snap1_is_exact():
    """On minGRU the diagonal influence, the full influence matrix and SnAp-1
    give the same gradient (SnAp-1 is exact on a diagonal cell)."""
    cell, p, h0, xs, ys, resets = _problem("min_gru")
    args = (cell, _mse, p, h0, xs, ys)
    key = jax.random.key(0)
    _, g = forward_mode.rtrl().estimate(key, *args, resets=resets)
    _, g_dense = forward_mode.rtrl(diagonal=False).estimate(key, *args, resets=resets)
    _, g_snap = forward_mode.snap1().estimate(key, *args, resets=resets)
    assert _rel(g, g_dense) <= 1e-12
    assert _rel(g_snap, g_dense) <= 1e-12


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("window", [2, 4])
def test_windows_of_steps_are_the_step_by_step_sums(name, window):
    """rtrl(window=w) runs T = 9 steps w at a time (BPTT inside a window, the
    influence carried across, the last window padded): BPTT's gradient, loss
    and end state to 1e-12 with resets, and the step-by-step rule's."""
    cell, p, h0, xs, ys, resets = _problem(name)
    h_reset = 0.5 * h0[::-1]
    run = {"resets": resets, "reset_state": h_reset}
    key = jax.random.key(0)
    (L, h_T), g = forward_mode.rtrl(window=window).estimate(
        key, cell, _mse, p, h0, xs, ys, **run
    )
    (L_ref, h_ref), g_ref = _scan_reference(cell, p, h0, xs, ys, resets, h_reset)
    assert _rel(g, g_ref) <= 1e-12
    assert abs(float(L - L_ref)) <= 1e-12 * abs(float(L_ref))
    assert _rel(h_T, h_ref) <= 1e-12
    step = forward_mode.rtrl(window=1)
    state = step.init(cell, p, h0, xs[0])
    for t in range(4):  # the carried influence after 4 steps, both ways
        state, _ = step.step(
            cell, _mse, key, p, state, xs[t], ys[t], resets[t], h_reset
        )
    keep = jnp.ones(4)
    _, _, h_4, e_4 = diagonal_window.windows(
        cell, _mse, p, h0, step.init(cell, p, h0, xs[0]).influence, xs[:4],
        ys[:4], keep, resets[:4], h_reset, window,
    )  # fmt: skip
    assert _rel(h_4, state.h) <= 1e-12
    assert (
        _rel(
            [e for e in e_4 if e is not None],
            [e for e in state.influence if e is not None],
        )
        <= 1e-12
    )


@pytest.mark.parametrize("name", ["lru", "shared"])
def test_trainer_updating_every_few_steps_runs_windows_like_the_dense_path(name):
    """Through the trainer with one update per 5 steps (segments run as one
    window, the last one padded) and resets: the run of the step-by-step
    influence, and for a real state the full influence matrix's, to 1e-12."""
    cell, p, h0, xs, ys, resets = _problem(name, T=12)
    opt = optax.sgd(0.05)
    runs = [
        _train_chunked(cell, p, h0, xs, ys, resets, opt, est.every(5))
        for est in (forward_mode.rtrl(), forward_mode.rtrl(window=1))
    ]
    assert _rel(runs[0].params, runs[1].params) <= 1e-12
    assert _rel(runs[0].params, p) > 1e-3  # it trained
    assert _rel(runs[0].h, runs[1].h) <= 1e-12
    if name == "shared":
        dense = _train_chunked(
            cell, p, h0, xs, ys, resets, opt, forward_mode.rtrl(diagonal=False).every(5)
        )
        assert _rel(runs[0].params, dense.params) <= 1e-12


def _accumulate():
    """An optax transformation that applies no update and sums every
    gradient it sees in its state."""

    def init(params):
        return jax.tree_util.tree_map(jnp.zeros_like, params)

    def update(grads, state, params=None):
        acc = jax.tree_util.tree_map(jnp.add, state, grads)
        return jax.tree_util.tree_map(jnp.zeros_like, grads), acc

    return optax.GradientTransformation(init, update)


def _train_chunked(cell, p, h0, xs, ys, resets, opt, est):
    tr = jbptt.train.Trainer(cell, _mse, opt, est)
    state = tr.init(p, h0=h0)
    for a, b in [(0, 5), (5, 12)]:
        state, _ = tr.run(
            state, xs[a:b], ys[a:b], resets=resets[a:b], reset_state=h0,
            flush=b == 12,
        )  # fmt: skip
    return state


def test_trainer_runs_diagonal_rtrl_like_the_dense_path():
    """minGRU trained online in two chunks with resets: the diagonal
    influence gives the dense influence matrix's run to 1e-12."""
    cell, p, h0, xs, ys, resets = _problem("min_gru", T=12)
    opt = optax.sgd(0.05)
    diag = _train_chunked(cell, p, h0, xs, ys, resets, opt, forward_mode.rtrl())
    dense = _train_chunked(
        cell, p, h0, xs, ys, resets, opt, forward_mode.rtrl(diagonal=False)
    )
    assert _rel(diag.params, dense.params) <= 1e-12
    assert _rel(diag.params, p) > 1e-3  # it trained
    assert _rel(diag.h, dense.h) <= 1e-12


def test_trainer_lru_at_lr_zero_sums_to_bptt():
    """The LRU (complex state) through the trainer in chunks with resets: at
    learning rate 0 the summed online gradients are BPTT's."""
    cell, p, h0, xs, ys, resets = _problem("lru", T=12)
    state = _train_chunked(
        cell, p, h0, xs, ys, resets, _accumulate(), forward_mode.rtrl()
    )
    (_, h_T), g = jbptt.value_and_grad(cell, _mse)(
        p, h0, xs, ys, resets=resets, reset_state=h0
    )
    assert _rel(state.opt_state, g) <= 1e-12
    assert _rel(state.h, h_T) <= 1e-12


def test_bad_inputs():
    with pytest.raises(TypeError, match="diagonal must be True or False"):
        forward_mode.rtrl(diagonal="yes")
    with pytest.raises(ValueError, match="window"):
        forward_mode.rtrl(window=0)


def test_gates_without_forward_mode_get_a_clear_error():
    """Gates built on a custom_vjp function (no jvp) are refused by rtrl()
    with a message naming the cell, jax.jvp and the ways out."""

    @jax.custom_vjp
    def act(x):
        return jnp.tanh(x)

    act.defvjp(lambda x: (jnp.tanh(x), x), lambda x, g: (g / jnp.cosh(x) ** 2,))

    def gates(p, x):
        return jax.nn.sigmoid(x @ p["W"].T), act(x @ p["U"].T)

    def init(key, i, h):
        return {"W": jnp.ones((h, i)), "U": jnp.ones((h, i))}

    cell = cells.diagonal(gates, init, input_size=lambda p: p["W"].shape[1])
    p = cell.init(jax.random.key(0), I, H)
    xs, ys = jnp.ones((T, B, I)), jnp.ones((T, B, H))
    h0 = cell.initial_state(p, (B,))
    with pytest.raises(TypeError, match=r"gates of 'diagonal'.*jax\.jvp.*custom_jvp"):
        forward_mode.rtrl().estimate(jax.random.key(0), cell, _mse, p, h0, xs, ys)
    cell, p, h0, xs, ys, _ = _problem("lru")
    with pytest.raises(TypeError, match="real state"):
        forward_mode.snap1().estimate(jax.random.key(0), cell, _mse, p, h0, xs, ys)


def _memoryless():
    """A diagonal layer with a = 0: h_t = tanh(W x_t), no recurrence."""

    def gates(p, x):
        b = jnp.tanh(x @ p["W"].T)
        return jnp.zeros_like(b), b

    def init(key, i, h):
        return {"W": jax.random.normal(key, (h, i))}

    return cells.diagonal(gates, init, input_size=lambda p: p["W"].shape[1])


def _stack_problem(layers, I=4):
    cell = cells.stack(layers)
    p = cell.init(jax.random.key(0), I, H)
    h0 = cell.initial_state(p, (B,))
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    ys = jax.random.normal(jax.random.key(2), (T, B, H if I != H else I))
    resets = jax.random.bernoulli(jax.random.key(3), 0.25, (T, B))
    return cell, p, h0, xs, ys, resets


@pytest.mark.parametrize(
    "layers",
    [
        lambda: [cells.min_gru(), cells.min_lstm()],
        lambda: [cells.lru(r_min=0.5, r_max=0.9), cells.lru(r_min=0.5, r_max=0.9)],
    ],
    ids=["min_gru+min_lstm", "lru+lru"],
)
def test_layerwise_rtrl_exact_on_top_layer_biased_below(layers):
    """layerwise_rtrl on a 2-layer stack: the top layer's gradient is BPTT's
    to 1e-12, the bottom layer's is not (the path through the upper
    recurrence is ignored); a one-layer stack is exact."""
    layers = layers()
    cell, p, h0, xs, ys, resets = _stack_problem(layers)
    est = forward_mode.layerwise_rtrl(layers)
    (L, h_T), g = est.estimate(
        jax.random.key(0), cell, _mse, p, h0, xs, ys, resets=resets
    )
    (L_ref, h_ref), g_ref = jbptt.value_and_grad(cell, _mse)(
        p, h0, xs, ys, resets=resets
    )
    assert _rel(g[1], g_ref[1]) <= 1e-12
    assert _rel(g[0], g_ref[0]) > 1e-3  # biased across layers
    assert _rel(h_T, h_ref) <= 1e-12
    one = cells.stack(layers[:1])
    _, p1, h1, xs1, ys1, _ = _stack_problem(layers[:1])
    _, g1 = forward_mode.layerwise_rtrl(layers[:1]).estimate(
        jax.random.key(0), one, _mse, p1, h1, xs1, ys1, resets=resets
    )
    _, g1_ref = jbptt.value_and_grad(one, _mse)(p1, h1, xs1, ys1, resets=resets)
    assert _rel(g1, g1_ref) <= 1e-12


@pytest.mark.parametrize(
    "layers",
    [
        lambda: [cells.min_gru(), cells.min_lstm()],
        lambda: [cells.lru(r_min=0.5, r_max=0.9), cells.lru(r_min=0.5, r_max=0.9)],
    ],
    ids=["min_gru+min_lstm", "lru+lru"],
)
@pytest.mark.parametrize("window", [2, 4])
def test_layerwise_windows_are_the_step_by_step_sums(layers, window):
    """layerwise_rtrl(window=w) runs T = 9 steps w at a time (one vjp of the
    stack over the window, then each layer's window rule; the last window
    padded): the step-by-step rule's loss, gradient, end state and carried
    influences to 1e-12, with resets to a reset state of their own, and
    through the trainer under every(5)."""
    layers = layers()
    cell, p, h0, xs, ys, resets = _stack_problem(layers)
    h_reset = jax.tree_util.tree_map(lambda a: 0.5 * a[::-1], h0)
    run = {"resets": resets, "reset_state": h_reset}
    key = jax.random.key(0)
    windowed = forward_mode.layerwise_rtrl(layers, window=window)
    step = forward_mode.layerwise_rtrl(layers, window=1)
    (L, h_T), g = windowed.estimate(key, cell, _mse, p, h0, xs, ys, **run)
    (L1, h1), g1 = step.estimate(key, cell, _mse, p, h0, xs, ys, **run)
    assert _rel(g, g1) <= 1e-12 and _rel(h_T, h1) <= 1e-12
    assert abs(float(L - L1)) <= 1e-12 * abs(float(L1))
    state = step.init(cell, p, h0, xs[0])
    _, _, h_n, e_n = windowed.segment(
        cell, _mse, p, h0, state.influence, xs, ys, None, jnp.ones(T), key,
        resets, h_reset,
    )  # fmt: skip
    for x, y, r in zip(xs, ys, resets, strict=True):
        state, _ = step.step(cell, _mse, key, p, state, x, y, r, h_reset)
    assert _rel(h_n, state.h) <= 1e-12
    leaves = jax.tree_util.tree_leaves  # (None for unused leaves drops out)
    assert _rel(leaves(e_n), leaves(state.influence)) <= 1e-12
    opt = optax.sgd(0.05)
    runs = [
        _train_chunked(cell, p, h0, xs, ys, resets, opt, est.every(5))
        for est in (windowed, step)
    ]
    assert _rel(runs[0].params, runs[1].params) <= 1e-12
    assert _rel(runs[0].params, p) > 1e-3  # it trained


def test_layerwise_rtrl_spatial_backprop_is_exact_under_a_memoryless_layer():
    """With a memoryless top layer (a = 0) no path through an upper
    recurrence exists, so the bottom layer's layer-wise gradient, which
    crosses the top layer by spatial backprop, is exact too."""
    layers = [cells.min_gru(), _memoryless()]
    cell, p, h0, xs, ys, resets = _stack_problem(layers)
    _, g = forward_mode.layerwise_rtrl(layers).estimate(
        jax.random.key(0), cell, _mse, p, h0, xs, ys, resets=resets
    )
    _, g_ref = jbptt.value_and_grad(cell, _mse)(p, h0, xs, ys, resets=resets)
    assert _rel(g, g_ref) <= 1e-12


@pytest.mark.parametrize("window", [1, 4])
def test_layerwise_rtrl_on_a_readout_model_of_the_stack(window):
    """layerwise_rtrl on jbptt.readout(cells.stack(layers)) (params
    {"cell", "readout"}): the head's and the layers' gradients equal those
    on the bare stack with the same head in the loss, so the head's and the
    top layer's are BPTT's; resets included, step by step and in windows."""
    layers = [cells.min_gru(), cells.lru(r_min=0.5, r_max=0.9)]
    model = jbptt.readout(cells.stack(layers), output_size=2)
    _, p, h0, xs, _, resets = _stack_problem(layers)
    params = model.init(jax.random.key(7), I, H)
    params["cell"] = p
    ys = jax.random.normal(jax.random.key(8), (T, B, 2))
    est = forward_mode.layerwise_rtrl(layers, window=window)
    key = jax.random.key(0)
    (L, h_T), g = est.estimate(
        key, model.cell, model.loss_fn, params, h0, xs, ys, resets=resets
    )

    def bare(params):  # the stack alone, the head read from `params` in the loss
        return lambda p, out, y: model.loss_fn({**params, "cell": p}, out, y)

    stack = cells.stack(layers)
    (L1, h1), g1 = est.estimate(key, stack, bare(params), p, h0, xs, ys, resets=resets)
    assert _rel(g["cell"], g1) <= 1e-12 and _rel(h_T, h1) <= 1e-12
    assert abs(float(L - L1)) <= 1e-12 * abs(float(L1))
    _, g_ref = jbptt.value_and_grad(model.cell, model.loss_fn)(
        params, h0, xs, ys, resets=resets
    )
    assert _rel(g["readout"], g_ref["readout"]) <= 1e-12
    assert _rel(g["cell"][1], g_ref["cell"][1]) <= 1e-12
    assert _rel(g["cell"][0], g_ref["cell"][0]) > 1e-3  # biased across layers


def _token_problem(cell, V=5):
    """A token model of ``cell`` (ids in, "xent" out), its params, h0, the
    ids [T, B] and their float form [T, B, 1] (model.encode), labels."""
    model = jbptt.readout(cell, V, "xent", vocab_size=V)
    params = model.init(jax.random.key(4), I, H)
    h0 = model.cell.initial_state(params, (B,))
    ids = jax.random.randint(jax.random.key(5), (T, B), 0, V)
    ys = jax.random.randint(jax.random.key(6), (T, B), 0, V)
    return model, params, h0, ids, model.encode(ids, jnp.float64), ys


@pytest.mark.parametrize("name", ["lru", "min_gru"])
def test_diagonal_rtrl_on_a_token_model_stays_o_theta(name):
    """rtrl() on jbptt.readout(cell, vocab_size=V): the gates' own params
    per unit and the embedding shared (B·|θ_cell| + B·H·|E| numbers, the
    readout's params carried nowhere), and the estimate is BPTT's, the
    embedding's gradient included. (The layout probe once fed the lookup a
    random real, read a NaN row and called every leaf shared: H times the
    memory.)"""
    model, params, h0, ids, xs, ys = _token_problem(CELLS[name]())
    est = forward_mode.rtrl()
    (L, h_T), g = est.estimate(
        jax.random.key(0), model.cell, model.loss_fn, params, h0, xs, ys
    )
    (L_ref, _), g_ref = jbptt.value_and_grad(model.cell, model.loss_fn)(
        params, h0, ids, ys
    )
    assert _rel(g, g_ref) <= 1e-12
    assert abs(float(L - L_ref)) <= 1e-12 * abs(float(L_ref))
    unused = {"C_re", "C_im", "D"} if name == "lru" else set()
    unit = sum(v.size for k, v in params["cell"].items() if k not in unused)
    n = B * unit + B * H * params["embed"].size
    size = 16 if name == "lru" else 8  # complex128 or float64
    problem = estimators.Problem(model.cell, model.loss_fn, params, h0, xs, ys)
    assert est.cost(problem).state_bytes == n * size


@pytest.mark.parametrize("window", [1, 4])
def test_layerwise_rtrl_on_a_token_model_of_the_stack(window):
    """layerwise_rtrl on jbptt.readout(cells.stack(layers), vocab_size=V):
    the first layer reads the ids through the lookup and carries the
    embedding's influence with its own. A one-layer stack's estimate is
    BPTT's, the embedding's gradient included; on two layers the head's and
    the top layer's are BPTT's and the embedding's is not (it sits below);
    step by step and in windows. The trainer takes the ids as they are."""
    one = [cells.min_gru()]
    model, params, h0, ids, xs, ys = _token_problem(cells.stack(one))
    key = jax.random.key(0)
    vg = jbptt.value_and_grad(model.cell, model.loss_fn)
    est = forward_mode.layerwise_rtrl(one, window=window)
    (L, _), g = est.estimate(key, model.cell, model.loss_fn, params, h0, xs, ys)
    (L_ref, _), g_ref = vg(params, h0, ids, ys)
    assert _rel(g, g_ref) <= 1e-12
    assert abs(float(L - L_ref)) <= 1e-12 * abs(float(L_ref))

    two = [cells.min_gru(), cells.lru(r_min=0.5, r_max=0.9)]
    model, params, h0, ids, xs, ys = _token_problem(cells.stack(two))
    est = forward_mode.layerwise_rtrl(two, window=window)
    (_, h_T), g = est.estimate(key, model.cell, model.loss_fn, params, h0, xs, ys)
    (_, h_ref), g_ref = jbptt.value_and_grad(model.cell, model.loss_fn)(
        params, h0, ids, ys
    )
    assert _rel(h_T, h_ref) <= 1e-12
    assert _rel(g["readout"], g_ref["readout"]) <= 1e-12
    assert _rel(g["cell"][1], g_ref["cell"][1]) <= 1e-12
    assert _rel(g["embed"], g_ref["embed"]) > 1e-3  # biased across layers
    if window == 1:
        tr = jbptt.train.Trainer(model.cell, model.loss_fn, optax.sgd(0.1), est)
        state, hist = tr.run(tr.init(params, h0=h0), ids, ys)
        assert _rel(state.params, params) > 1e-3 and np.all(np.isfinite(hist.step_loss))


def test_layerwise_rtrl_trains_and_checks_its_cell():
    layers = [cells.min_gru(), cells.min_gru()]
    cell, p, h0, xs, ys, resets = _stack_problem(layers)
    est = forward_mode.layerwise_rtrl(layers)
    tr = jbptt.train.Trainer(cell, _mse, optax.sgd(0.05), est)
    state, hist = tr.run(tr.init(p, h0=h0), xs, ys, resets=resets)
    assert _rel(state.params, p) > 1e-3 and np.all(np.isfinite(hist.step_loss))
    problem = estimators.Problem(cell, _mse, p, h0, xs, ys)
    n = sum(B * sum(a.size for a in jax.tree_util.tree_leaves(q)) for q in p)
    assert est.cost(problem).state_bytes == n * 8
    assert "biased across layers" in est.cost_report(problem)
    window = 8 * 64 * B * sum(h.shape[-1] for h in h0) * 8  # each layer's
    assert est.footprint(cell, p, h0, xs[0]).work_bytes == n * 8 + window
    assert f"{window:,} bytes more" in est.cost_report(problem)
    with pytest.raises(ValueError, match="cells.stack of the layers"):
        est.estimate(jax.random.key(0), layers[0], _mse, p[0], h0[0], xs, ys)
    with pytest.raises(TypeError, match="must be a diagonal cell"):
        forward_mode.layerwise_rtrl([cells.gru()])


def test_bench_diagonal_rtrl_quick_runs(tmp_path):
    """The benchmark's --quick form runs, writes its files, and the carried
    bytes it prints equal its own formula for both cells."""
    import json

    from benchmarks import bench_diagonal_rtrl

    result = bench_diagonal_rtrl.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "bench_diagonal_rtrl.json").read_text())
    assert saved["config"]["quick"] is True
    assert [(r["cell"], r["window"]) for r in result["rows"]] == [
        ("lru", 1),
        ("lru", 3),
        ("min_gru", 1),
        ("min_gru", 3),
    ]
    for row in result["rows"]:
        assert row["carried_bytes"] == row["formula_bytes"] > 0
        assert row["ratio"] > 0 and "exact" in row["report"]
    text = (tmp_path / "bench_diagonal_rtrl.md").read_text()
    assert "| lru | 3 | 8 | 2 | 4 | 3 |" in text
    assert (
        (tmp_path / "bench_diagonal_rtrl.csv").read_text().startswith("cell,window,T,")
    )
    stacked = bench_diagonal_rtrl.main(
        ["--quick", "--layers", "2", "--out", str(tmp_path)]
    )
    assert [(r["cell"], r["window"]) for r in stacked["rows"]] == [
        ("2×lru", 1),
        ("2×lru", 3),
        ("2×min_gru", 1),
        ("2×min_gru", 3),
    ]
    for row, one in zip(stacked["rows"], result["rows"], strict=True):
        # two layers carry more than one, each layer its own influence
        assert row["carried_bytes"] == row["formula_bytes"] > one["formula_bytes"]
        assert "biased across layers" in row["report"]


@pytest.mark.parametrize("batch", [(), (2, 3)], ids=["unbatched", "2d-batch"])
def test_diagonal_rtrl_any_batch_shape(batch):
    """One unbatched sequence and a [2, 3] batch, with resets: exact."""
    cell = cells.lru(r_min=0.5, r_max=0.95)
    p = cell.init(jax.random.key(0), I, H)
    h0 = cell.initial_state(p, batch) + 0.1j
    xs = jax.random.normal(jax.random.key(1), (T, *batch, I))
    ys = jax.random.normal(jax.random.key(2), (T, *batch, I))
    resets = jnp.zeros((T, *batch), bool).at[3].set(True)
    _, g = forward_mode.rtrl().estimate(
        jax.random.key(0), cell, _mse, p, h0, xs, ys, resets=resets
    )
    _, g_ref = jbptt.value_and_grad(cell, _mse)(p, h0, xs, ys, resets=resets)
    assert _rel(g, g_ref) <= 1e-12
