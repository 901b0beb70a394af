"""Estimators as windows of (link weights, loss weights): Williams–Peng
against a loop reference, TBPTT limits, ARTBP's Monte-Carlo rate, costs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jbptt
from jbptt import cells, estimators, truncation
from tests.helpers import flat, seeded_problem


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


# ------------------------------------------------------- Williams–Peng ---


def _williams_peng_loop(cell, loss_fn, params, h0, xs, ys, k1, k2):
    """Slow reference: at each update time e (every k1 steps, and at the end),
    run the forward to e − k2 without gradient, then differentiate the losses
    of the last k1 steps through the k2 steps e − k2 < s ≤ e by plain
    autodiff of a Python loop of ``cell.step``."""
    T = xs.shape[0]
    total = jax.tree_util.tree_map(jnp.zeros_like, params)
    e_prev = -1
    for e in [min(j + k1, T) - 1 for j in range(0, T, k1)]:
        start = max(e - k2 + 1, 0)

        def window_loss(p, e=e, e_prev=e_prev, start=start):
            h = h0
            for t in range(start):  # no gradient before the window
                h, _ = cell.step(jax.lax.stop_gradient(p), h, xs[t])
            h = jax.lax.stop_gradient(h)
            loss = 0.0
            for t in range(start, e + 1):
                h, out = cell.step(p, h, xs[t])
                if t > e_prev:  # the losses of the last k1 steps
                    loss = loss + loss_fn(p, out, ys[t])
            return loss

        g = jax.grad(window_loss)(params)
        total = jax.tree_util.tree_map(jnp.add, total, g)
        e_prev = e
    return total


@pytest.mark.parametrize(
    "cell_name, k1, k2, T",
    [("elman", 1, 3, 7), ("elman", 3, 5, 10), ("gru", 2, 3, 8), ("lstm", 4, 4, 9)],
)
def test_williams_peng_matches_loop_reference(cell_name, k1, k2, T):
    model, params, h0, xs, ys = seeded_problem(cell_name, T)
    est = estimators.williams_peng(k1, k2)
    got = jax.jit(
        lambda p: estimators.estimate(model.cell, model.loss_fn, est, p, h0, xs, ys)
    )(params)
    ref = jax.jit(
        lambda p: _williams_peng_loop(model.cell, model.loss_fn, p, h0, xs, ys, k1, k2)
    )(params)
    assert _rel(flat(got), flat(ref)) < 1e-10


def test_williams_peng_windows_count_each_loss_once():
    for k1, k2, T in [(1, 1, 5), (2, 3, 7), (3, 7, 20), (5, 5, 5)]:
        w, m = estimators.williams_peng(k1, k2).sample(jax.random.key(0), T)
        assert w.shape == m.shape == (-(-T // k1), T)
        np.testing.assert_array_equal(m.sum(axis=0), np.ones(T))


def _estimates(model, params, h0, xs, ys, ests):
    """Flat gradient estimates of several deterministic estimators, one jit."""

    @jax.jit
    def run(p):
        return [
            flat(estimators.estimate(model.cell, model.loss_fn, e, p, h0, xs, ys))
            for e in ests
        ]

    return run(params)


def test_williams_peng_k_k_is_tbptt_k():
    # when k divides T (otherwise the last, short window still goes k deep)
    T, k = 12, 3
    model, params, h0, xs, ys = seeded_problem("lstm", T)
    a, b = _estimates(
        model, params, h0, xs, ys, [estimators.williams_peng(k, k), estimators.tbptt(k)]
    )
    assert _rel(a, b) < 1e-12


# ---------------------------------------------------------------- TBPTT ---


@pytest.mark.parametrize("cell_name", ["elman", "lstm"])
def test_tbptt_with_k_at_least_T_is_full_bptt_exactly(cell_name):
    T = 6
    model, params, h0, xs, ys = seeded_problem(cell_name, T)
    ests = [estimators.full(), estimators.tbptt(T), estimators.tbptt(T + 3)]
    full, *tbptts = _estimates(model, params, h0, xs, ys, ests)
    ref = jax.jit(jbptt.value_and_grad(model.cell, model.loss_fn))(params, h0, xs, ys)
    assert _rel(full, flat(ref[1])) < 1e-12
    for g in tbptts:
        np.testing.assert_array_equal(g, full)


def test_tbptt_random_offset_is_uniform():
    T, k, N = 13, 4, 4000
    est = estimators.tbptt(k, random_offset=True)
    assert not est.deterministic
    keys = jax.random.split(jax.random.key(3), N)
    w = jax.vmap(lambda key: est.sample(key, T)[0][0])(keys)  # [N, T]
    first_cut = np.asarray(jnp.argmax(w == 0, axis=1))  # offset o cuts at t = o
    for o in range(k):
        np.testing.assert_array_equal(
            w[first_cut == o],
            np.broadcast_to(truncation.tbptt(T, k, o), w[first_cut == o].shape),
        )
    freq = np.bincount(first_cut, minlength=k) / N
    assert np.all(np.abs(freq - 1 / k) <= 5 * np.sqrt((1 / k) * (1 - 1 / k) / N))


# ------------------------------------------------- ARTBP, Monte Carlo ---


def test_artbp_monte_carlo_error_decays_as_one_over_sqrt_n():
    """E‖ḡ_N − ∇L‖² = V/N exactly for the mean ḡ_N of N i.i.d. ARTBP samples,
    with V = E‖ĝ − ∇L‖² computed exactly by enumerating cut patterns. Over R
    independent replicates the normalised error N‖ḡ_N − ∇L‖²/V must average
    to 1 within 5 standard errors, at every N: the error shrinks as 1/√N
    (a bias would make it stop shrinking)."""
    T, c, R = 8, truncation.poly_tail(2.0), 150
    model, params, h0, xs, ys = seeded_problem("elman", T)
    est = estimators.artbp(c)
    vg = jbptt.value_and_grad(model.cell, model.loss_fn)
    full = flat(vg(params, h0, xs, ys)[1])

    w, p = truncation.enumerate_artbp(T, c)
    g_enum = jax.jit(jax.vmap(lambda w_: flat(vg(params, h0, xs, ys, w_)[1])))(w)
    V = float(p @ jnp.sum((g_enum - full) ** 2, axis=1))
    assert V > 0

    sample = jax.jit(
        jax.vmap(
            lambda key: flat(
                estimators.estimate(
                    model.cell, model.loss_fn, est, params, h0, xs, ys, key
                )
            )
        )
    )
    Ns = (4, 16, 64)
    g = sample(jax.random.split(jax.random.key(11), R * sum(Ns)))
    offset, rms = 0, []
    for N in Ns:
        block = g[offset : offset + R * N].reshape(R, N, -1)
        offset += R * N
        z = N * jnp.sum((block.mean(axis=1) - full) ** 2, axis=1) / V  # [R]
        mean, se = float(z.mean()), float(z.std() / np.sqrt(R))
        assert abs(mean - 1.0) < 5 * se, (N, mean, se)
        rms.append(np.sqrt(mean * V / N))
    # Consequence: 16× more samples, ~4× smaller error.
    assert 2.5 < rms[0] / rms[2] < 6.5


# --------------------------------------------------------------- costs ---


def test_costs():
    T = 5
    assert estimators.full().backward_steps(T) == T
    assert estimators.tbptt(2).backward_steps(T) == T
    assert estimators.artbp(0.2).backward_steps(T) == T
    wp = estimators.williams_peng(2, 3)  # windows end at 1, 3, 4
    assert wp.backward_steps(T) == 2 + 3 + 3
    assert wp.expected_depth(T) == pytest.approx(8 / 3)
    assert estimators.tbptt(8).expected_depth(T) == 5
    assert estimators.artbp_matched(8).expected_depth(1000) == pytest.approx(8)
    assert estimators.artbp_matched(8, T=20).expected_depth(20) == pytest.approx(8)
    assert estimators.artbp_matched(8, "poly_tail").expected_depth(
        100_000
    ) == pytest.approx(8, rel=0.02)


def test_expected_depth_is_one_convention_for_floats_arrays_and_schedules():
    """E[min(L, T)] whatever form c takes: a float, the same value as an
    array, or as a (scalar-valued) schedule; and it is what the sampler
    draws (first segment's length, Monte Carlo)."""
    T, c = 12, 0.2
    closed = (1 - (1 - c) ** T) / c  # Σ_{d<T} (1 − c)^d
    forms = [c, jnp.full(T, c), truncation.geometric(1 / c), lambda d: c]
    for form in forms:
        assert estimators.artbp(form).expected_depth(T) == pytest.approx(closed)
    for form in (c, truncation.poly_tail(3.0)):
        est = estimators.artbp(form)
        w = jax.vmap(lambda k, est=est: est.sample(k, T)[0][0])(
            jax.random.split(jax.random.key(0), 20_000)
        )
        cut = np.asarray(w[:, 1:] == 0)
        first = np.where(cut.any(1), cut.argmax(1) + 1, T)  # min(L, T)
        se = first.std() / np.sqrt(len(first))
        assert abs(first.mean() - est.expected_depth(T)) < 5 * se
    assert estimators.tbptt(4).expected_depth(T) == 4


@pytest.mark.parametrize("schedule", ["geometric", "constant", "poly_tail"])
@pytest.mark.parametrize("T", [6, 16, 64])
def test_artbp_matched_solves_for_the_depth_on_T(schedule, T):
    for k in (2, 4.5, T - 1):
        est = estimators.artbp_matched(k, schedule, T=T)
        assert est.expected_depth(T) == pytest.approx(k, rel=1e-9)
        assert est.expected_depth(T + 50) >= k  # longer sequences: deeper
    with pytest.raises(ValueError, match="depth must be < T"):
        estimators.artbp_matched(T, schedule, T=T)


def test_artbp_validates_c_as_the_sampler_uses_it():
    """c[0] is never used (the link into h0 is not cut), so it is not checked;
    a non-numeric c is a TypeError naming c."""
    c = jnp.array([1.0, 0.2, 0.2, 0.2])
    w, _ = estimators.artbp(c).sample(jax.random.key(0), 4)
    assert float(w[0, 0]) == 1.0
    with pytest.raises(ValueError, match="cut probability"):
        estimators.artbp(jnp.array([0.0, 1.0, 0.2]))
    with pytest.raises(TypeError, match="c must be a float"):
        estimators.artbp("0.2")


def test_schedule_estimators_have_distinct_names():
    """Sweeps key samples by name and require unique names: ARTBP estimators
    built on different schedules must not share one."""
    es = [
        estimators.artbp(truncation.poly_tail(4.0)),
        estimators.artbp(truncation.poly_tail(8.0)),
        estimators.artbp(truncation.poly_tail(8.0, alpha=6.0)),
        estimators.artbp(truncation.geometric(4.0)),
        estimators.artbp(truncation.geometric(8.0)),
    ]
    assert len({e.name for e in es}) == len(es)
    assert es[0].name == "artbp(c=poly_tail(L=4,alpha=4))"


def test_estimator_fields_are_stable():
    assert estimators.Estimator._fields[:5] == (
        "name",
        "sample",
        "expected_depth",
        "deterministic",
        "hparams",
    )
    e = estimators.Estimator("x", None, None, True, {})
    assert e.backward_steps is None


def test_a_list_of_estimators_under_one_jit_and_vmap_over_keys():
    T = 9
    model, params, h0, xs, ys = seeded_problem("elman", T)
    ests = [
        estimators.full(),
        estimators.tbptt(3),
        estimators.tbptt(3, random_offset=True),
        estimators.artbp(0.3),
        estimators.williams_peng(2, 4),
    ]

    @jax.jit
    def run(keys):
        return [
            jax.vmap(
                lambda k, e=e: flat(
                    estimators.estimate(
                        model.cell, model.loss_fn, e, params, h0, xs, ys, k
                    )
                )
            )(keys)
            for e in ests
        ]

    out = run(jax.random.split(jax.random.key(0), 3))
    assert all(g.shape == out[0].shape for g in out)
    assert bool(jnp.all(out[0] == out[0][0]))  # deterministic
    assert not bool(jnp.all(out[3] == out[3][0]))  # random


def test_estimate_accepts_windows_and_flax_cells():
    import flax.linen as nn

    T = 6
    cell = cells.from_flax(nn.GRUCell(features=3))
    model = jbptt.readout(cell, output_size=2)
    params = model.init(jax.random.key(0), 2, 3)
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
    xs = jax.random.normal(jax.random.key(1), (T, 2))
    ys = jax.random.normal(jax.random.key(2), (T, 2))
    h0 = model.cell.initial_state(params, ())
    w = truncation.tbptt(T, 2)

    @jax.jit
    def run(p):
        a = estimators.estimate(model.cell, model.loss_fn, w, p, h0, xs, ys)
        b = estimators.estimate(
            model.cell, model.loss_fn, (w[None], jnp.ones((1, T))), p, h0, xs, ys
        )
        c = jbptt.value_and_grad(model.cell, model.loss_fn)(p, h0, xs, ys, w)[1]
        return flat(a), flat(b), flat(c)

    a, b, c = run(params)
    assert _rel(a, c) < 1e-12
    assert _rel(b, c) < 1e-12


# -------------------------------------------------------------- errors ---


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: estimators.tbptt(0), "k must be a positive int"),
        (lambda: estimators.williams_peng(0, 3), "k1 must be a positive int"),
        (lambda: estimators.williams_peng(2, -1), "k2 must be a positive int"),
        (lambda: estimators.williams_peng(2.0, 3), "k1 must be a positive int"),
        (lambda: estimators.williams_peng(4, 3), "k1=4 > k2=3"),
        (lambda: estimators.artbp(1.0), r"\[0, 1\)"),
        (lambda: estimators.artbp(-0.5), r"\[0, 1\)"),
        (lambda: estimators.artbp_matched(0.5), "depth must be a number > 1"),
        (lambda: estimators.artbp_matched(4, "cubic"), "Unknown schedule"),
        (lambda: estimators.artbp_matched(4, T=0), "T must be"),
        (lambda: estimators.artbp(jnp.full(5, 0.1)).expected_depth(6), "shape"),
        (
            lambda: estimators.williams_peng(2, 3).sample(jax.random.key(0), 0),
            "T must be a positive int",
        ),
    ],
)
def test_bad_inputs_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_estimate_bad_inputs():
    T = 5
    model, params, h0, xs, ys = seeded_problem("elman", T)

    def est(e, key=None):
        return estimators.estimate(
            model.cell, model.loss_fn, e, params, h0, xs, ys, key
        )

    with pytest.raises(ValueError, match="pass a PRNG key"):
        est(estimators.artbp(0.2))
    with pytest.raises(ValueError, match="T = 5"):
        est((jnp.ones((2, T + 1)), jnp.ones((2, T + 1))))
    with pytest.raises(ValueError, match="T = 5"):
        est(jnp.ones(T - 1))
    with pytest.raises(TypeError, match="estimator must be"):
        est("tbptt")
    with pytest.raises(TypeError, match="random_offset must be a bool"):
        estimators.tbptt(3, random_offset=1)
