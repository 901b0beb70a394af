"""The closed-form truncation bias of a linear diagonal recurrence equals
the measured TBPTT(k) bias (TBPTT's gradient minus the exact one)."""

import contextlib
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jbptt
from jbptt import cells, diagnostics, truncation
from jbptt._src.diagonal_bias import linear_truncation_bias


def _mse(p, out, y):
    return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1))


def _real_diagonal(H):
    """h_t = σ(a) ⊙ h_{t-1} + W x_t, read out nonlinearly (c_t depends on h_t)."""

    def gates(p, x):
        return jax.nn.sigmoid(p["a"]), x @ p["W"].T

    def init(key, i, h):
        ka, kw, kc = jax.random.split(key, 3)
        return {
            "a": 3.0 * jax.random.normal(ka, (h,)),
            "W": jax.random.normal(kw, (h, i)),
            "c": jax.random.normal(kc, (h,)),
        }

    def readout(p, h, x):
        return jnp.tanh(h) * p["c"] + h

    return cells.diagonal(
        gates, init, input_size=lambda p: p["W"].shape[1], readout=readout
    )


def _measured(cell, loss_fn, p, h0, xs, ys, k):
    vg = jbptt.value_and_grad(cell, loss_fn)
    w = truncation.tbptt(xs.shape[0], k)
    g_k = vg(p, h0, xs, ys, w)[1]
    g = vg(p, h0, xs, ys)[1]
    return jax.tree_util.tree_map(jnp.subtract, g_k, g), g


def _assert_equal_trees(got, want, scale):
    for path, a in jax.tree_util.tree_leaves_with_path(got):
        b = dict(jax.tree_util.tree_leaves_with_path(want))[path]
        assert a.shape == b.shape, path
        err = float(jnp.max(jnp.abs(a - b)))
        assert err <= 1e-10 * scale, (path, err, scale)


def _norm(tree):
    return float(jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(tree))))


def _problem(cell, T, H, batch, seed, out_size, init=None):
    k = jax.random.split(jax.random.key(seed), 4)
    p = (init or cell.init)(k[0], 3, H)
    h0 = cell.initial_state(p, batch)
    h0 = h0 + jax.random.normal(k[1], h0.shape).astype(h0.dtype)
    xs = jax.random.normal(k[2], (T, *batch, 3))
    ys = jax.random.normal(k[3], (T, *batch, out_size))
    return p, h0, xs, ys


@pytest.mark.parametrize(
    "T,H,k,r",
    [(12, 4, 1, (0.5, 0.99)), (17, 6, 4, (0.9, 0.999)), (24, 3, 5, (0.0, 0.9))],
)
def test_lru_closed_form_equals_measured(T, H, k, r):
    """Complex λ: ν, θ (through λ) and γ, B (through b_t) to 1e-10."""
    cell = cells.lru(r_min=r[0], r_max=r[1])
    p, h0, xs, ys = _problem(cell, T, H, (2,), seed=T, out_size=3)
    got = diagnostics.diagonal_truncation_bias(cell, _mse, p, h0, xs, ys, k)
    want, g = _measured(cell, _mse, p, h0, xs, ys, k)
    _assert_equal_trees(got, want, _norm(g))
    assert _norm(want) > 1e-3 * _norm(g)  # the bias is there to be matched
    for name in ("C_re", "C_im", "D"):  # the readout is never truncated
        assert float(jnp.max(jnp.abs(got[name]))) == 0.0


@pytest.mark.parametrize("T,k,batch", [(10, 3, (2,)), (16, 16, ()), (15, 2, (2, 3))])
def test_real_diagonal_closed_form_equals_measured(T, k, batch):
    cell = _real_diagonal(5)
    p, h0, xs, ys = _problem(cell, T, 5, batch, seed=k, out_size=5)
    got = diagnostics.diagonal_truncation_bias(cell, _mse, p, h0, xs, ys, k)
    want, g = _measured(cell, _mse, p, h0, xs, ys, k)
    _assert_equal_trees(got, want, _norm(g))
    if k == T:  # one chunk: nothing crosses
        assert _norm(got) == 0.0


def test_model_with_readout():
    """A model's cell (params {"cell", "readout"}) goes through the same way."""
    model = jbptt.readout(cells.lru(r_min=0.8, r_max=0.99), output_size=3)
    p, h0, xs, ys = _problem(model.cell, 14, 3, (2,), 1, 3, init=model.init)
    got = diagnostics.diagonal_truncation_bias(
        model.cell, model.loss_fn, p, h0, xs, ys, 3
    )
    want, g = _measured(model.cell, model.loss_fn, p, h0, xs, ys, 3)
    _assert_equal_trees(got, want, _norm(g))


