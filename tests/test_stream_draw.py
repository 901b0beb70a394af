"""Cuts along a stream: the vectorised draw equals the law read step by step.

``stream.draw`` draws the cuts of memoryless laws (TBPTT, constant and
positional ARTBP) for all steps at once; the reference below walks the steps
one at a time with the rule of the module docstring (``u_t`` the
``t mod 4096``-th uniform of ``fold_in(key, t // 4096)``, a cut when
``u_t < c(t, d)``), so the two must agree bitwise, and a stream drawn in
chunks must equal one draw.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jbptt import truncation
from jbptt._src import stream

LAWS = {
    "never": stream.never(),
    "periodic": stream.periodic(7),
    "periodic_offset": stream.periodic(5, random_offset=True),
    "constant": stream.constant(0.1),
    "constant_one": stream.constant(1.0),
    "positional": stream.positional(np.linspace(0.0, 0.6, 12_000)),
    "poly_tail": stream.schedule(truncation.poly_tail(8.0, 4.0)),
    "sqrt": stream.schedule(lambda d: 0.5 / jnp.sqrt(d)),
}


def reference(law, key, t0, T, d):
    """The law read one step at a time."""
    c_of = law.prob(key)
    dtype = jnp.result_type(float)
    w = np.ones(T)
    for i in range(T):
        t = t0 + i
        if t == 0:
            d = 1
            continue
        c = c_of(t, d) if law.memory else c_of(np.array([t]), np.array([d]))[0]
        c = float(c)
        block = jax.random.uniform(jax.random.fold_in(key, t // 4096), (4096,), dtype)
        u = np.asarray(block)[t % 4096]
        if c >= 1.0 or (c > 0.0 and law.random and u < c):
            w[i], d = 0.0, 1
        else:
            w[i], d = 1.0 / (1.0 - c), d + 1
    return w, d


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(sorted(LAWS)),
    t0=st.sampled_from([0, 1, 9, 4090, 8191]),
    T=st.integers(1, 300),
    d=st.integers(1, 40),
    seed=st.integers(0, 3),
)
def test_draw_equals_the_step_by_step_law(name, t0, T, d, seed):
    key = jax.random.key(seed)
    w, d_new = stream.draw(LAWS[name], key, t0, T, d)
    w_ref, d_ref = reference(LAWS[name], key, t0, T, d)
    np.testing.assert_array_equal(w, w_ref)
    assert d_new == d_ref


@pytest.mark.parametrize("name", sorted(LAWS))
def test_chunked_draws_are_one_draw(name):
    law, key = LAWS[name], jax.random.key(5)
    whole, d_whole = stream.draw(law, key, 0, 9000, 1)
    parts, d = [], 1
    for a, b in ((0, 1), (1, 4100), (4100, 4101), (4101, 9000)):
        w, d = stream.draw(law, key, a, b - a, d)
        parts.append(w)
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert d == d_whole


def test_positional_refuses_steps_past_its_table():
    law = stream.positional([0.0, 0.5, 0.5])
    with pytest.raises(ValueError, match="reached step 3"):
        stream.draw(law, jax.random.key(0), 0, 5, 1)


@settings(max_examples=20, deadline=None)
@given(
    name=st.sampled_from(sorted(LAWS)),
    t0=st.sampled_from([0, 1, 9, 4090]),
    T=st.integers(0, 200),
    ds=st.lists(st.integers(1, 60), min_size=1, max_size=16),
    seed=st.integers(0, 3),
)
def test_draw_streams_equals_one_draw_per_stream(name, t0, T, ds, seed):
    law = LAWS[name]
    if name == "positional" and t0 + T > 12_000:
        return
    keys = [jax.random.fold_in(jax.random.key(seed), j) for j in range(len(ds))]
    w, d_new = stream.draw_streams(law, keys, t0, T, ds)
    assert w.shape == (T, len(ds)) and d_new.shape == (len(ds),)
    for j, (k, dj) in enumerate(zip(keys, ds, strict=True)):
        w_j, d_j = stream.draw(law, k, t0, T, dj)
        np.testing.assert_array_equal(w[:, j], w_j)
        assert d_new[j] == d_j


def test_draw_streams_walks_renewal_laws_together_and_checks_d():
    assert LAWS["poly_tail"].renewal is not None and LAWS["constant"].renewal is None
    n = stream._TOGETHER + 1  # enough streams to walk them together
    keys = [jax.random.key(j) for j in range(n)]
    d0 = [1 + 300 * (j % 2) for j in range(n)]
    # long segments: d grows past the first table of 256 entries
    rare = stream.schedule(lambda d: jnp.full(d.shape, 0.002))
    for law in (rare, LAWS["poly_tail"]):
        for t0 in (0, 4000):
            w, d = stream.draw_streams(law, keys, t0, 1500, d0)
            for j in range(n):
                ref = stream.draw(law, keys[j], t0, 1500, d0[j])
                np.testing.assert_array_equal(w[:, j], ref[0])
                assert d[j] == ref[1]
    assert d.max() < 1500 and (w == 0).any()
    w, d = stream.draw_streams(rare, keys, 4000, 1500, d0)
    assert d.max() > 256 + 1500 / 2  # no cut in some stream: tables grew
    with pytest.raises(ValueError, match="d: one count per stream"):
        stream.draw_streams(LAWS["poly_tail"], keys, 5, 10, [1, 2])
