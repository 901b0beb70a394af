"""The bias/variance engine against exact enumeration and one-by-one evaluation."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import jbptt
from jbptt import estimators as est
from jbptt import sweep, truncation
from jbptt._src.forward_mode import online_samples
from jbptt._src.protocol import estimator_key as _estimator_key
from jbptt._src.sweep import Z95

T = 6  # 2^(T-1) = 32 cut patterns


def _problem(cell, T=T, H=3, B=2, seed=0):
    model = jbptt.readout(cell, output_size=1)
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = model.init(k1, 2, H)
    xs = jax.random.normal(k2, (T, B, 2))
    ys = jnp.cumsum(xs[..., :1], axis=0)  # depends on the whole past
    h0 = model.cell.initial_state(params, (B,))
    return est.Problem(model.cell, model.loss_fn, params, h0, xs, ys)


def _generic_tanh():
    def init(key, i, h):
        k1, k2 = jax.random.split(key)
        return {
            "A": 0.5 * jax.random.normal(k1, (h, h)),
            "B": jax.random.normal(k2, (h, i)),
        }

    def step(p, h, x):
        h = jnp.tanh(h @ p["A"].T + x @ p["B"].T)
        return h, h

    def initial_state(p, b=()):
        return jnp.zeros(tuple(b) + (p["A"].shape[0],))

    return jbptt.cells.from_fn(init, step, initial_state)


CELLS = {
    "elman": lambda: jbptt.cells.elman("tanh"),
    "lstm": jbptt.cells.lstm,
    "generic": _generic_tanh,
}


def _unweighted_cuts(c):
    """Random cuts without ARTBP's reweighting: a biased random estimator."""

    def sample(key, T):
        w = jnp.where(jax.random.uniform(key, (T,)) < c, 0.0, 1.0).at[0].set(1.0)
        return w[None], jnp.ones((1, T))

    return est.Estimator(f"cuts(c={c})", sample, lambda T: 1 / c, False, {"c": c})


def _enumerate(problem, c, reweight):
    """All 2^(T-1) cut patterns: probabilities and estimates (reference path)."""
    grad_fn = jax.jit(jbptt.value_and_grad(problem.cell, problem.loss_fn))
    keep = 1.0 / (1.0 - c) if reweight else 1.0
    probs, gs = [], []
    for cuts in itertools.product([0, 1], repeat=T - 1):
        w = jnp.array([1.0] + [0.0 if z else keep for z in cuts])
        probs.append(np.prod([c if z else 1 - c for z in cuts]))
        _, g = grad_fn(problem.params, problem.h0, problem.xs, problem.ys, w)
        gs.append(ravel_pytree(g)[0])
    return np.array(probs), np.stack(gs)


def _exact_grad(problem):
    forward = jbptt.loss(problem.cell, problem.loss_fn)
    g = jax.jit(jax.grad(lambda p: forward(p, problem.h0, problem.xs, problem.ys)[0]))(
        problem.params
    )
    return np.asarray(ravel_pytree(g)[0])


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_gradient_fn_matches_autodiff(cell):
    problem = _problem(CELLS[cell]())
    grad = jax.jit(lambda p, w: est.gradient_fn(problem._replace(params=p))(w, w))
    g = ravel_pytree(grad(problem.params, jnp.ones(T)))[0]
    ref = _exact_grad(problem)
    assert np.linalg.norm(g - ref) <= 1e-10 * np.linalg.norm(ref)