def test_pairs_sum_equals_grouped_form():
    """The per-pair definition: b_s's bias is −Σ λ^{t−s} c_t over t ≥ s in a
    later chunk; λ's is −Σ over the same pairs of λ^{t−s} c_t h_{s−1}."""
    T, H, k = 9, 2, 4
    rng = np.random.default_rng(0)
    lam = np.array([0.8 * np.exp(0.3j), -0.6])
    bs = rng.normal(size=(T, H)) + 1j * rng.normal(size=(T, H))
    c = rng.normal(size=(T, H)) + 1j * rng.normal(size=(T, H))
    h0 = rng.normal(size=H) + 0j
    hs, h = [], h0
    for t in range(T):
        hs.append(h)  # h_{t-1}
        h = lam * h + bs[t]
    want_b = np.zeros((T, H), complex)
    want_lam = np.zeros(H, complex)
    for s in range(T):
        for t in range(s, T):
            if t // k != s // k:
                want_b[s] -= lam ** (t - s) * c[t]
                want_lam -= lam ** (t - s) * c[t] * hs[s]
    got = linear_truncation_bias(lam, bs, c, k, h0)
    np.testing.assert_allclose(got.b, want_b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.lam, want_lam, rtol=1e-12, atol=1e-12)


def test_geometric_form_is_the_mean_dropped_weight():
    """f(|λ|, k) = Σ_τ min(τ, k)/k |λ|^τ / Σ_τ |λ|^τ, checked by counting the
    crossing pairs of a long chunked sequence."""
    for r, k in ((0.9, 1), (0.9, 7), (0.5, 3), (0.99, 16)):
        tau = np.arange(4000)
        crossing = np.minimum(tau, k) / k  # share of positions where lag τ crosses
        want = np.sum(crossing * r**tau) / np.sum(r**tau)
        got = float(diagnostics.geometric_truncation_bias(r, k))
        assert got == pytest.approx(want, rel=1e-9)
    assert float(diagnostics.geometric_truncation_bias(1.0, 8)) == 1.0
    ks = jnp.array([1, 2, 4, 8, 16])
    f = diagnostics.geometric_truncation_bias(0.95, ks)
    assert bool(jnp.all(jnp.diff(f) < 0))  # falls with k


def test_bad_inputs():
    with pytest.raises(ValueError, match="modulus"):
        diagnostics.geometric_truncation_bias(1.5, 2)
    with pytest.raises(ValueError, match="k"):
        diagnostics.geometric_truncation_bias(0.5, 0)
    with pytest.raises(ValueError, match="k"):
        linear_truncation_bias(jnp.ones(2), jnp.ones((3, 2)), jnp.ones((3, 2)), 0)
    with pytest.raises(ValueError, match="dl_dh"):
        linear_truncation_bias(jnp.ones(2), jnp.ones((3, 2)), jnp.ones((3, 1)), 1)
    cell = cells.min_gru()  # its decay reads the input
    p = cell.init(jax.random.key(0), 2, 3)
    xs = jnp.ones((4, 2))
    with pytest.raises(ValueError, match="constant"):
        diagnostics.diagonal_truncation_bias(
            cell, _mse, p, cell.initial_state(p), xs, jnp.ones((4, 3)), 2
        )
    with pytest.raises(TypeError, match="diagonal"):
        elman = cells.elman("tanh")
        pe = elman.init(jax.random.key(0), 2, 3)
        diagnostics.diagonal_truncation_bias(
            elman, _mse, pe, elman.initial_state(pe), xs, jnp.ones((4, 3)), 2
        )


@pytest.mark.e2e
def test_bias_sweep_quick_modern_cells(tmp_path):
    """The sweep's quick form on the LRU (two rings) and minGRU: rows for
    every variant, finite, exact RTRL at float round-off."""
    from experiments import bias_sweep

    argv = ["--cells", "lru", "min_gru", "--r-max", "0.9", "0.99", "--quick"]
    argv += ["--T", "8", "--samples", "8", "--train-steps", "4", "--delays", "1", "3"]
    argv += ["--forward-mode"]
    argv += ["--out", str(tmp_path), "--no-progress", "--x64"]
    with contextlib.redirect_stdout(io.StringIO()):
        rows = bias_sweep.main(argv)
    names = {"lru(r_max=0.9)", "lru(r_max=0.99)", "min_gru"}
    assert {r["cell"] for r in rows} == names
    for r in rows:
        assert np.isfinite(r["rel_bias"]) and np.isfinite(r["rel_variance"]), r
    for r in rows:
        if r["family"] in ("full", "rtrl"):
            assert r["rel_bias"] < 1e-10, r
    # The complex-state LRU has exact RTRL only; the real minGRU all three.
    fams = {(r["cell"], r["family"]) for r in rows}
    assert ("lru(r_max=0.9)", "rtrl") in fams and ("lru(r_max=0.9)", "uoro") not in fams
    assert ("min_gru", "uoro") in fams
    # The closed form sits on the measured TBPTT(k) bias of every LRU.
    tb = {(r["cell"], r["train_step"], r["k"]): r["rel_bias"] for r in rows
          if r["family"] == "tbptt"}  # fmt: skip
    closed = [r for r in rows if r["family"] == "closed-form"]
    assert {r["cell"] for r in closed} == names - {"min_gru"}
    for r in closed:
        assert abs(r["rel_bias"] - tb[(r["cell"], r["train_step"], r["k"])]) < 1e-10
    meta = json.loads((tmp_path / "bias_sweep.json").read_text())
    assert set(meta["headline"]) == names and meta["error"] is None
