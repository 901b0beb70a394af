"""Truncation as data: the exact law of ARTBP's cut patterns, and exact
unbiasedness of ARTBP by enumerating every pattern (docs/design.md, "Estimators")."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jbptt
from jbptt import truncation
from jbptt._src import truncation as cut_law
from tests.helpers import flat, seeded_problem

T = 8  # 2^(T-1) = 128 cut patterns

C_KINDS = {
    "constant": 0.3,
    # per-step probabilities, c[0] ignored
    "per_step": jnp.array([0.9, 0.1, 0.5, 0.25, 0.05, 0.6, 0.3, 0.45]),
    # history-dependent: steps since the last cut (Tallec & Ollivier 2017)
    "schedule": truncation.poly_tail(3.0, alpha=4.0),
}


# ------------------------------------------------------------ patterns ---


def test_all_cut_patterns_are_distinct_and_never_cut_h0():
    cuts = cut_law.all_cut_patterns(6)
    assert cuts.shape == (32, 6) and cuts.dtype == jnp.bool_
    assert not bool(jnp.any(cuts[:, 0]))
    assert len({tuple(r) for r in np.asarray(cuts).tolist()}) == 32


def test_steps_since_cut():
    cuts = jnp.array([False, False, False, True, True, False, False])
    assert cut_law.steps_since_cut(cuts).tolist() == [0, 1, 2, 3, 1, 1, 2]


@pytest.mark.parametrize("kind", C_KINDS)
def test_probabilities_sum_to_one(kind):
    _, p = truncation.enumerate_artbp(T, C_KINDS[kind])
    assert abs(float(jnp.sum(p)) - 1.0) < 1e-13
    assert bool(jnp.all(p > 0))


def test_log_prob_by_hand_for_a_schedule():
    # cuts at t=2: d = [_, 1, 2, 1], c_d = 0.1·d
    cuts = jnp.array([False, False, True, False])
    expected = np.log(0.9) + np.log(0.2) + np.log(0.9)
    got = truncation.log_prob(cuts, lambda d: 0.1 * d)
    assert abs(float(got) - expected) < 1e-14
    assert float(truncation.log_prob(jnp.array([True, False]), 0.3)) == -np.inf


@pytest.mark.parametrize("kind", C_KINDS)
def test_sampler_follows_the_law(kind):
    """Sampled patterns have the frequencies the probability helpers give."""
    Ts, N = 5, 20_000
    c = C_KINDS[kind]
    c = c[:Ts] if kind == "per_step" else c
    keys = jax.random.split(jax.random.key(7), N)
    w = jax.vmap(lambda k: truncation.artbp(k, Ts, c))(keys)
    cuts = w == 0
    # A sampled w is the weight vector of the pattern it cut.
    np.testing.assert_allclose(w, cut_law.weights_from_cuts(cuts, c), rtol=1e-14)
    index = np.asarray(cuts[:, 1:]).astype(int) @ (2 ** np.arange(Ts - 1))
    freq = np.bincount(index, minlength=2 ** (Ts - 1)) / N
    _, p = truncation.enumerate_artbp(Ts, c)
    p = np.asarray(p)
    # Binomial frequencies: |f − p| ≤ 5σ for every one of the 16 patterns.
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / N) + 1e-12)


# ------------------------------------------------ exact unbiasedness ---


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize("cell_name", ["elman", "lstm"])
def test_artbp_is_exactly_unbiased(cell_name):
    """Σ_patterns p · ĝ(w) = ∇L to 1e-12, for constant c, per-step c and a
    steps-since-cut schedule (all evaluated in one vmapped jit)."""
    model, params, h0, xs, ys = seeded_problem(cell_name, T)
    vg = jbptt.value_and_grad(model.cell, model.loss_fn)
    grads = jax.jit(jax.vmap(lambda w: flat(vg(params, h0, xs, ys, w)[1])))

    enum = [truncation.enumerate_artbp(T, c) for c in C_KINDS.values()]
    w_all = jnp.concatenate([truncation.full(T)[None]] + [w for w, _ in enum])
    g_all = grads(w_all)  # [1 + 3·2^(T−1), P]
    full, rest = g_all[0], g_all[1:]
    n = 2 ** (T - 1)
    for i, (kind, (_, p)) in enumerate(zip(C_KINDS, enum, strict=True)):
        g = rest[i * n : (i + 1) * n]
        assert _rel(p @ g, full) < 1e-12, kind
        # ...while single patterns are off: the estimator is genuinely random.
        assert _rel(g[-1], full) > 1e-3, kind  # every link cut


@pytest.mark.parametrize("cell_name", ["elman", "lstm"])
def test_tbptt_is_biased_on_the_same_problem(cell_name):
    model, params, h0, xs, ys = seeded_problem(cell_name, T)
    vg = jax.jit(jbptt.value_and_grad(model.cell, model.loss_fn))
    full = flat(vg(params, h0, xs, ys, truncation.full(T))[1])
    for k in (1, 2, 3, T - 1):
        g = flat(vg(params, h0, xs, ys, truncation.tbptt(T, k))[1])
        assert float(jnp.linalg.norm(g - full) / jnp.linalg.norm(full)) > 1e-4


def test_tbptt_offsets_and_jit():
    w = jax.jit(lambda o: truncation.tbptt(7, 3, o))(1)
    assert w.tolist() == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0]


def test_artbp_works_under_jit_and_vmap_and_is_reproducible():
    keys = jax.random.split(jax.random.key(0), 4)
    f = jax.jit(jax.vmap(lambda k: truncation.artbp(k, 12, truncation.poly_tail(3.0))))
    a, b = f(keys), f(keys)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 12) and not bool(jnp.all(a == a[0]))


# -------------------------------------------------------------- errors ---


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: truncation.tbptt(5, 0), "k must be a positive int"),
        (lambda: truncation.tbptt(5, 2.5), "k must be a positive int"),
        (lambda: truncation.tbptt(0, 2), "T must be a positive int"),
        (lambda: truncation.full(-1), "T must be a positive int"),
        (lambda: truncation.artbp(jax.random.key(0), 4, 1.0), r"\[0, 1\)"),
        (lambda: truncation.artbp(jax.random.key(0), 4, -0.1), r"\[0, 1\)"),
        (
            lambda: truncation.artbp(jax.random.key(0), 4, jnp.array([0, 0.2, 1.5, 0])),
            r"\[0, 1\)",
        ),
        (lambda: truncation.artbp(jax.random.key(0), 4, jnp.ones(3) / 2), r"\(4,\)"),
        (lambda: truncation.enumerate_artbp(4, jnp.ones(3) / 2), r"\(4,\)"),
        (lambda: truncation.log_prob(jnp.zeros(4, bool), jnp.ones(3) / 2), "T = 4"),
        (lambda: truncation.log_prob(jnp.zeros(3, bool), 1.2), r"\[0, 1\)"),
        (
            lambda: truncation.log_prob(jnp.zeros(3, bool), lambda d: 2.0 + d),
            "schedule",
        ),
        (lambda: cut_law.all_cut_patterns(25), "T ≤ 20"),
        (
            lambda: truncation.artbp(jax.random.key(0), 6, lambda d: 0.3 * d),
            r"schedule values",
        ),
        (lambda: truncation.poly_tail(5.0, alpha=2.0), "alpha"),
        (lambda: truncation.poly_tail(1.0), "mean_length must be > 1"),
        (lambda: truncation.geometric(1.0), "mean_length"),
    ],
)
def test_bad_inputs_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_cuts_must_be_boolean():
    with pytest.raises(TypeError, match="cuts must be a boolean"):
        truncation.log_prob(jnp.zeros(3), 0.2)


# ------------------------------------------ traced k, degenerate and bad ---


def test_vmap_over_k_equals_the_loop_over_k():
    ks = jnp.arange(1, 8)
    batched = jax.jit(jax.vmap(lambda k: truncation.tbptt(11, k, offset=2)))(ks)
    looped = jnp.stack([truncation.tbptt(11, int(k), offset=2) for k in ks])
    np.testing.assert_array_equal(batched, looped)
    offsets = jnp.arange(-3, 4)
    batched = jax.vmap(lambda o: truncation.tbptt(9, 4, o))(offsets)
    looped = jnp.stack([truncation.tbptt(9, 4, int(o)) for o in offsets])
    np.testing.assert_array_equal(batched, looped)


def test_numpy_integers_are_accepted():
    np.testing.assert_array_equal(
        truncation.tbptt(np.int64(6), np.int32(3), offset=np.int16(1)),
        truncation.tbptt(6, 3, offset=1),
    )


@pytest.mark.parametrize(
    "call, err, match",
    [
        (
            lambda: truncation.tbptt(6, 3, offset=2.5),
            ValueError,
            "offset must be an int, got 2.5",
        ),
        (lambda: truncation.tbptt(6, True), ValueError, "a bool is not a number"),
        (lambda: truncation.tbptt(6, "3"), TypeError, "k must be a positive int"),
        (
            lambda: jax.vmap(lambda k: truncation.tbptt(6, k))(jnp.ones(2)),
            TypeError,
            "k must be an int",
        ),
        (
            lambda: truncation.full(3, dtype=jnp.int32),
            TypeError,
            "dtype must be a floating",
        ),
        (
            lambda: truncation.artbp(jax.random.key(0), 4, jnp.nan),
            ValueError,
            "got NaN",
        ),
        (
            lambda: truncation.artbp(jax.random.key(0), 4, None),
            TypeError,
            "c must be a float",
        ),
        (lambda: truncation.artbp(0, 4, 0.5), TypeError, "key must be a PRNG key"),
        (
            lambda: truncation.geometric(float("inf")),
            ValueError,
            "mean_length must be > 1",
        ),
        (
            lambda: truncation.poly_tail(5.0, alpha=float("nan")),
            ValueError,
            "alpha must be > 2",
        ),
    ],
)
def test_bad_scalars_name_the_argument(call, err, match):
    with pytest.raises(err, match=match):
        call()


@pytest.mark.parametrize("c", [0.3, jnp.array([0.2]), truncation.poly_tail(4.0)])
def test_artbp_with_one_step(c):
    w = truncation.artbp(jax.random.key(0), 1, c)
    assert w.tolist() == [1.0]


def test_artbp_takes_legacy_keys():
    typed = truncation.artbp(jax.random.key(3), 12, 0.4)
    legacy = truncation.artbp(jax.random.PRNGKey(3), 12, 0.4)
    np.testing.assert_array_equal(typed, legacy)
