"""Adaptive truncation: the chosen k meets its relative-bias tolerance exactly."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import jbptt
from jbptt import diagnostics, truncation
from jbptt._src.adaptive import (
    bias_bound,
    choose_k,
    fit_decay,
    param_lag_norms,
    rechooser,
    tail_mass,
)
from tests.helpers import seeded_problem


def test_fit_decay_recovers_a_geometric_rate():
    m = 3.0 * 0.7 ** np.arange(12)
    m[:3] = [9.0, 1.0, 5.0]  # an irregular head before tau0
    assert abs(fit_decay(m, 3).beta - 0.7) < 1e-12
    assert abs(fit_decay(m, 3, conservative=False).beta - 0.7) < 1e-12


def test_window_bound_is_the_design_formula_and_choose_k_is_smallest():
    m = 0.6 ** np.arange(10)
    d = fit_decay(m, 2)
    total = tail_mass(m, d, 0)
    for k in (2, 5, 9):
        want = m[2] * 0.6 ** (k - 2) / ((1 - 0.6) * total)
        assert abs(bias_bound(m, d, k, mode="window") - want) < 1e-12
    k = choose_k(m, 0.05, 2, mode="window")
    assert bias_bound(m, d, k, mode="window") <= 0.05
    assert bias_bound(m, d, k - 1, mode="window") > 0.05
    kc = choose_k(m, 0.05, 2)  # chunked TBPTT needs longer chunks
    assert kc > k and bias_bound(m, d, kc) <= 0.05 < bias_bound(m, d, kc - 1)


def test_param_lag_norms_sum_to_the_exact_gradient():
    model, params, h0, xs, ys = seeded_problem("elman", 10)
    lags = param_lag_norms(model.cell, model.loss_fn, 10)(params, h0, xs, ys)
    _, g = jbptt.value_and_grad(model.cell, model.loss_fn)(params, h0, xs, ys)
    g = ravel_pytree(g)[0]
    assert np.max(np.abs(lags.g_near - g)) <= 1e-10 * np.max(np.abs(g))
    assert lags.norms.shape == (10, 10)
    assert np.all(np.asarray(lags.norms)[10 - np.arange(1, 10), np.arange(1, 10)] == 0)


@pytest.mark.parametrize("max_lag", [24, 12])
def test_chosen_k_meets_delta_along_training(max_lag):
    """At every re-estimation point of a short adaptive-TBPTT training run,
    the exact relative bias of TBPTT(k_chosen) is at most δ."""
    T, delta, every = 24, 0.1, 15
    model, params, h0, xs, ys = seeded_problem("elman", T, B=3, H=5)
    rule = rechooser(
        model.cell,
        model.loss_fn,
        delta=delta,
        max_lag=max_lag,
        every=every,
        tau0=max_lag - 6 if max_lag < T else None,
    )
    vg = jax.jit(jbptt.value_and_grad(model.cell, model.loss_fn))
    bias = jax.jit(diagnostics.relative_bias(model.cell, model.loss_fn))
    opt = optax.sgd(0.01)
    state = opt.init(params)
    k, ks, checked = None, [], 0
    for step in range(60):
        new_k = rule.update(step, k, params, h0, xs, ys)
        if step % every == 0:
            achieved = float(bias(params, h0, xs, ys, truncation.tbptt(T, new_k)))
            assert achieved <= delta, (step, new_k, achieved)
            checked += 1
        k = new_k
        ks.append(k)
        _, g = vg(params, h0, xs, ys, truncation.tbptt(T, k))
        updates, state = opt.update(g, state)
        params = optax.apply_updates(params, updates)
    assert checked == 4
    assert min(ks) < T  # it does truncate somewhere along the run


def test_bad_arguments():
    with pytest.raises(ValueError, match="delta"):
        choose_k(np.ones(4), 1.5, 1)
    with pytest.raises(ValueError, match="tau0"):
        fit_decay(np.ones(4), 3)
    with pytest.raises(ValueError, match="max_lag"):
        param_lag_norms(None, None, 0)
    with pytest.raises(ValueError, match="every"):
        rechooser(None, None, delta=0.1, max_lag=2, every=0)