@pytest.mark.parametrize("reweight", [True, False])
def test_bias_and_variance_match_enumeration(reweight):
    c, n = 0.4, 2000
    problem = _problem(jbptt.cells.elman("tanh"))
    probs, gs = _enumerate(problem, c, reweight)
    assert abs(probs.sum() - 1) < 1e-12
    g = _exact_grad(problem)
    mean = probs @ gs
    dev2 = np.sum((gs - mean) ** 2, axis=1)
    var = probs @ dev2  # E‖ĝ − E ĝ‖²
    se_var = np.sqrt((probs @ dev2**2 - var**2) / n)
    bias = np.linalg.norm(mean - g) / np.linalg.norm(g)
    if reweight:
        assert bias < 1e-10  # ARTBP is unbiased, exactly
    else:
        assert bias > 0.05  # cuts without reweighting are biased
    e = est.artbp(c) if reweight else _unweighted_cuts(c)
    res = sweep.sweep(problem, [est.full(), e], jax.random.key(3), n)
    gn2 = np.sum(g**2)
    assert res.rel_bias[0] < 1e-10 and res.rel_variance[0] == 0
    assert res.rel_bias_lo[1] <= bias <= res.rel_bias_hi[1]
    assert abs(res.rel_variance[1] - var / gn2) < 4 * se_var / gn2
    assert np.isclose(res.grad_norm[0], np.sqrt(gn2), rtol=1e-12)
    cos_exact = mean @ g / np.linalg.norm(mean) / np.linalg.norm(g)
    assert abs(res.cos_mean[1] - cos_exact) < 0.01


def test_deterministic_estimator_is_exact():
    problem = _problem(jbptt.cells.gru())
    res = sweep.sweep(problem, [est.tbptt(2)], jax.random.key(0), 8)
    grad_fn = jax.jit(jbptt.value_and_grad(problem.cell, problem.loss_fn))
    gk = ravel_pytree(grad_fn(*problem[2:6], truncation.tbptt(T, 2))[1])[0]
    g = _exact_grad(problem)
    expected = np.linalg.norm(gk - g) / np.linalg.norm(g)
    assert expected > 0.01
    np.testing.assert_allclose(res.rel_bias[0], expected, rtol=1e-10)
    assert res.n_samples[0] == 1 and res.rel_variance[0] == 0
    assert np.isnan(res.rel_bias_lo[0]) and np.isnan(res.rel_bias_hi[0])
    cos = gk @ g / np.linalg.norm(gk) / np.linalg.norm(g)
    np.testing.assert_allclose(res.cos_sample[0], cos, rtol=1e-10)


@pytest.mark.parametrize("cell", ["elman", "generic"])
def test_vmapped_estimates_equal_one_by_one(cell):
    problem = _problem(CELLS[cell]())
    e = est.artbp(truncation.poly_tail(2.0))
    key, n = jax.random.key(7), 5
    batched = sweep.sample_estimates(problem, e, key, n, chunk=2)  # 3 chunks
    keys = jax.random.split(_estimator_key(key, e), n)
    grad_fn = jax.jit(jbptt.value_and_grad(problem.cell, problem.loss_fn))
    for i in range(n):
        w, m = e.sample(keys[i], T)
        assert w.shape == (1, T)
        g = ravel_pytree(grad_fn(*problem[2:6], w[0])[1])[0]
        np.testing.assert_allclose(batched[i], g, rtol=1e-10, atol=1e-12)


def test_sweep_of_many_equals_sweeps_of_one():
    problem = _problem(jbptt.cells.elman("tanh"))
    es = [est.tbptt(3), est.artbp(truncation.poly_tail(3.0))]
    key = jax.random.key(11)
    together = sweep.sweep(problem, es, key, 16)
    for i, e in list(enumerate(es))[1:]:  # the random one; tbptt is tested above
        alone = sweep.sweep(problem, [e], key, 16, chunk=5)
        for field in sweep.SweepResult._fields[1:]:
            np.testing.assert_allclose(
                getattr(together, field)[i],
                getattr(alone, field)[0],
                rtol=1e-9,
                atol=1e-12,
                equal_nan=True,
                err_msg=field,
            )


