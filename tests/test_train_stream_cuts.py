"""Per-stream cuts in online training (``train.train(stream_cuts=...)``):
each stream of a batch is truncated by the shared cuts and its own, the
segment gradients are exactly the per-stream link-weight estimator, and the
run is chunk-invariant like the shared one."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import accumulate as _accumulate

import jbptt
from jbptt import cells, estimators


def _flat(tree):
    return jnp.concatenate([jnp.ravel(a) for a in jax.tree_util.tree_leaves(tree)])


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _setup(T=40, B=3, cell=None):
    model = jbptt.readout(cell or cells.lstm(), output_size=2)
    params = model.init(jax.random.key(0), 2, 4)
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
    xs = jax.random.normal(jax.random.key(1), (T, B, 2))
    ys = jax.random.normal(jax.random.key(2), (T, B, 2))
    return model, params, xs, ys


SHARED = estimators.artbp_matched(8, "poly_tail")
OWN = estimators.artbp(0.2)


@pytest.mark.parametrize(
    "cell", [cells.lstm(), cells.elman("tanh")], ids=["lstm", "elman"]
)
def test_segment_gradients_sum_to_the_per_stream_estimator(cell):
    """No update in between: Σ_segments g_seg = ∇^{(W)} L with the per-stream
    link weights W [T, B] that link_weights gives (float64, 1e-10)."""
    T, B = 40, 3
    model, params, xs, ys = _setup(T, B, cell)
    key = jax.random.key(5)
    hist = jbptt.train.train(
        model.cell, model.loss_fn, params, xs, ys, _accumulate(), SHARED,
        key=key, stream_cuts=OWN, buckets=jbptt.train.Buckets(min_bucket=4),
    )  # fmt: skip
    W = jbptt.train.link_weights(SHARED, key, T, batch_shape=(B,), stream_cuts=OWN)
    assert W.shape == (T, B)
    h0 = model.cell.initial_state(params, (B,))
    (L, h_T), g = jbptt.value_and_grad(model.cell, model.loss_fn)(params, h0, xs, ys, W)
    assert _rel(_flat(hist.opt_state), _flat(g)) < 1e-10
    assert abs(float(np.sum(hist.loss * hist.length)) - float(L)) < 1e-10 * abs(L)
    assert _rel(_flat(hist.h), _flat(h_T)) < 1e-12
    # the segments are the shared cuts' only
    shared = jbptt.train.link_weights(SHARED, key, T)
    assert len(hist.loss) == int(np.sum(shared[1:] == 0)) + 1


def test_the_weights_are_shared_cuts_times_independent_own_cuts():
    T, B = 600, 4
    key = jax.random.key(0)
    shared = jbptt.train.link_weights(SHARED, key, T)
    W = jbptt.train.link_weights(SHARED, key, T, batch_shape=(B,), stream_cuts=OWN)
    own = W / np.where(shared == 0, 1.0, shared)[:, None]
    # a shared cut cuts every stream; elsewhere each stream's own law
    assert np.all(W[shared == 0] == 0)
    kept = shared != 0
    kept[0] = False  # the link into the initial state: never cut, weight 1
    assert set(np.round(own[kept].ravel(), 12)) <= {0.0, round(1 / 0.8, 12)}
    cut_own = own[kept] == 0
    assert 0.15 < cut_own.mean() < 0.25  # c = 0.2
    # the streams are cut independently of each other
    assert all(
        (cut_own[:, a] != cut_own[:, b]).any() for a in range(B) for b in range(a)
    )
    # unbiased: each link's weight has mean 1 (over keys; 6 standard errors)
    draws = np.stack(
        [
            jbptt.train.link_weights(
                SHARED, jax.random.key(s), 64, batch_shape=(2,), stream_cuts=OWN
            )
            for s in range(300)
        ]
    )
    mean, se = draws[:, 1:].mean(0), draws[:, 1:].std(0) / np.sqrt(len(draws))
    assert np.all(np.abs(mean - 1) < 6 * se + 1e-12)


def test_chunked_calls_equal_one_call_bitwise():
    T, B = 90, 3
    model, params, xs, ys = _setup(T, B)
    opt = optax.adam(1e-2)
    key = jax.random.key(7)
    kw = dict(key=key, stream_cuts=OWN, buckets=jbptt.train.Buckets(min_bucket=4))
    whole = jbptt.train.train(
        model.cell, model.loss_fn, params, xs, ys, opt, SHARED, **kw
    )
    state, losses = None, []
    for a, b in ((0, 25), (25, 61), (61, 90)):
        part = jbptt.train.train(
            model.cell, model.loss_fn, params, xs[a:b], ys[a:b], opt, SHARED,
            state=state, flush=b == T, **kw,
        )  # fmt: skip
        state = part.state
        losses.append(part.loss)
    assert state.stream_cut is not None and state.stream_cut.shape == (B,)
    np.testing.assert_array_equal(np.concatenate(losses), whole.loss)
    for a, b in zip(
        jax.tree_util.tree_leaves(state.params),
        jax.tree_util.tree_leaves(whole.params),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_bad_stream_cuts():
    model, params, xs, ys = _setup(20, 2)
    opt = optax.sgd(0.1)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="stream_cuts needs a batch"):
        jbptt.train.train(
            model.cell, model.loss_fn, params, xs[:, 0], ys[:, 0], opt, SHARED,
            key=key, stream_cuts=OWN,
        )  # fmt: skip
    with pytest.raises(ValueError, match="stream_cuts: estimator rtrl"):
        jbptt.train.train(
            model.cell, model.loss_fn, params, xs, ys, opt, SHARED, key=key,
            stream_cuts=jbptt.forward_mode.rtrl(),
        )  # fmt: skip
    with pytest.raises(ValueError, match="no shared cuts"):
        jbptt.train.train(
            model.cell, model.loss_fn, params, xs, ys, opt, jbptt.forward_mode.rtrl(),
            key=key, stream_cuts=OWN,
        )  # fmt: skip
    first = jbptt.train.train(
        model.cell, model.loss_fn, params, xs[:10], ys[:10], opt, SHARED, key=key,
        flush=False,
    )  # fmt: skip
    assert first.state.pending is not None
    with pytest.raises(ValueError, match="same stream_cuts"):
        jbptt.train.train(
            model.cell, model.loss_fn, params, xs[10:], ys[10:], opt, SHARED,
            state=first.state, stream_cuts=OWN,
        )  # fmt: skip
