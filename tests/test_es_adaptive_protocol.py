"""The ES family and adaptive TBPTT as estimators of the protocol: through
jbptt.sweep.sweep and jbptt.train.train like any other estimator."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jbptt
from jbptt import estimators, sweep
from jbptt._src.adaptive import tbptt_bias_bounds, train_adaptive
from tests.test_zeroth_order import CELL, PARAMS, _loss_fn, _state

T = 12
XS, YS = jnp.zeros((T, 1)), jnp.ones((T,))
PROB = estimators.Problem(CELL, _loss_fn, PARAMS, _state(PARAMS), XS, YS)

ES = [
    estimators.es(0.1, pairs=2),
    estimators.truncated_es(0.1, pairs=2, K=3),
    estimators.pes(0.1, pairs=2, K=3),
    estimators.nres(0.1, pairs=2, K=3),
]


def test_es_family_through_sweep():
    assert all(isinstance(e, estimators.GradientEstimator) for e in ES)
    res = sweep.sweep(PROB, ES, jax.random.key(0), 64)
    assert res.names == tuple(e.name for e in ES)
    # Quadratic loss, linear dynamics: ES/PES/NRES unbiased, truncated ES not.
    se = np.sqrt(np.asarray(res.rel_variance) / 64)
    for i in (0, 2, 3):
        assert res.rel_bias[i] < 5 * se[i] + 1e-12
    assert res.rel_bias[1] > 10 * se[1]
    assert res.expected_depth.tolist() == [T, 3.0, T, T]
    assert res.windows.tolist() == [0, 0, 0, 0]
    c = ES[1].cost(PROB)
    assert c.backward_steps == 0 and c.forward_steps == 5 * T


@pytest.mark.parametrize("est", ES, ids=lambda e: e.name.split("(")[0])
def test_es_family_through_train(est):
    hist = jbptt.train.train(
        CELL, _loss_fn, PARAMS, XS, YS, optax.sgd(1e-3), est, key=jax.random.key(1)
    )
    K = est.hparams["K"] or T
    assert len(hist.loss) == -(-T // K) and hist.length.tolist()[0] == K
    assert sum(hist.length) == T and np.isfinite(hist.loss).all()
    assert float(hist.params["theta"]) != float(PARAMS["theta"])  # it moved
    # The losses are the unperturbed unroll's, as the exact forward gives.
    L, _ = jbptt.loss(CELL, _loss_fn)(PARAMS, _state(PARAMS), XS[:K], YS[:K])
    np.testing.assert_allclose(hist.loss[0] * K, L, rtol=1e-12)


def _elman_problem(T=16, seed=0):
    model = jbptt.readout(jbptt.cells.elman(), output_size=1)
    p = model.init(jax.random.key(seed), 1, 4)
    k1, k2 = jax.random.split(jax.random.key(seed + 1))
    xs = jax.random.normal(k1, (T, 1))
    ys = jax.random.normal(k2, (T, 1))
    return model, estimators.Problem(
        model.cell, model.loss_fn, p, model.cell.initial_state(p), xs, ys
    )


def test_adaptive_through_sweep_meets_delta():
    model, prob = _elman_problem()
    est = estimators.adaptive_tbptt(0.2, max_lag=16)
    res = sweep.sweep(prob, [est, estimators.full()], jax.random.key(0), 4)
    k = est.choose(prob)  # the pure choice the sweep made inside jit
    assert 1 <= k <= 16 and res.rel_bias[0] <= 0.2
    direct = est.samples(prob, jax.random.key(0), 1)[0]  # concrete path
    g = estimators.tbptt(k).samples(prob, jax.random.key(0), 1)[0]
    np.testing.assert_allclose(direct, g, rtol=1e-12)
    assert est.cost(prob).depth == estimators.tbptt(k).cost(prob).depth


def test_adaptive_train_rechooses_and_meets_delta_at_every_point():
    model, prob = _elman_problem(T=48, seed=3)
    delta = 0.25
    est = estimators.adaptive_tbptt(delta, max_lag=12, every=2, k0=4)
    hists, ks = train_adaptive(
        model.cell, model.loss_fn, prob.params, prob.xs, prob.ys,
        optax.sgd(0.05), est, key=jax.random.key(0), h0=prob.h0,
    )  # fmt: skip
    assert len(ks) >= 2 and sum(int(np.sum(h.length)) for h in hists) == 48
    # Each round ran TBPTT(k) with the k chosen before it.
    for h, k in zip(hists, ks, strict=True):
        assert int(h.length[0]) == min(k, int(np.sum(h.length)))
    # At each re-estimation point the exact relative bias of TBPTT(k) ≤ δ.
    start, params, h0 = 0, prob.params, prob.h0
    for h, k in zip(hists, ks, strict=True):
        n = int(np.sum(h.length))
        span = min(48 - start, max(12, 2 * k))
        p = estimators.Problem(
            model.cell, model.loss_fn, params, h0,
            prob.xs[start : start + span], prob.ys[start : start + span],
        )  # fmt: skip
        r = sweep.sweep(p, [estimators.tbptt(k)], jax.random.key(0), 4)
        assert r.rel_bias[0] <= delta + 1e-12
        params, h0, start = h.params, h.h, start + n


def test_adaptive_k_is_data_of_the_estimator():
    """rechoose returns the estimator with its k; nothing is written: the
    estimator given to train_adaptive is unchanged, and the online rule
    plans TBPTT segments of the value's k (k0 while None)."""
    model, prob = _elman_problem(T=48, seed=3)
    est = estimators.adaptive_tbptt(0.25, max_lag=12, every=2, k0=4)
    before = tuple(est)
    chosen = est.rechoose(prob)
    assert est.k is None and tuple(est) == before
    assert chosen.k == est.choose(prob) and chosen._replace(k=None) == est
    assert chosen.cost(prob).depth == estimators.tbptt(chosen.k).cost(prob).depth
    key = jax.random.key(0)
    assert est.online().plan(key, 10)[0].tolist() == [4, 4, 2]
    assert est._replace(k=3).online().plan(key, 10)[0].tolist() == [3, 3, 3, 1]
    hists, ks = train_adaptive(
        model.cell, model.loss_fn, prob.params, prob.xs, prob.ys,
        optax.sgd(0.05), est, key=jax.random.key(0), h0=prob.h0,
    )  # fmt: skip
    assert tuple(est) == before and ks[0] == chosen.k
    # One compile per bucket over all rounds: the rounds share their steps.
    buckets = {int(b) for h in hists for b in h.buckets}
    assert sum(h.compiles for h in hists) <= len(buckets)


def test_adaptive_bad_arguments():
    with pytest.raises(ValueError, match="delta"):
        estimators.adaptive_tbptt(1.5)
    with pytest.raises(ValueError, match="every"):
        estimators.adaptive_tbptt(0.1, every=0)


def test_bounds_helper_is_public():
    assert jbptt.adaptive.tbptt_bias_bounds is tbptt_bias_bounds
