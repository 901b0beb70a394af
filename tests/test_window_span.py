"""A window's reverse scan over its span only (``gradient_fn(span=L)``).

Williams–Peng's windows carry losses within ``k2`` steps after a cut, so
``Estimator.samples`` runs each window's loss vjp and reverse scan over
those ``k2`` steps instead of all T. The sliced gradient must equal the
full-length one (float64) for every window, cell path, padding and reset,
and the samples must equal the autodiff reference of ``estimate``.
"""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from jbptt import cells, estimators
from jbptt._src import protocol
from tests.helpers import fn_cell, problem, rel_err

CELLS = {
    "elman": lambda: cells.elman("tanh"),
    "lstm": cells.lstm,
    "gru": cells.gru,
    "generic": fn_cell,  # the per-step jax.vjp path
}


def _windows(k1, k2, T):
    w, m = estimators.williams_peng(k1, k2).sample(jax.random.key(0), T)
    return np.asarray(w), np.asarray(m)


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("k1, k2", [(1, 3), (3, 5), (4, 4), (2, 11)])
def test_span_equals_the_whole_reverse_scan(name, k1, k2):
    T = 11
    model, params, h0, xs, ys = problem(CELLS[name](), T=T, batch=(2,))
    prob = estimators.Problem(model.cell, model.loss_fn, params, h0, xs, ys)
    full = jax.jit(jax.vmap(estimators.gradient_fn(prob)))
    sliced = jax.jit(jax.vmap(estimators.gradient_fn(prob, span=min(k2, T))))
    w, m = _windows(k1, k2, T)
    a, b = full(w, m), sliced(w, m)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        for j in range(w.shape[0]):  # window by window
            assert rel_err(y[j], x[j]) <= 1e-12 or float(jnp.abs(x[j]).max()) == 0


@pytest.mark.parametrize("kind", ["lengths", "resets"])
def test_span_with_padding_and_resets(kind):
    T, B = 12, 3
    model, params, h0, xs, ys = problem(cells.lstm(), T=T, batch=(B,))
    lengths = resets = None
    if kind == "lengths":
        lengths = jnp.array([12, 7, 2])
    else:
        resets = jnp.zeros((T, B), bool).at[5, 1].set(True).at[9, 0].set(True)
    prob = estimators.Problem(
        model.cell, model.loss_fn, params, h0, xs, ys, lengths, resets
    )
    w, m = _windows(3, 4, T)
    full = jax.vmap(estimators.gradient_fn(prob))(w, m)
    sliced = jax.vmap(estimators.gradient_fn(prob, span=4))(w, m)
    assert rel_err(jbptt_flat(sliced), jbptt_flat(full)) <= 1e-12


def jbptt_flat(tree):  # all leaves as one vector
    return jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(tree)])


def test_williams_peng_samples_use_the_span_and_match_autodiff():
    T = 30
    model, params, h0, xs, ys = problem(cells.gru(), T=T, batch=(2,))
    prob = estimators.Problem(model.cell, model.loss_fn, params, h0, xs, ys)
    est = estimators.williams_peng(2, 5)
    assert est.span(T) == 5 and est.span(3) == 3
    got = est.samples(prob, jax.random.key(0), 1)[0]
    ref = estimators.estimate(model.cell, model.loss_fn, est, params, h0, xs, ys)
    assert rel_err(got, jbptt_flat(ref)) <= 1e-10
    # one forward scan of T steps; every reverse scan runs the span's 5 steps
    key = jax.random.key(0)
    jaxpr = jax.make_jaxpr(lambda p: est.samples(prob._replace(params=p), key, 1))
    lengths = _scan_lengths(jaxpr(params).jaxpr)
    assert lengths.count(T) == 1 and 5 in lengths  # (and map_rows: 1 chunk)


def _scan_lengths(jaxpr) -> list[int]:
    """The ``length`` of every ``scan`` in a jaxpr, nested ones included."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            out.append(int(eqn.params["length"]))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            out += _scan_lengths(sub)
    return out


def test_span_is_checked():
    model, params, h0, xs, ys = problem(cells.elman(), T=6, batch=(2,))
    prob = estimators.Problem(model.cell, model.loss_fn, params, h0, xs, ys)
    with pytest.raises(ValueError, match="span must be ≤ T = 6"):
        estimators.gradient_fn(prob, span=7)
    with pytest.raises(ValueError, match="span"):
        estimators.gradient_fn(prob, span=0)
    with pytest.raises(ValueError, match="one window"):
        estimators.gradient_fn(prob, span=3)(jnp.ones((6, 2)), jnp.ones(6))
    with protocol.shared_forward():  # a cached forward checks span too
        estimators.gradient_fn(prob)
        with pytest.raises(ValueError, match="span must be ≤ T = 6"):
            estimators.gradient_fn(prob, span=7)
