"""Problems with ``lengths`` and ``resets`` in estimators and sweeps: full
BPTT's sample is ``jax.grad`` of the plain masked/reset forward, ARTBP is
unbiased on a reset problem (exact expectation over every cut pattern),
RTRL is exact under resets, and bad lengths/resets in a Problem are refused
naming the argument."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import jbptt
from jbptt import cells, estimators, forward_mode, sweep

tree_map = jax.tree_util.tree_map
T, B = 6, 2


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _plain_loss(cell, loss_fn, params, h0, xs, ys, mask, resets):
    """Σ_{t,b} mask ℓ(out_{t,b}, y_{t,b}) by lax.scan: a reset restarts from
    h0, a padded step keeps the state; loss_fn sees one sequence's step."""

    def sel(m, a, b):
        return jnp.where(m.reshape(m.shape + (1,) * (a.ndim - m.ndim)), a, b)

    def body(h, inp):
        x, m, r = inp
        h_in = tree_map(lambda a, b: sel(r, a, b), h0, h)
        h_new, out = cell.step(params, h_in, x)
        h_new = tree_map(lambda a, b: sel(m, a, b), h_new, h)
        return h_new, out

    _, outs = jax.lax.scan(body, h0, (xs, mask, resets))
    per_seq = jax.vmap(jax.vmap(loss_fn, (None, 0, 0)), (None, 0, 0))
    ls = per_seq(params, outs, ys)
    return jnp.sum(jnp.where(mask, ls, 0.0))


def _problem(cell_name="lstm", seed=0, lengths=None, resets=None):
    model = jbptt.readout(getattr(cells, cell_name)(), output_size=2)
    params = model.init(jax.random.key(seed), 3, 4)
    k1, k2 = jax.random.split(jax.random.key(seed + 1))
    xs = jax.random.normal(k1, (T, B, 3))
    ys = jax.random.normal(k2, (T, B, 2))
    h0 = tree_map(lambda a: a + 0.2, model.cell.initial_state(params, (B,)))
    prob = estimators.Problem(
        model.cell, model.loss_fn, params, h0, xs, ys, lengths=lengths, resets=resets
    )
    return model, prob


RESETS = jnp.zeros((T, B), bool).at[2, 0].set(True).at[4, 1].set(True)
LENGTHS = jnp.array([T, 4])


@pytest.mark.parametrize("cell_name", ["elman", "lstm"])
def test_full_sample_on_masked_reset_problem(cell_name):
    model, prob = _problem(cell_name, lengths=LENGTHS, resets=RESETS)
    g = estimators.full().samples(prob, jax.random.key(0), 1)[0]
    mask = jnp.arange(T)[:, None] < LENGTHS[None]
    ref = jax.grad(_plain_loss, argnums=2)(
        prob.cell, prob.loss_fn, prob.params, prob.h0, prob.xs, prob.ys, mask, RESETS
    )
    assert _rel(g, ravel_pytree(ref)[0]) <= 1e-10
    # The sweep's exact gradient is the same one (make_sweep's run with them).
    res = sweep.sweep(prob, [estimators.full(), estimators.tbptt(2)], jax.random.key(1))
    assert float(res.rel_bias[0]) <= 1e-10 and float(res.rel_bias[1]) > 1e-3


def test_artbp_is_unbiased_on_a_reset_problem():
    """E[ĝ] over every cut pattern (probabilities in float64) equals the
    exact gradient of the reset problem; samples are the gradients at the
    drawn link weights."""
    c = 0.3
    _, prob = _problem("gru", seed=3, resets=RESETS)
    grad = estimators.gradient_fn(prob)
    ones = jnp.ones(T)
    exact = ravel_pytree(grad(ones, ones))[0]
    mean = jnp.zeros_like(exact)
    for cuts in itertools.product([0, 1], repeat=T - 1):
        cuts = np.array(cuts)
        p = np.prod(np.where(cuts == 1, c, 1 - c))
        w = np.concatenate([[1.0], np.where(cuts == 1, 0.0, 1 / (1 - c))])
        mean = mean + p * ravel_pytree(grad(jnp.asarray(w), ones))[0]
    assert _rel(mean, exact) <= 1e-10
    # ... and TBPTT(2) is biased on it.
    w_tbptt = jnp.asarray(jbptt.truncation.tbptt(T, 2))
    assert _rel(ravel_pytree(grad(w_tbptt, ones))[0], exact) > 1e-3
    est = estimators.artbp(c)
    key = jax.random.key(4)
    rows = est.samples(prob, key, 3)
    for i, k in enumerate(jax.random.split(key, 3)):
        w, _ = est.sample(k, T)
        assert _rel(rows[i], ravel_pytree(grad(w[0], ones))[0]) <= 1e-12


def test_rtrl_sample_is_exact_under_resets():
    _, prob = _problem("elman", seed=5, resets=RESETS)
    g = forward_mode.rtrl().samples(prob, jax.random.key(0), 1)[0]
    exact = estimators.full().samples(prob, jax.random.key(0), 1)[0]
    assert _rel(g, exact) <= 1e-10
    # Without the resets the gradient is another one: they are honoured.
    no_resets = prob._replace(resets=None)
    plain = forward_mode.rtrl().samples(no_resets, jax.random.key(0), 1)[0]
    assert _rel(plain, exact) > 1e-3


def test_estimators_that_cannot_take_them_refuse():
    _, prob = _problem("elman", lengths=LENGTHS)
    with pytest.raises(ValueError, match="do not take Problem.lengths"):
        forward_mode.uoro().samples(prob, jax.random.key(0), 2)
    with pytest.raises(ValueError, match="zeroth-order estimators do not take"):
        estimators.es(0.1).samples(prob, jax.random.key(0), 2)


@pytest.mark.parametrize(
    "field, value, error, match",
    [
        ("resets", RESETS[:, :1], ValueError, r"Problem: resets must have shape"),
        ("resets", RESETS.astype(int), TypeError, "Problem: resets must be boolean"),
        ("lengths", jnp.array([T + 1, 2]), ValueError, r"Problem: lengths must lie"),
        ("lengths", jnp.array([3.0, 2.0]), TypeError, "Problem: lengths must be int"),
        ("lengths", jnp.array([3, 2, 1]), ValueError, "Problem: lengths must have"),
    ],
)
def test_bad_lengths_and_resets_in_a_problem(field, value, error, match):
    _, prob = _problem("elman")
    bad = prob._replace(**{field: value})
    with pytest.raises(error, match=match):
        sweep.sweep(bad, [estimators.full()], jax.random.key(0))
    with pytest.raises(error, match=match):
        estimators.full().samples(bad, jax.random.key(0), 1)


def test_snap1_exact_with_diagonal_recurrence_under_resets():
    """SnAp-1 is exact when ∂h_t/∂h_{t-1} is diagonal (a diagonal W): with
    resets it then equals full BPTT with them, which needs its sparse
    influence zeroed at every reset."""
    _, prob = _problem("elman", seed=6, resets=RESETS)
    cell_p = dict(prob.params["cell"])
    cell_p["W"] = jnp.diag(jnp.diag(cell_p["W"]) + 0.5)
    prob = prob._replace(params={**prob.params, "cell": cell_p})
    g = forward_mode.snap1().samples(prob, jax.random.key(0), 1)[0]
    exact = estimators.full().samples(prob, jax.random.key(0), 1)[0]
    assert _rel(g, exact) <= 1e-10
    no_resets = prob._replace(resets=None)
    plain = forward_mode.snap1().samples(no_resets, jax.random.key(0), 1)[0]
    assert _rel(plain, exact) > 1e-3