def test_windows_and_loss_weights():
    """Two windows splitting the loss in halves, full links: sum = exact g."""

    def sample(key, T):
        m = (jnp.arange(T) < T // 2).astype(float)
        return jnp.ones((2, T)), jnp.stack([m, 1 - m])

    halves = est.Estimator("halves", sample, lambda T: float(T), True, {})
    problem = _problem(jbptt.cells.lstm())
    res = sweep.sweep(problem, [halves], jax.random.key(0), 4)
    assert res.windows[0] == 2
    assert res.rel_bias[0] < 1e-10
    rows = res.rows()
    assert rows[0]["estimator"] == "halves" and set(rows[0]) == {
        "estimator",
        *sweep.SweepResult._fields[1:],
    }


def test_sample_stats_interval_for_unbiased_noise():
    g = jnp.array([1.0, 0.0, 0.0, 2.0])
    noise = jax.random.normal(jax.random.key(0), (64, 4))
    s = jax.jit(sweep.sample_stats)(g + noise - noise.mean(0), g)  # sample mean = g
    # U = (‖Σd‖² − Σ‖d‖²)/(N(N−1)) < 0 when the sample mean is exactly g.
    assert float(s["rel_bias_sq"]) < 0 and float(s["rel_bias"]) == 0.0
    assert float(s["rel_bias_lo"]) == 0.0 < float(s["rel_bias_hi"])
    dev2 = np.sum((np.asarray(noise) - np.asarray(noise).mean(0)) ** 2, axis=1)
    np.testing.assert_allclose(float(s["rel_variance"]), dev2.sum() / 63 / 5)
    assert float(s["cos_mean"]) == pytest.approx(1.0)


def test_interval_width_matches_hoeffding_variance():
    """The estimated Var(U) agrees on average with Hoeffding's
    (4(N−2)ζ₁ + 2ζ₂)/(N(N−1)) for Gaussian samples with a small bias, where
    ζ₁ = μᵀΣμ must be estimated well: a noisy estimate clipped at 0
    overstates it (it did, about 4×)."""
    D, N, R = 5, 64, 500
    A = 0.5 * jax.random.normal(jax.random.key(9), (D, D))
    mu = jnp.array([0.3, 0.0, 0.0, 0.0, 0.1])
    g = jnp.ones(D)
    S = A @ A.T
    z1 = mu @ S @ mu
    var_U = (4 * (N - 2) * z1 + 2 * (jnp.trace(S @ S) + 2 * z1)) / (N * (N - 1))

    def half_width_sq(k):
        s = sweep.sample_stats(jax.random.normal(k, (N, D)) @ A.T + g + mu, g)
        U = s["rel_bias_sq"] * D  # ‖g‖² = D
        return ((s["rel_bias_hi"] ** 2 * D - U) / Z95) ** 2

    est = jax.jit(jax.vmap(half_width_sq))(jax.random.split(jax.random.key(0), R))
    assert 0.7 < float(jnp.mean(est) / var_U) < 1.5


def test_bad_inputs():
    problem = _problem(jbptt.cells.elman())
    with pytest.raises(TypeError, match="Problem"):
        sweep.sweep(tuple(problem), [est.full()], jax.random.key(0))
    with pytest.raises(ValueError, match="empty"):
        sweep.sweep(problem, [], jax.random.key(0))
    with pytest.raises(TypeError, match="list of jbptt Estimators"):
        sweep.sweep(problem, est.full(), jax.random.key(0))
    with pytest.raises(ValueError, match="unique"):
        sweep.sweep(problem, [est.full(), est.full()], jax.random.key(0))
    with pytest.raises(ValueError, match="n_samples"):
        sweep.sweep(problem, [est.artbp(0.5)], jax.random.key(0), 2)
    with pytest.raises(ValueError, match="chunk"):
        sweep.sweep(problem, [est.full()], jax.random.key(0), 8, chunk=0)
    with pytest.raises(ValueError, match=r"samples must be \[N, D\]"):
        sweep.sample_stats(jnp.ones((4, 3)), jnp.ones(2))
    bad = est.Estimator(
        "bad", lambda k, T: (jnp.ones(T), jnp.ones(T)), lambda T: 1.0, True, {}
    )
    with pytest.raises(ValueError, match=r"shape \[J, 6\]"):
        sweep.sweep(problem, [bad], jax.random.key(0))
    with pytest.raises(ValueError, match="ys"):
        sweep.sweep(
            problem._replace(ys=problem.ys[:3]), [est.full()], jax.random.key(0)
        )


def test_forward_mode_estimators_in_the_sweep():
    from jbptt import forward_mode

    prob = _problem(jbptt.cells.elman())
    fm = [forward_mode.rtrl(), forward_mode.snap1(), forward_mode.uoro()]
    res = sweep.sweep(prob, [est.full(), *fm], jax.random.key(3), 256)
    assert res.names == ("full", "rtrl", "snap1", "uoro")
    np.testing.assert_array_equal(res.windows, [1, 0, 0, 0])
    np.testing.assert_array_equal(res.expected_depth, [T] * 4)
    np.testing.assert_array_equal(res.n_samples, [1, 1, 1, 256])
    assert res.rel_bias[1] < 1e-10  # RTRL is exact
    assert res.rel_bias[2] > 1e-3 and res.rel_variance[2] == 0.0  # SnAp-1 biased
    assert res.rel_bias_lo[3] == 0.0 and res.rel_variance[3] > 0  # UORO unbiased
    # The sweep's UORO draws are forward_mode.online_samples' with the
    # estimator's folded key.
    draws = online_samples(
        fm[2],
        prob.cell,
        prob.loss_fn,
        prob.params,
        prob.h0,
        prob.xs,
        prob.ys,
        _estimator_key(jax.random.key(3), fm[2]),
        256,
    )
    g = ravel_pytree(
        jbptt.value_and_grad(prob.cell, prob.loss_fn)(
            prob.params, prob.h0, prob.xs, prob.ys
        )[1]
    )[0]
    var = jnp.sum(jnp.var(draws, axis=0, ddof=1)) / jnp.sum(g * g)
    np.testing.assert_allclose(res.rel_variance[3], var, rtol=1e-8)


STRATEGIES = {
    "sqrt": jbptt.ReverseScan(checkpoint="sqrt"),
    "budget": jbptt.Budget(max_states=2),
    "autodiff": jbptt.Autodiff(),
}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("extra", ["plain", "lengths", "resets"])
def test_sweep_takes_the_reverse_pass_strategy(strategy, extra):
    """sweep(adjoint=) and sample_estimates(adjoint=): every strategy gives the
    default's estimates (shared forward, one reverse scan per window)."""
    problem = _problem(jbptt.cells.lstm(), T=8)
    if extra == "lengths":
        problem = problem._replace(lengths=jnp.array([8, 5]))
    if extra == "resets":
        problem = problem._replace(resets=jnp.zeros((8, 2), bool).at[4, 1].set(True))
    adjoint = STRATEGIES[strategy]
    key = jax.random.key(3)
    ests = [est.tbptt(3), est.artbp(0.3), est.williams_peng(2, 4)]
    for e in ests:
        a = sweep.sample_estimates(problem, e, key, 4)
        b = sweep.sample_estimates(problem, e, key, 4, adjoint=adjoint)
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)
    ref = sweep.sweep(problem, ests, key, 4)
    res = sweep.sweep(problem, ests, key, 4, adjoint=adjoint)
    np.testing.assert_allclose(res.rel_bias, ref.rel_bias, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res.rel_variance, ref.rel_variance, rtol=1e-9)


def test_sweep_refuses_a_bad_adjoint():
    problem = _problem(jbptt.cells.elman())
    with pytest.raises(TypeError, match="adjoint must be a reverse-pass strategy"):
        sweep.sweep(problem, [est.tbptt(2)], jax.random.key(0), 4, adjoint="sqrt")
