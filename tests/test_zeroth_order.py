"""ES family on influence balancing: linear dynamics, quadratic loss, so the
Gaussian smoothing leaves the gradient where it is and unbiasedness can be
tested against the exact gradient with fixed seeds."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jbptt
from jbptt import cells
from jbptt._src.sweep import Problem
from jbptt._src.zeroth_order import es, nres, pes, truncated_es

N_UNITS, N_POS, T = 23, 10, 30
A = 0.5 * (np.eye(N_UNITS) + np.eye(N_UNITS, k=1))
V = np.r_[np.ones(N_POS), -np.ones(N_UNITS - N_POS)]


def _init(key=None, input_size=1, hidden_size=N_UNITS):
    return {"theta": jnp.asarray(0.5, jnp.float64)}


def _state(params, batch_shape=()):
    return jnp.ones(batch_shape + (N_UNITS,), jnp.float64)


def _step(params, s, x):
    s = s @ A.T + params["theta"] * V
    return s, s[..., 0]


def _loss_fn(params, out_t, y_t):
    return 0.5 * (out_t - y_t) ** 2


CELL = cells.from_fn(_init, _step, _state, name="influence_balancing")
PARAMS = _init()
PROBLEM = Problem(
    CELL, _loss_fn, PARAMS, _state(PARAMS), jnp.zeros((T, 1)), jnp.ones((T,))
)


def _exact():
    forward = jbptt.loss(CELL, _loss_fn)
    g = jax.grad(lambda p: forward(p, _state(p), PROBLEM.xs, PROBLEM.ys)[0])(PARAMS)
    return float(g["theta"])


def _draws(est, n, seed=0):
    fn = jax.jit(lambda k: est.samples(PROBLEM, k, n, chunk=512))
    return np.asarray(fn(jax.random.key(seed)))[:, 0]


def _rms_of_means(s, g, N):
    means = s[: len(s) // N * N].reshape(-1, N).mean(axis=1)
    return float(np.sqrt(np.mean((means - g) ** 2)))


@pytest.mark.parametrize(
    "est", [pes(0.1, pairs=1, K=4), es(0.1, pairs=1)], ids=["pes", "es"]
)
def test_unbiased_means_approach_exact_gradient_at_root_n(est):
    g = _exact()
    s = _draws(est, 8192)
    sd = float(s.std())
    # Unbiased: the RMS error of means of N draws is sd/√N for every N.
    for N in (8, 32, 128):
        ratio = _rms_of_means(s, g, N) * np.sqrt(N) / sd
        assert 0.7 <= ratio <= 1.3, (N, ratio)
    assert abs(s.mean() - g) <= 4 * sd / np.sqrt(len(s))


def test_truncated_es_with_small_K_stays_biased():
    g = _exact()
    s = _draws(truncated_es(0.1, pairs=1, K=4), 2048)
    se = float(s.std()) / np.sqrt(len(s))
    assert abs(s.mean() - g) > 20 * se  # far beyond noise
    assert abs(s.mean() - g) / abs(g) > 0.5
    # Its RMS error stops falling like 1/√N: the bias floor.
    assert _rms_of_means(s, g, 512) > 0.5 * abs(s.mean() - g)


def test_smoothing_does_not_move_a_quadratic_loss():
    # (L(θ+σε) − L(θ−σε))/(2σ) = εᵀ∇L exactly: the draws do not depend on σ.
    a = _draws(pes(0.1, pairs=2, K=4), 64)
    b = _draws(pes(2.0, pairs=2, K=4), 64)
    np.testing.assert_allclose(a, b, rtol=1e-9)


def test_nres_over_the_whole_sequence_is_full_unroll_es():
    # Same key, same ε: the per-truncation sums add up to one full-unroll ES.
    np.testing.assert_allclose(
        _draws(nres(0.1, pairs=3, K=7), 16), _draws(es(0.1, pairs=3), 16), rtol=1e-10
    )


@pytest.mark.parametrize("make", [truncated_es, pes, nres])
def test_online_segments_reproduce_the_sweep_samples(make):
    est = make(0.1, pairs=2, K=8)
    key = jax.random.split(jax.random.key(3), 1)[0]
    state = est.init(CELL, PARAMS, PROBLEM.h0, PROBLEM.xs[0])
    h, total = PROBLEM.h0, 0.0
    forward = jbptt.loss(CELL, _loss_fn)
    for j, a in enumerate(range(0, T, 8)):
        b = min(a + 8, T)
        pad = 8 - (b - a)  # the last truncation is padded and masked
        xs = jnp.concatenate([PROBLEM.xs[a:b], jnp.zeros((pad, 1))])
        ys = jnp.concatenate([PROBLEM.ys[a:b], jnp.zeros((pad,))])
        mask = jnp.r_[jnp.ones(b - a), jnp.zeros(pad)]
        L, g, h_new, state = est.segment(
            CELL,
            _loss_fn,
            PARAMS,
            h,
            state,
            xs,
            ys,
            None,
            mask,
            jax.random.fold_in(key, j),
        )
        L_ref, h_ref = forward(PARAMS, h, PROBLEM.xs[a:b], PROBLEM.ys[a:b])
        np.testing.assert_allclose(jnp.sum(L), L_ref, rtol=1e-12)
        np.testing.assert_allclose(h_new, h_ref, rtol=1e-12)
        h, total = h_new, total + g["theta"]
    sweep = est.samples(PROBLEM, jax.random.key(3), 1)[0, 0]
    np.testing.assert_allclose(total, sweep, rtol=1e-10)


def test_costs():
    assert es(0.1, pairs=3).forward_steps(T) == 6 * T
    assert truncated_es(0.1, pairs=3, K=5).forward_steps(T) == 7 * T
    assert pes(0.1, pairs=3, K=5).forward_steps(T) == 6 * T
    assert pes(0.1, pairs=3, K=5).state_bytes(PROBLEM) == 6 * N_UNITS * 8 + 3 * 8
    assert truncated_es(0.1, pairs=3, K=5).state_bytes(PROBLEM) == 0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: es(0.0), "sigma"),
        (lambda: es(0.1, pairs=0), "pairs"),
        (lambda: pes(0.1, K=2.5), "K"),
        (lambda: nres(0.1, horizon=0), "horizon"),
    ],
)
def test_bad_hyperparameters(call, match):
    with pytest.raises(ValueError, match=match):
        call()
