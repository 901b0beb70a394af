"""Diagonal recurrences: the cells' equations, and their elementwise reverse
pass (jbptt.DiagonalScan, the default for diagonal cells) against plain
autodiff of a lax.scan of cell.step, with link weights, resets, lengths,
stacks, K weight vectors, the sweep and the trainer (float64)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jbptt
from jbptt import cells, estimators, sweep
from jbptt._src import diagonal_scan, diagonal_solve, diagonal_stack, scan
from jbptt._src.adjoint import diagonal_sweep

T, B, I, H = 10, 3, 2, 4
METHODS = {
    "sequential": jbptt.DiagonalScan(method="sequential"),
    "associative": jbptt.DiagonalScan(method="associative"),
    "blocked": jbptt.DiagonalScan(method="blocked", chunk=3),  # 3 ∤ T
}


def _leaky():
    """A user's own diagonal layer with real gates (input-dependent decay)."""

    def gates(p, x):
        a = jax.nn.sigmoid(x @ p["W_a"].T + p["c"])
        return a, (1 - a) * jnp.tanh(x @ p["W_b"].T)

    def init(key, i, h):
        ka, kb = jax.random.split(key)
        return {
            "W_a": jax.random.normal(ka, (h, i)),
            "W_b": jax.random.normal(kb, (h, i)),
            "c": jnp.zeros(h),
        }

    return cells.diagonal(
        gates,
        init,
        input_size=lambda p: p["W_a"].shape[1],
        readout=lambda p, h, x: jnp.tanh(h) * p["c"] + h,
        name="leaky",
    )


CELLS = {
    "lru": lambda: cells.lru(r_min=0.5, r_max=0.99),
    "min_gru": cells.min_gru,
    "min_lstm": cells.min_lstm,
    "leaky": _leaky,
}


def _hidden(name):  # the LRU outputs its input's size: a readout reads that
    return I if name == "lru" else H


def _mse(p, out, y):
    return jnp.sum((out - y) ** 2)


def _setup(cell, seed=0):
    k = jax.random.split(jax.random.key(seed), 6)
    p = cell.init(k[0], I, H)
    h0 = cell.initial_state(p, (B,))
    h0 = h0 + jax.random.normal(k[1], h0.shape).astype(h0.dtype)
    xs = jax.random.normal(k[2], (T, B, I))
    out = cell.step(p, h0, xs[0])[1]
    ys = jax.random.normal(k[3], (T, *out.shape))
    return p, h0, xs, ys, k[4]


def _plain(cell, p, h0, xs, ys, w, resets, mask):
    """The sequential definition: a lax.scan of cell.step; w_t scales the
    backward of the state entering step t (h + (w − 1)(h − sg(h)))."""

    def body(h, inp):  # h: one array, or a stack's tuple of them
        x_t, w_t, r_t, m_t = inp
        tm = jax.tree_util.tree_map
        h_in = tm(lambda a, b: jnp.where(r_t[:, None], a, b), h0, h)
        h_in = tm(
            lambda v: v + (w_t[:, None] - 1) * (v - jax.lax.stop_gradient(v)), h_in
        )
        h_new, out = cell.step(p, h_in, x_t)
        return tm(lambda a, b: jnp.where(m_t[:, None], a, b), h_new, h), (out, m_t)

    h_T, (outs, m) = jax.lax.scan(body, h0, (xs, w, resets, mask))
    ls = jax.vmap(jax.vmap(_mse, (None, 0, 0)), (None, 0, 0))(p, outs, ys)
    return jnp.sum(jnp.where(m, ls, 0.0)), h_T


def _rel(a, b):
    num = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(a, b, strict=True))
    return num / max(float(jnp.max(jnp.abs(y))) for y in b)


def _leaves(tree):
    return jax.tree_util.tree_leaves(tree)


def _variants(key):
    kw, kr = jax.random.split(key)
    w = jax.random.uniform(kw, (T, B), minval=0.0, maxval=1.5)
    resets = jax.random.bernoulli(kr, 0.25, (T, B)).at[0, 0].set(True)
    lengths = jnp.array([T, 4, 7])
    mask = jnp.arange(T)[:, None] < lengths
    ones, no = jnp.ones((T, B)), jnp.zeros((T, B), bool)
    return {  # name: (w, resets, lengths) for jbptt, (w, resets, mask) for _plain
        "full": ((None, None, None), (ones, no, ~no)),
        "weights": ((w, None, None), (w, no, ~no)),
        "resets": ((w[:, 0], resets, None), (jnp.tile(w[:, :1], B), resets, ~no)),
        "lengths": ((w, resets, lengths), (w, resets, mask)),
    }


