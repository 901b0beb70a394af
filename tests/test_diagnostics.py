"""jbptt.diagnostics: per-lag norms against direct jax.grad, decay/growth,
Jacobian spectra, Lyapunov exponents, truncation tie-in, bad input."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jbptt
from jbptt import cells, diagnostics, truncation

T, B, I, H = 6, 3, 2, 4


def _from_fn_cell():
    def init(key, i, h):
        k1, k2 = jax.random.split(key)
        return {
            "A": jax.random.normal(k1, (h, h)) / jnp.sqrt(h),
            "B": jax.random.normal(k2, (h, i)),
        }

    def step(p, h, x):
        h = jnp.tanh(h @ p["A"].T + x @ p["B"].T) + 0.1 * h
        return h, h

    return cells.from_fn(init, step, lambda p, b=(): jnp.zeros(b + (p["A"].shape[0],)))


CELLS = {
    "elman": lambda: cells.elman("tanh"),
    "lstm": cells.lstm,
    "gru": cells.gru,
    "flax_lstm": lambda: cells.from_flax(nn.LSTMCell(features=H)),
    "from_fn": _from_fn_cell,
}


def _problem(name, batch=(B,), seed=0):
    model = jbptt.readout(CELLS[name](), output_size=2)
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    # float64 throughout (Flax initialises float32 whatever x64 says)
    params = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float64), model.init(k1, I, H)
    )
    xs = jax.random.normal(k2, (T, *batch, I))
    ys = jax.random.normal(k3, (T, *batch, 2))
    h0 = model.cell.initial_state(params, batch)
    return model, params, h0, xs, ys


def _reference(model, params, h0, xs, ys, L):
    """‖∂ℓ_t/∂h_{t-τ}‖ by jax.grad of each ℓ_t w.r.t. the state h_{t-τ}."""
    cell, loss_fn = model.cell, model.loss_fn
    hs, outs, h = [], [], h0
    for t in range(T):
        h, out = cell.step(params, h, xs[t])
        hs.append(h)
        outs.append(out)
    per_step = np.zeros((T, L, *xs.shape[1:-1]))
    for t in range(T):
        for tau in range(min(L, t + 1)):
            s = t - tau

            def ell(h_s, s=s, t=t):
                if s == t:  # lag 0: ℓ_t through out_t = h (last leaf of the state)
                    return loss_fn(params, jax.tree_util.tree_leaves(h_s)[-1], ys[t])
                h = h_s
                for r in range(s + 1, t + 1):
                    h, out = cell.step(params, h, xs[r])
                return loss_fn(params, out, ys[t])

            g = jax.grad(ell)(hs[s])
            sq = sum(jnp.sum(a**2, -1) for a in jax.tree_util.tree_leaves(g))
            per_step[t, tau] = np.sqrt(sq)
    counts = (T - np.arange(L)).reshape((L,) + (1,) * (xs.ndim - 2))
    return per_step.sum(0) / counts, per_step


# GRU goes through the same rules path as Elman/LSTM (checked in the tie-in test).
@pytest.mark.parametrize("name", ["elman", "lstm", "flax_lstm", "from_fn"])
def test_per_lag_norms_match_direct_grad(name):
    model, params, h0, xs, ys = _problem(name)
    L = T
    fn = diagnostics.per_lag_norms(
        model.cell, model.loss_fn, L, per_sequence=True, per_step=True
    )
    got = jax.jit(fn)(params, h0, xs, ys)
    want_mean, want_steps = _reference(model, params, h0, xs, ys, L)
    np.testing.assert_allclose(got.mean, want_mean, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(got.per_step, want_steps, rtol=1e-10, atol=1e-14)
    assert np.all(want_mean > 0)  # every lag carries gradient here


def test_batch_mean_unbatched_and_short_max_lag():
    model, params, h0, xs, ys = _problem("lstm")
    full = diagnostics.per_lag_norms(model.cell, model.loss_fn, T, per_sequence=True)
    mean = diagnostics.per_lag_norms(model.cell, model.loss_fn, 3)
    per_seq = full(params, h0, xs, ys).mean
    np.testing.assert_allclose(mean(params, h0, xs, ys).mean, per_seq[:3].mean(1))
    # vmap over unbatched sequences equals the batched call (the batch-mean
    # loss scales each sequence's cotangent by 1/B)
    vm = jax.vmap(
        lambda h0_, x_, y_: full(params, h0_, x_, y_).mean, in_axes=(0, 1, 1)
    )(h0, xs, ys)
    np.testing.assert_allclose(vm.T / B, per_seq, rtol=1e-10)


def _elman_with_W(activation, W, T_, batch=8, input_scale=0.1, seed=0):
    cell = cells.elman(activation)
    Hn = W.shape[0]
    model = jbptt.readout(cell, output_size=1)
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    params = model.init(k1, 1, Hn)
    params["cell"]["W"] = W
    xs = input_scale * jax.random.normal(k2, (T_, batch, 1))
    ys = jax.random.normal(k3, (T_, batch, 1))
    return model, params, model.cell.initial_state(params, (batch,)), xs, ys


def _orthogonal(n, seed=1):
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(seed), (n, n)))
    return q


def test_tanh_radius_half_decays_geometrically():
    # W = 0.5·Q (Q orthogonal): ‖J_tᵀ‖ ≤ ‖W‖₂ · max tanh' ≤ 0.5, so every lag
    # shrinks the norm by at least 2; small inputs keep tanh' ≈ 1, so the
    # fitted slope of log-norm vs lag lies in [log 0.5 − 0.3, log 0.5].
    model, params, h0, xs, ys = _elman_with_W("tanh", 0.5 * _orthogonal(16), 40)
    n = diagnostics.per_lag_norms(model.cell, model.loss_fn, 20)(
        params, h0, xs, ys
    ).mean
    slope = float(diagnostics.decay_rate(n))
    assert np.log(0.5) - 0.3 <= slope <= np.log(0.5) + 1e-9
    assert np.all(n[1:] / n[:-1] <= 0.5 * (1 + 1e-9))
    assert int(diagnostics.memory_length(n, 0.01)) in range(6, 10)  # 2^-7 < 0.01


def test_identity_radius_one_and_half_grows():
    # identity Elman: u_{t,τ} = (Wᵀ)^τ ∂ℓ_t/∂h_t; with W = 1.5·Q its norm is
    # exactly 1.5^τ ‖∂ℓ_t/∂h_t‖, so the slope is log 1.5 up to how the mean of
    # ‖∂ℓ_t/∂h_t‖ over t ≥ τ changes with τ.
    model, params, h0, xs, ys = _elman_with_W("identity", 1.5 * _orthogonal(8), 30)
    n = diagnostics.per_lag_norms(model.cell, model.loss_fn, 20)(
        params, h0, xs, ys
    ).mean
    slope = float(diagnostics.decay_rate(n))
    assert abs(slope - np.log(1.5)) < 0.15
    assert int(diagnostics.memory_length(n)) == 20  # never falls below 1 %
    # a generic (non-normal) W rescaled to spectral radius 1.5 also grows
    W = jax.random.normal(jax.random.key(3), (8, 8))
    W = 1.5 * W / jnp.max(jnp.abs(jnp.linalg.eigvals(W)))
    model, params, h0, xs, ys = _elman_with_W("identity", W, 30)
    n = diagnostics.per_lag_norms(model.cell, model.loss_fn, 20)(
        params, h0, xs, ys
    ).mean
    assert float(diagnostics.decay_rate(n[5:])) > 0.2


def test_lyapunov_matches_log_spectral_radius_for_normal_W():
    # identity Elman, symmetric (normal) W: J_t = W for all t, and the QR
    # exponents converge to log|eig| at rate O(1/T).
    eigs = jnp.array([1.3, 0.9, -0.6, 0.4, 0.2])
    Q = _orthogonal(5, seed=7)
    W = Q @ jnp.diag(eigs) @ Q.T
    cell = cells.elman("identity")
    p = cell.init(jax.random.key(0), 1, 5)
    p["W"] = W
    xs = jnp.zeros((400, 1))
    J = diagnostics.step_jacobians(cell, p, cell.initial_state(p), xs)
    np.testing.assert_allclose(J[17], W, atol=1e-12)
    lyap = diagnostics.lyapunov_exponents(J)
    want = np.sort(np.log(np.abs(np.asarray(eigs))))[::-1]
    np.testing.assert_allclose(lyap, want, atol=0.02)
    assert abs(float(lyap[0]) - np.log(1.3)) < 0.005
    sv = diagnostics.singular_values(J)
    np.testing.assert_allclose(sv[0], np.sort(np.abs(np.asarray(eigs)))[::-1])


def test_step_jacobians_lstm_state_and_batch():
    cell = cells.lstm()
    p = cell.init(jax.random.key(0), 2, 3)
    xs = jax.random.normal(jax.random.key(1), (4, 2, 2))
    h0 = cell.initial_state(p, (2,))
    J = jax.jit(diagnostics.step_jacobians, static_argnums=0)(cell, p, h0, xs)
    assert J.shape == (4, 2, 6, 6)
    # column block: a perturbation of h_{t-1} (second half of [c; h])
    (c1, h1), _ = cell.step(p, h0, xs[0])
    f = lambda h: jnp.concatenate(cell.step(p, (c1[1], h), xs[1, 1])[0])  # noqa: E731
    np.testing.assert_allclose(J[1, 1][:, 3:], jax.jacfwd(f)(h1[1]), atol=1e-12)
    lyap = diagnostics.lyapunov_exponents(J)
    assert lyap.shape == (2, 6) and np.all(np.diff(lyap, axis=-1) <= 0)


def test_truncation_tie_in():
    model, params, h0, xs, ys = _problem("gru")
    ks = [1, 2, 3, 6]
    ws = jnp.stack([truncation.tbptt(T, k) for k in ks])
    bias = diagnostics.relative_bias(model.cell, model.loss_fn)
    swept = jax.jit(jax.vmap(bias, in_axes=(None, None, None, None, 0)))(
        params, h0, xs, ys, ws
    )
    bias_j = jax.jit(bias)
    one_by_one = [bias_j(params, h0, xs, ys, truncation.tbptt(T, k)) for k in ks]
    np.testing.assert_allclose(swept, one_by_one, rtol=1e-10, atol=1e-15)
    assert float(bias_j(params, h0, xs, ys, truncation.full(T))) == 0.0
    assert np.all(np.asarray(swept[:3]) > 0.01)  # k = T cuts only into h0
    prof = diagnostics.per_lag_norms(model.cell, model.loss_fn, T, per_step=True)(
        params, h0, xs, ys
    )
    n = prof.per_step
    # TBPTT(1) keeps only lag 0; full BPTT changes nothing.
    dropped = jax.jit(diagnostics.dropped_fraction)
    np.testing.assert_allclose(
        dropped(n, truncation.tbptt(T, 1)), n[:, 1:].sum() / n.sum()
    )
    assert float(dropped(n, truncation.full(T))) == 0.0
    frac = [float(dropped(n, w)) for w in ws]
    assert frac[0] > frac[1] > frac[2]


def test_bad_input():
    model, params, h0, xs, ys = _problem("elman")
    with pytest.raises(ValueError, match="max_lag"):
        diagnostics.per_lag_norms(model.cell, model.loss_fn, 0)
    with pytest.raises(ValueError, match="max_lag"):
        diagnostics.per_lag_norms(model.cell, model.loss_fn, 2.5)
    with pytest.raises(ValueError, match="max_lag=7 exceeds"):
        diagnostics.per_lag_norms(model.cell, model.loss_fn, 7)(params, h0, xs, ys)
    with pytest.raises(TypeError, match="output must be callable"):
        diagnostics.per_lag_norms(model.cell, model.loss_fn, 2, output=3)
    with pytest.raises(ValueError, match="feature size"):
        diagnostics.per_lag_norms(model.cell, model.loss_fn, 2)(
            params, h0, xs[..., :1], ys
        )
    fm, fp, fh0, fxs, fys = _problem("flax_lstm")
    with pytest.raises(ValueError, match="output="):
        diagnostics.per_lag_norms(
            fm.cell, fm.loss_fn, 2, output=lambda s: s[0][..., :2]
        )(fp, fh0, fxs, fys)
    with pytest.raises(ValueError, match="fraction"):
        diagnostics.memory_length(jnp.ones(3), fraction=1.5)
    with pytest.raises(ValueError, match="jacobians must have shape"):
        diagnostics.lyapunov_exponents(jnp.ones((3, 2, 4)))
    with pytest.raises(ValueError, match="w must have shape"):
        diagnostics.dropped_fraction(jnp.ones((4, 4)), jnp.ones(3))
    with pytest.raises(ValueError, match="per_step_norms must be"):
        diagnostics.dropped_fraction(jnp.ones(4), jnp.ones(4))