def _autodiff(cell, p, h0, xs, ys, plain):
    """Value, h_T and gradients (params, h0) by jax.grad of the sequential
    definition, with ``plain = (w, resets, mask)``."""
    return jax.value_and_grad(
        lambda p, h0: _plain(cell, p, h0, xs, ys, *plain), argnums=(0, 1), has_aux=True
    )(p, h0)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("name", sorted(CELLS))
def test_gradients_equal_autodiff_of_the_sequential_definition(name, method):
    """Value, h_T and gradients (params and h0) equal jax.grad of a lax.scan
    of cell.step, with link weights, resets and lengths, for every scan."""
    cell = CELLS[name]()
    p, h0, xs, ys, key = _setup(cell)
    for (w, resets, lengths), plain in _variants(key).values():
        ref = _autodiff(cell, p, h0, xs, ys, plain)
        vg = jbptt.value_and_grad(cell, _mse, argnums=(0, 1), adjoint=METHODS[method])
        got = vg(p, h0, xs, ys, w, resets=resets, lengths=lengths)
        assert _rel(_leaves(got), _leaves(ref)) < 1e-10


@pytest.mark.parametrize("name", sorted(CELLS))
def test_chunked_sequential_path_over_many_chunks(name, monkeypatch):
    """The sequential method runs in chunks and keeps only each chunk's
    starting state: with chunks of 3 steps (3 ∤ T, a padded tail) its value,
    h_T and gradients (params, h0 and xs) still equal autodiff, with link
    weights, resets and lengths, and jbptt.forward's states are the scan's."""
    cell = CELLS[name]()
    p, h0, xs, ys, key = _setup(cell)
    size, itemsize = math.prod(h0.shape), h0.dtype.itemsize
    monkeypatch.setattr(diagonal_scan, "CHUNK_BYTES", 3 * size * itemsize)
    monkeypatch.setattr(diagonal_scan, "WHOLE_ELEMENTS", 0)
    assert diagonal_scan.chunk_steps(T, size, itemsize) == 3
    for (w, resets, lengths), plain in _variants(key).values():
        ref = _autodiff(cell, p, h0, xs, ys, plain)
        vg = jbptt.value_and_grad(cell, _mse, argnums=(0, 1))
        got = vg(p, h0, xs, ys, w, resets=resets, lengths=lengths)
        assert _rel(_leaves(got), _leaves(ref)) < 1e-10

    def run(xs):
        return jax.lax.scan(lambda h, x: cell.step(p, h, x), h0, xs)

    def energy(xs, scan_fn):
        h_T, outs = scan_fn(xs)
        return jnp.sum(outs**2) + jnp.sum(jnp.abs(h_T) ** 2)

    dxs = jax.grad(energy)(xs, lambda xs: jbptt.rnn_scan(cell, p, h0, xs))
    assert _rel([dxs], [jax.grad(energy)(xs, run)]) < 1e-10
    _, _, res = jbptt.forward(cell, p, h0, xs)
    ref_hs = jax.lax.scan(lambda h, x: (cell.step(p, h, x)[0],) * 2, h0, xs)[1]
    assert isinstance(res.res, diagonal_scan.Chunked)
    assert res.res.starts.shape == (4, *h0.shape)
    assert _rel([res.hs], [ref_hs]) < 1e-12


@pytest.mark.parametrize("name", sorted(CELLS))
def test_backward_many_is_k_backward_passes(name, monkeypatch):
    """backward_many (each chunk recomputed once for K weight vectors) gives
    each row's gradient of backward, with resets and lengths, over chunks
    of 3 steps."""
    cell = CELLS[name]()
    p, h0, xs, ys, key = _setup(cell)
    chunk = 3 * math.prod(h0.shape) * h0.dtype.itemsize
    monkeypatch.setattr(diagonal_scan, "CHUNK_BYTES", chunk)
    monkeypatch.setattr(diagonal_scan, "WHOLE_ELEMENTS", 0)
    (w, resets, lengths), _ = _variants(key)["lengths"]
    ws = jnp.stack([w, 0.5 * w, jnp.ones_like(w)])
    _, outs, res = jbptt.forward(cell, p, h0, xs, lengths=lengths, resets=resets)
    douts = jax.random.normal(jax.random.key(5), outs.shape)
    dh_T = jnp.zeros_like(h0)
    got = diagonal_scan.backward_many(cell, p, res, ws, dh_T, douts)
    for k in range(ws.shape[0]):
        ref = diagonal_scan.backward(cell, p, res, ws[k], dh_T, douts)[0]
        row = jax.tree_util.tree_map(lambda g, k=k: g[k], got)
        assert _rel(_leaves(row), _leaves(ref)) < 1e-12


def test_chunk_steps_runs_a_short_sequence_whole():
    """One chunk up to WHOLE_ELEMENTS state numbers, then chunks of about
    CHUNK_BYTES of states (half as many steps for states twice as wide), or
    of the bytes asked for."""
    whole, chunk = diagonal_scan.WHOLE_ELEMENTS, diagonal_scan.CHUNK_BYTES
    assert diagonal_scan.chunk_steps(whole // 16, 16) == whole // 16
    assert diagonal_scan.chunk_steps(whole // 16 + 1, 16, 4) == chunk // 64
    assert diagonal_scan.chunk_steps(whole // 16 + 1, 16, 8) == chunk // 128
    assert diagonal_scan.chunk_steps(whole // 16 + 1, 16, 4, chunk // 2) == chunk // 128
    assert diagonal_scan.chunk_steps(4096, 3 * chunk, 4) == 1


@pytest.mark.parametrize("name", sorted(CELLS))
def test_default_runs_the_diagonal_path_with_the_same_gradients(name):
    """ReverseScan() (adjoint=None) on a diagonal cell runs the elementwise
    path (scan.cell_path) and equals Autodiff; readout models keep it."""
    cell = CELLS[name]()
    assert scan.cell_path(cell).backward is diagonal_scan.backward
    model = jbptt.readout(cell, output_size=2)
    assert scan.cell_path(model.cell).backward is diagonal_scan.backward
    assert scan.cell_path(cells.gru()).backward is not diagonal_scan.backward
    p = model.init(jax.random.key(1), I, _hidden(name))
    h0 = model.cell.initial_state(p, (B,))
    xs, ys = jax.random.normal(jax.random.key(2), (T, B, I)), jnp.ones((T, B, 2))
    w = jax.random.uniform(jax.random.key(3), (T,))
    for adjoint in (None, jbptt.ReverseScan(checkpoint=4), jbptt.Budget(3)):
        got = jbptt.value_and_grad(model.cell, model.loss_fn, adjoint=adjoint)(
            p, h0, xs, ys, w
        )
        ref = jbptt.value_and_grad(model.cell, model.loss_fn, adjoint=jbptt.Autodiff())(
            p, h0, xs, ys, w
        )
        assert _rel(_leaves(got), _leaves(ref)) < 1e-10


@pytest.mark.parametrize("method", ["associative", "blocked"])
def test_parallel_forward_equals_the_sequential_one(method):
    """The parallel scans' states and outputs equal the sequential loop's to
    1e-12 over a long sequence (|λ| near 1), chunks not dividing T."""
    cell = cells.lru(r_min=0.99, r_max=0.9999)
    p = cell.init(jax.random.key(0), I, 8)
    Tl = 301
    xs = jax.random.normal(jax.random.key(1), (Tl, B, I))
    h0 = cell.initial_state(p, (B,)) + 1.0
    w = jnp.ones(Tl)

    def run(adjoint):
        return jbptt.rnn_scan(cell, p, h0, xs, w, adjoint=adjoint)

    ref = run(METHODS["sequential"])
    for chunk in (None, 7, 1, Tl):
        got = run(jbptt.DiagonalScan(method=method, chunk=chunk))
        assert _rel(_leaves(got), _leaves(ref)) < 1e-12


def test_two_layer_stack_is_exact():
    """A stack of diagonal layers (the generic stacked path) and the
    gradients of each layer equal autodiff of the sequential definition."""
    cell = cells.stack([cells.lru(r_min=0.5), cells.min_gru()])
    k = jax.random.split(jax.random.key(4), 4)
    p = cell.init(k[0], I, (I, H))  # the LRU's output has its input's size
    h0 = cell.initial_state(p, (B,))
    xs, ys = jax.random.normal(k[1], (T, B, I)), jax.random.normal(k[2], (T, B, H))
    w = jax.random.uniform(k[3], (T,))
    resets = jnp.zeros((T, B), bool).at[5, 1].set(True)
    got = jbptt.value_and_grad(cell, _mse)(p, h0, xs, ys, w, resets=resets)
    ref = jax.value_and_grad(
        lambda p: jbptt.loss(cell, _mse)(p, h0, xs, ys, w, resets=resets), has_aux=True
    )(p)
    assert _rel(_leaves(got), _leaves(ref)) < 1e-10


def _diagonal_stack(seed=5):
    """LRU -> minGRU -> a GLU-read diagonal layer, and its problem."""
    cell = cells.stack([cells.lru(r_min=0.5), cells.min_gru(), _glu_layer()])
    k = jax.random.split(jax.random.key(seed), 5)
    p = cell.init(k[0], I, (I, H, H))  # the LRU's output has its input's size
    h0 = jax.tree_util.tree_map(
        lambda a: a + 0.3 * jax.random.normal(k[1], a.shape).astype(a.dtype),
        cell.initial_state(p, (B,)),
    )
    xs, ys = jax.random.normal(k[2], (T, B, I)), jax.random.normal(k[3], (T, B, H))
    return cell, p, h0, xs, ys, k[4]


@pytest.mark.parametrize("variant", ["full", "weights", "resets", "lengths"])
def test_diagonal_stack_runs_layer_by_layer_and_is_exact(variant):
    """A stack of diagonal layers takes the layer-by-layer path (each layer
    one diagonal pass over all steps, the reverse from the top down): value,
    h_T and gradients (params, h0) equal jax.grad of the sequential
    definition, with link weights, resets to h0 and lengths."""
    cell, p, h0, xs, ys, key = _diagonal_stack()
    assert scan.cell_path(cell).backward is diagonal_stack.backward
    (w, resets, lengths), plain = _variants(key)[variant]
    ref = _autodiff(cell, p, h0, xs, ys, plain)
    vg = jbptt.value_and_grad(cell, _mse, argnums=(0, 1))
    got = vg(p, h0, xs, ys, w, resets=resets, lengths=lengths)
    assert _rel(_leaves(got), _leaves(ref)) < 1e-10
    generic = cell._replace(diagonal_layers=None)  # the per-step vjp path
    assert scan.cell_path(generic).backward is not diagonal_stack.backward
    vg = jbptt.value_and_grad(generic, _mse, argnums=(0, 1))
    again = vg(p, h0, xs, ys, w, resets=resets, lengths=lengths)
    assert _rel(_leaves(got), _leaves(again)) < 1e-10
    for method in ("associative", "blocked"):  # the strategy picks every layer's scan
        vg = jbptt.value_and_grad(cell, _mse, argnums=(0, 1), adjoint=METHODS[method])
        again = vg(p, h0, xs, ys, w, resets=resets, lengths=lengths)
        assert _rel(_leaves(again), _leaves(ref)) < 1e-10


def test_diagonal_stack_sweeps_weight_vectors_and_runs_chunked(monkeypatch):
    """K link-weight vectors on the diagonal stack equal K separate calls,
    and with every layer's sequential pass in chunks of 3 steps the
    gradients still equal autodiff of the definition."""
    cell, p, h0, xs, ys, key = _diagonal_stack(seed=6)
    (w, resets, lengths), plain = _variants(key)["lengths"]
    ws = jnp.stack([w[:, 0], 0.5 * w[:, 1], jnp.ones(T)])  # one weight per step
    kw = dict(resets=resets, lengths=lengths)
    (L, h_T), gs = jbptt.grads_for_weights(cell, _mse, p, h0, xs, ys, ws, **kw)
    assoc = METHODS["associative"]
    (_, _), gs_assoc = jbptt.grads_for_weights(
        cell, _mse, p, h0, xs, ys, ws, adjoint=assoc, **kw
    )
    for k in range(ws.shape[0]):
        (L1, h1), g = jbptt.value_and_grad(cell, _mse)(p, h0, xs, ys, ws[k], **kw)
        gk = jax.tree_util.tree_map(lambda a, k=k: a[k], gs)
        assert _rel(_leaves(((L, h_T), gk)), _leaves(((L1, h1), g))) < 1e-10
        gk = jax.tree_util.tree_map(lambda a, k=k: a[k], gs_assoc)
        assert _rel(_leaves(gk), _leaves(g)) < 1e-10
    monkeypatch.setattr(diagonal_scan, "CHUNK_BYTES", 3 * B * H * h0[0].dtype.itemsize)
    monkeypatch.setattr(diagonal_scan, "WHOLE_ELEMENTS", 0)
    ref = _autodiff(cell, p, h0, xs, ys, plain)
    vg = jbptt.value_and_grad(cell, _mse, argnums=(0, 1))
    got = vg(p, h0, xs, ys, w, resets=resets, lengths=lengths)
    assert _rel(_leaves(got), _leaves(ref)) < 1e-10


def test_trainer_truncation_keeps_the_diagonal_stack_path(monkeypatch):
    """A diagonal stack trained online by TBPTT and ARTBP (segments split
    into blocks past the top bucket, resets) keeps the layer-by-layer path,
    under a checkpointed strategy too (whose loops run the padding), and
    trains as the per-step path and Autodiff do."""
    cell, p, h0, xs, _, _ = _diagonal_stack(seed=7)
    Ts = 24
    xs = jax.random.normal(jax.random.key(8), (Ts, B, I))
    ys = jnp.cumsum(xs[..., :1], axis=0) * jnp.ones(H)
    resets = jnp.zeros((Ts, B), bool).at[9, 1].set(True)
    paths, cell_path = [], scan.cell_path

    def spy(c):  # records every path the scans take
        paths.append(cell_path(c))
        return paths[-1]

    monkeypatch.setattr(scan, "cell_path", spy)
    generic = cell._replace(diagonal_layers=None)
    for est in (estimators.tbptt(9), estimators.artbp(0.2)):
        runs = []
        sqrt = jbptt.ReverseScan(checkpoint="sqrt")  # no steps=: a padding mask
        for c, adj in ((cell, None), (generic, None), (cell, jbptt.Autodiff()),
                       (cell, sqrt)):  # fmt: skip
            paths.clear()
            top = jbptt.train.Buckets(top=4)
            tr = jbptt.train.Trainer(
                c, _mse, optax.sgd(0.002), est, buckets=top, adjoint=adj
            )
            state = tr.init(p, jax.random.key(5), h0)
            state, hist = tr.run(state, xs, ys, resets=resets)
            runs.append((_leaves(state.params), np.asarray(hist.loss), list(paths)))
        (p0, l0, used), *others = runs
        assert scan.cell_path(cell) in used  # the layer-by-layer path ran
        assert scan.cell_path(cell) in others[-1][2]  # under a checkpoint too
        for p1, l1, _ in others:
            assert _rel(p0, p1) < 1e-10
            np.testing.assert_allclose(l0, l1, rtol=1e-10)


@pytest.mark.parametrize("stacked", [False, True], ids=["cell", "stack"])
def test_forward_mode_through_diagonal_scan_names_the_remedy(stacked):
    """jax.jvp through DiagonalScan (a custom_vjp, one cell or a stack) gets
    the TypeError that names adjoint=jbptt.Autodiff(), and Autodiff's jvp
    works on the same cell."""
    if stacked:
        cell, p, h0, xs, _, _ = _diagonal_stack()
    else:
        cell = cells.min_gru()
        p, h0, xs, _, _ = _setup(cell)
    tangent = jax.tree_util.tree_map(jnp.ones_like, p)

    def run(adjoint):
        return lambda p: jbptt.rnn_scan(cell, p, h0, xs, adjoint=adjoint)[1]

    with pytest.raises(TypeError, match=r"adjoint=jbptt\.Autodiff\(\)"):
        jax.jvp(run(METHODS["associative"]), (p,), (tangent,))
    _, tan = jax.jvp(run(jbptt.Autodiff()), (p,), (tangent,))
    assert bool(jnp.all(jnp.isfinite(tan))) and float(jnp.max(jnp.abs(tan))) > 0


def _glu_layer():
    """A minGRU-style diagonal layer whose readout is a GLU, the block
    researchers put between diagonal layers: out = (W_o h) ⊙ σ(W_g h)."""

    def gates(p, x):
        z = jax.nn.sigmoid(x @ p["W_z"].T)
        return 1 - z, z * (x @ p["W_h"].T)

    def init(key, i, h):
        k = jax.random.split(key, 4)
        return {
            "W_z": jax.random.normal(k[0], (h, i)),
            "W_h": jax.random.normal(k[1], (h, i)),
            "W_o": jax.random.normal(k[2], (h, h)) / h**0.5,
            "W_g": jax.random.normal(k[3], (h, h)) / h**0.5,
        }

    def glu(p, h, x):
        return (h @ p["W_o"].T) * jax.nn.sigmoid(h @ p["W_g"].T)

    return cells.diagonal(
        gates, init, input_size=lambda p: p["W_z"].shape[1], readout=glu, name="glu"
    )


def test_readout_model_of_a_diagonal_stack_keeps_its_path():
    """jbptt.readout around a diagonal stack (params {"cell", "readout"})
    runs the stack layer by layer, and its gradients, the head's included,
    equal jax.grad of the plain forward (link weights per sequence, resets
    and lengths), by the default strategy, by DiagonalScan and for K weight
    vectors at once."""
    stack, p, h0, xs, ys, key = _diagonal_stack(seed=8)
    model = jbptt.readout(stack, output_size=2)
    assert scan.cell_path(model.cell).backward is diagonal_stack.backward
    params = model.init(jax.random.key(9), I, (I, H, H))
    params["cell"] = p
    ys = jax.random.normal(jax.random.key(10), (T, B, 2))
    (w, resets, lengths), _ = _variants(key)["lengths"]
    kw = dict(resets=resets, lengths=lengths)
    ref = jax.value_and_grad(
        lambda q: jbptt.loss(model.cell, model.loss_fn)(q, h0, xs, ys, w, **kw),
        has_aux=True,
    )(params)
    generic = model.cell._replace(diagonal_layers=None, layer_params=None)
    assert scan.cell_path(generic).backward is not diagonal_stack.backward
    for cell, adjoint in [(model.cell, None), (model.cell, METHODS["sequential"]),
                          (generic, None)]:  # fmt: skip
        vg = jbptt.value_and_grad(cell, model.loss_fn, adjoint=adjoint)
        got = vg(params, h0, xs, ys, w, **kw)
        assert _rel(_leaves(got), _leaves(ref)) < 1e-10
    ws = jnp.stack([jnp.linspace(0.0, 1.5, T), jnp.ones(T)])  # one weight a step
    _, gs = jbptt.grads_for_weights(
        model.cell, model.loss_fn, params, h0, xs, ys, ws, **kw
    )
    for k in range(2):
        _, g = jbptt.value_and_grad(generic, model.loss_fn)(
            params, h0, xs, ys, ws[k], **kw
        )
        gk = jax.tree_util.tree_map(lambda a, k=k: a[k], gs)
        assert _rel(_leaves(gk), _leaves(g)) < 1e-10


def test_stack_with_glu_between_diagonal_layers_is_exact():
    """Two diagonal layers with a GLU between them (each layer's readout),
    lengths and link weights: gradients equal autodiff of the definition."""
    cell = cells.stack([_glu_layer(), _glu_layer()])
    k = jax.random.split(jax.random.key(6), 4)
    p = cell.init(k[0], I, H)
    h0 = cell.initial_state(p, (B,))
    xs, ys = jax.random.normal(k[1], (T, B, I)), jax.random.normal(k[2], (T, B, H))
    w = jax.random.uniform(k[3], (T,))
    lengths = jnp.array([T, 7, 3])
    got = jbptt.value_and_grad(cell, _mse)(p, h0, xs, ys, w, lengths=lengths)
    ref = jax.value_and_grad(
        lambda p: jbptt.loss(cell, _mse)(p, h0, xs, ys, w, lengths=lengths),
        has_aux=True,
    )(p)
    assert _rel(_leaves(got), _leaves(ref)) < 1e-10


@pytest.mark.parametrize("adjoint", [None, METHODS["associative"], METHODS["blocked"]])
def test_grads_for_weights_equal_separate_calls(adjoint):
    """K weight vectors from one forward equal K value_and_grad calls."""
    cell = cells.min_gru()
    p, h0, xs, ys, key = _setup(cell)
    ws = jax.random.uniform(key, (4, T)).at[1, 3].set(0.0)
    resets = jnp.zeros((T, B), bool).at[6, 2].set(True)
    lengths = jnp.array([T, 5, 8])
    kw = dict(resets=resets, lengths=lengths)
    (L, h_T), gs = jbptt.grads_for_weights(
        cell, _mse, p, h0, xs, ys, ws, adjoint=adjoint, **kw
    )
    for k in range(ws.shape[0]):
        (L1, h1), g = jbptt.value_and_grad(cell, _mse, adjoint=adjoint)(
            p, h0, xs, ys, ws[k], **kw
        )
        gk = jax.tree_util.tree_map(lambda a, k=k: a[k], gs)
        assert _rel(_leaves(((L, h_T), gk)), _leaves(((L1, h1), g))) < 1e-10


@pytest.mark.parametrize("name", sorted(CELLS))
def test_sequential_chunk_sets_the_recomputed_chunks(name, monkeypatch):
    """DiagonalScan("sequential", chunk=3) keeps the state entering each of
    ⌈T/3⌉ chunks and its gradients equal autodiff; K weight vectors by the
    default strategy take chunks of SWEEP_CHUNK_ELEMENTS and equal K calls."""
    cell = CELLS[name]()
    p, h0, xs, ys, key = _setup(cell)
    strategy = jbptt.DiagonalScan("sequential", chunk=3)
    _, _, res = diagonal_scan.forward(cell, p, h0, xs, how=("sequential", 3))
    assert res.res.starts.shape == (4, *h0.shape)
    variants = _variants(key)
    for (w, resets, lengths), plain in (variants["full"], variants["lengths"]):
        ref = _autodiff(cell, p, h0, xs, ys, plain)
        vg = jbptt.value_and_grad(cell, _mse, argnums=(0, 1), adjoint=strategy)
        got = vg(p, h0, xs, ys, w, resets=resets, lengths=lengths)
        assert _rel(_leaves(got), _leaves(ref)) < 1e-10
    monkeypatch.setattr(diagonal_scan, "SWEEP_CHUNK_ELEMENTS", 3 * math.prod(h0.shape))
    monkeypatch.setattr(diagonal_scan, "WHOLE_ELEMENTS", 0)
    forward, _ = diagonal_sweep(diagonal_solve.AUTO_HOW)
    assert forward(cell, p, h0, xs)[2].res.starts.shape == (4, *h0.shape)
    ws = jax.random.uniform(key, (3, T)).at[1, 3].set(0.0)
    (L, h_T), gs = jbptt.grads_for_weights(cell, _mse, p, h0, xs, ys, ws)
    for k in range(ws.shape[0]):
        (L1, h1), g = jbptt.value_and_grad(cell, _mse)(p, h0, xs, ys, ws[k])
        gk = jax.tree_util.tree_map(lambda a, k=k: a[k], gs)
        assert _rel(_leaves(((L, h_T), gk)), _leaves(((L1, h1), g))) < 1e-10


@pytest.mark.parametrize("adjoint", [None, METHODS["associative"]])
def test_rnn_scan_steps_runs_the_leading_steps(adjoint):
    """rnn_scan(steps=s) equals running the first s steps (outputs after
    them zero), values and gradients."""
    cell = cells.lru(r_min=0.5)
    p, h0, xs, _, _ = _setup(cell)
    s = 6

    def f(p, n, xs):
        h_T, outs = jbptt.rnn_scan(cell, p, h0, xs, steps=n, adjoint=adjoint)
        return jnp.sum(outs**2) + jnp.sum(jnp.abs(h_T) ** 2), (h_T, outs)

    (v, (h_T, outs)), g = jax.value_and_grad(f, has_aux=True)(p, s, xs)
    (v1, (h1, outs1)), g1 = jax.value_and_grad(f, has_aux=True)(p, None, xs[:s])
    assert float(jnp.max(jnp.abs(outs[s:]))) == 0.0
    assert _rel(_leaves((v, h_T, outs[:s], g)), _leaves((v1, h1, outs1, g1))) < 1e-10


def test_lru_forward_is_the_papers():
    """LRU: λ = exp(−exp(ν) + i exp(θ)), h = λh + exp(γ)(B_re + iB_im)x,
    out = Re((C_re + iC_im)h) + Dx, written out here step by step."""
    cell = cells.lru()
    p = cell.init(jax.random.key(0), I, H)
    xs = np.asarray(jax.random.normal(jax.random.key(1), (T, I)))
    q = {k: np.asarray(v) for k, v in p.items()}
    lam = np.exp(-np.exp(q["nu_log"]) + 1j * np.exp(q["theta_log"]))
    Bc, Cc = q["B_re"] + 1j * q["B_im"], q["C_re"] + 1j * q["C_im"]
    h, outs = np.zeros(H, complex), []
    for x in xs:
        h = lam * h + np.exp(q["gamma_log"]) * (Bc @ x)
        outs.append(np.real(Cc @ h) + q["D"] * x)
    h_T, got = jbptt.rnn_scan(cell, p, cell.initial_state(p), jnp.asarray(xs))
    np.testing.assert_allclose(got, np.stack(outs), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h_T, h, rtol=1e-12, atol=1e-12)


def test_lru_ring_initialisation():
    """|λ| within [r_min, r_max], phase within [0, max_phase], γ = √(1−|λ|²)."""
    r_min, r_max, phase = 0.4, 0.9, math.pi / 3
    cell = cells.lru(r_min, r_max, phase)
    p = cell.init(jax.random.key(0), 3, 512)
    lam, _ = cell.diagonal.gates(p, jnp.zeros((1, 3)))  # λ, constant: [H]
    assert lam.shape == (512,)
    mod = np.abs(lam)
    assert r_min <= mod.min() and mod.max() <= r_max
    assert mod.min() < r_min + 0.05 and mod.max() > r_max - 0.05  # fills the ring
    ang = np.exp(np.asarray(p["theta_log"]))
    assert 0 <= ang.min() and ang.max() <= phase
    np.testing.assert_allclose(np.exp(p["gamma_log"]), np.sqrt(1 - mod**2), rtol=1e-12)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


@pytest.mark.parametrize("name", ["min_gru", "min_lstm"])
def test_min_rnn_forward_is_the_papers(name):
    """minGRU: h = (1 − z)h + z h̃; minLSTM: h = f/(f+i) h + i/(f+i) h̃."""
    cell = CELLS[name]()
    p = cell.init(jax.random.key(0), I, H)
    q = {k: np.asarray(v) for k, v in p.items()}
    xs = np.asarray(jax.random.normal(jax.random.key(1), (T, I)))
    h, outs = np.full(H, 0.5), []
    for x in xs:
        h_tilde = q["W_h"] @ x + q["b_h"]
        if name == "min_gru":
            z = _sigmoid(q["W_z"] @ x + q["b_z"])
            h = (1 - z) * h + z * h_tilde
        else:
            f = _sigmoid(q["W_f"] @ x + q["b_f"])
            i = _sigmoid(q["W_i"] @ x + q["b_i"])
            h = f / (f + i) * h + i / (f + i) * h_tilde
        outs.append(h)
    h0 = cell.initial_state(p) + 0.5
    _, got = jbptt.rnn_scan(cell, p, h0, jnp.asarray(xs))
    np.testing.assert_allclose(got, np.stack(outs), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["min_gru", "lru"])
def test_sweep_and_trainer_take_diagonal_cells(name):
    """sweep.sweep (TBPTT, ARTBP) and train.Trainer (TBPTT, ARTBP in
    chunks, resets) give Autodiff's numbers on the default diagonal path."""
    model = jbptt.readout(CELLS[name](), output_size=1)
    p = model.init(jax.random.key(0), I, _hidden(name))
    Ts = 24
    xs = jax.random.normal(jax.random.key(1), (Ts, B, I))
    ys = jnp.cumsum(xs[..., :1], axis=0)
    h0 = model.cell.initial_state(p, (B,))
    prob = estimators.Problem(model.cell, model.loss_fn, p, h0, xs, ys)
    ests = [estimators.tbptt(4), estimators.artbp(0.3)]
    key = jax.random.key(3)
    ref = sweep.sweep(prob, ests, key, 4, adjoint=jbptt.Autodiff())
    res = sweep.sweep(prob, ests, key, 4)
    np.testing.assert_allclose(res.rel_bias, ref.rel_bias, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res.rel_variance, ref.rel_variance, rtol=1e-10)
    resets = jnp.zeros((Ts, B), bool).at[9, 1].set(True)
    for est in ests:
        runs = []
        for adj in (None, jbptt.Autodiff()):
            tr = jbptt.train.Trainer(
                model.cell,
                model.loss_fn,
                optax.sgd(0.05),
                est,
                buckets=jbptt.train.Buckets(top=6),
                adjoint=adj,
            )
            state, hist = tr.run(tr.init(p, jax.random.key(5)), xs, ys, resets=resets)
            runs.append((_leaves(state.params), np.asarray(hist.loss)))
        (p0, l0), (p1, l1) = runs
        assert _rel(p0, p1) < 1e-10
        np.testing.assert_allclose(l0, l1, rtol=1e-10)


def test_bad_strategy_fields_and_cells():
    with pytest.raises(ValueError, match="method: unknown method 'x'"):
        jbptt.value_and_grad(cells.min_gru(), _mse, adjoint=jbptt.DiagonalScan("x"))
    with pytest.raises(ValueError, match="chunk must be None or an int ≥ 1"):
        jbptt.value_and_grad(cells.lru(), _mse, adjoint=jbptt.DiagonalScan(chunk=0))
    cell = cells.elman()
    p = cell.init(jax.random.key(0), I, H)
    with pytest.raises(TypeError, match=r"DiagonalScan runs diagonal cells only"):
        jbptt.rnn_scan(
            cell, p, cell.initial_state(p), jnp.ones((T, I)), adjoint=METHODS["blocked"]
        )
