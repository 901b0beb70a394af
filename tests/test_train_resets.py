"""Online training on a stream of concatenated episodes (``train(...,
resets=)``): every segment's gradient equals ``jax.grad`` of a plain
``lax.scan`` forward over that segment with the same resets (state back to
the reset state, no gradient across), and the carried state is the
reset-aware one."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import accumulate as _accumulate
from jax.flatten_util import ravel_pytree

import jbptt
from jbptt import cells, estimators, forward_mode
from jbptt._src import checks as loop_checks
from jbptt._src.forward_mode_train import train as online_train

tree_map = jax.tree_util.tree_map
T, B = 23, 2


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _record(n_max: int):
    """An optax transformation that applies no update and records each
    gradient it sees (flattened) in row ``i`` of its state."""

    def init(params):
        flat = ravel_pytree(params)[0]
        return (jnp.zeros((), int), jnp.zeros((n_max, flat.size), flat.dtype))

    def update(grads, state, params=None):
        i, rows = state
        rows = rows.at[i].set(ravel_pytree(grads)[0])
        return tree_map(jnp.zeros_like, grads), (i + 1, rows)

    return optax.GradientTransformation(init, update)


def _select(r, on, off):
    return tree_map(
        lambda a, b: jnp.where(r.reshape(r.shape + (1,) * (a.ndim - r.ndim)), a, b),
        on,
        off,
    )


def _segment_reference(cell, loss_fn, params, h, xs, ys, w, r, h_reset):
    """Plain lax.scan forward of one segment: at a reset the state entering
    the step is ``h_reset``; link weights scale the backward through
    ``h + (w − 1)(h − sg(h))`` (the forward is unchanged)."""

    def body(h, inp):
        x, y, w_t, r_t = inp
        h = _select(r_t, h_reset, h)
        h = tree_map(lambda a: a + (w_t - 1) * (a - jax.lax.stop_gradient(a)), h)
        h, out = cell.step(params, h, x)
        return h, loss_fn(params, out, y)

    h_T, losses = jax.lax.scan(body, jax.lax.stop_gradient(h), (xs, ys, w, r))
    return jnp.sum(losses), h_T


def _stream(seed=0, I=3):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    xs = jax.random.normal(k1, (T, B, I))
    ys = jax.random.normal(k2, (T, B, 2))
    resets = jax.random.bernoulli(k3, 0.15, (T, B))
    # one reset at a segment start (t = 5 for TBPTT(5)) and one mid-segment
    resets = resets.at[5, 0].set(True).at[7, 1].set(True).at[0].set(False)
    return xs, ys, resets


def _check_segments(model, params, xs, ys, resets, hist, h0, w_of_segment):
    """Per-segment gradients in hist (recorded by _record) against the
    reference from the carried state; returns the chained final state."""
    _, rows = hist.opt_state
    h = h0
    assert int(hist.length.sum()) == T
    for i, (s, n) in enumerate(zip(hist.start, hist.length, strict=True)):
        sl = slice(int(s), int(s + n))
        w = w_of_segment(sl)
        grad = jax.grad(_segment_reference, argnums=2, has_aux=True)
        g, h_next = grad(
            model.cell, model.loss_fn, params, h, xs[sl], ys[sl], w, resets[sl], h0
        )
        assert _rel(rows[i], ravel_pytree(g)[0]) <= 1e-10, i
        h = h_next
    return h


@pytest.mark.parametrize("cell_name", ["elman", "lstm"])
@pytest.mark.parametrize("est_name", ["tbptt", "artbp"])
def test_reset_stream_segment_gradients(cell_name, est_name):
    model = jbptt.readout(getattr(cells, cell_name)(), output_size=2)
    params = model.init(jax.random.key(1), 3, 4)
    xs, ys, resets = _stream()
    h0 = tree_map(lambda a: a + 0.1, model.cell.initial_state(params, (B,)))
    est = estimators.tbptt(5) if est_name == "tbptt" else estimators.artbp(0.3)
    key = jax.random.key(7)
    hist = jbptt.train.train(
        model.cell, model.loss_fn, params, xs, ys, _record(T), est,
        key=key, h0=h0, resets=resets,
    )  # fmt: skip
    # The link weights the run used: inside a segment 1 (TBPTT) or
    # ARTBP's compensation 1/(1 − c), drawn along the stream.
    w_all = np.asarray(est.online().cuts(key, 0, T, 1)[0], xs.dtype)
    h_T = _check_segments(
        model, params, xs, ys, resets, hist, h0, lambda sl: jnp.asarray(w_all[sl])
    )
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(hist.h), leaves(h_T), strict=True):
        assert _rel(a, b) <= 1e-12


def test_resets_change_the_run():
    """Resets are not ignored: the gradients and the carried state differ
    from the same stream without them."""
    model = jbptt.readout(cells.elman(), output_size=2)
    params = model.init(jax.random.key(1), 3, 4)
    xs, ys, resets = _stream()
    resets = resets.at[-1].set(True)  # the last state starts from h0

    def run(r):
        return jbptt.train.train(
            model.cell, model.loss_fn, params, xs, ys, _accumulate(),
            estimators.tbptt(6), resets=r,
        )  # fmt: skip

    a, b = run(resets), run(None)
    assert _rel(ravel_pytree(a.opt_state)[0], ravel_pytree(b.opt_state)[0]) > 1e-3
    assert _rel(a.h, b.h) > 1e-3


class SmallBuckets(NamedTuple):
    """ARTBP with buckets of at most 4 steps: long segments are split."""

    inner: object = estimators.artbp(0.1)

    name = property(lambda self: self.inner.name)
    deterministic = property(lambda self: self.inner.deterministic)
    hparams = property(lambda self: self.inner.hparams)

    def samples(self, problem, key, n, *, chunk=64, mesh=None):
        return self.inner.samples(problem, key, n, chunk=chunk, mesh=mesh)

    def cost(self, problem):
        return self.inner.cost(problem)

    def online(self):
        return self.inner.online()._replace(buckets=lambda mb: (2, 4))


def test_split_segments_with_resets_match_unsplit():
    """Long segments split into blocks (forward-only advance, then blocks
    backward) give the same gradients and state with resets inside."""
    model = jbptt.readout(cells.gru(), output_size=2)
    params = model.init(jax.random.key(2), 3, 4)
    xs, ys, resets = _stream(3)
    key = jax.random.key(5)

    def run(est):
        return jbptt.train.train(
            model.cell, model.loss_fn, params, xs, ys, _record(T), est,
            key=key, resets=resets,
        )  # fmt: skip

    whole, split = run(SmallBuckets().inner), run(SmallBuckets())
    assert split.advanced_steps > 0 and whole.advanced_steps == 0
    n = len(whole.length)
    assert _rel(split.opt_state[1][:n], whole.opt_state[1][:n]) <= 1e-12
    assert _rel(split.h, whole.h) <= 1e-12


def test_chunked_stream_with_resets_is_one_call():
    """The stream fed in two calls (the first leaving its last segment
    pending, with its resets) trains as one call."""
    model = jbptt.readout(cells.elman(), output_size=2)
    params = model.init(jax.random.key(1), 3, 4)
    xs, ys, resets = _stream(4)
    est, opt = estimators.tbptt(4), optax.sgd(0.05)
    args = (model.cell, model.loss_fn)
    one = jbptt.train.train(*args, params, xs, ys, opt, est, resets=resets)
    a = jbptt.train.train(
        *args, params, xs[:10], ys[:10], opt, est, resets=resets[:10], flush=False
    )
    assert a.state.pending is not None and len(a.state.pending) == 4
    b = jbptt.train.train(
        *args, None, xs[10:], ys[10:], opt, est, resets=resets[10:], state=a.state
    )
    assert _rel(ravel_pytree(b.params)[0], ravel_pytree(one.params)[0]) <= 1e-12
    assert _rel(b.h, one.h) <= 1e-12


def test_make_step_with_resets_is_train():
    """train.make_step driven by hand over TBPTT(5)'s segments, the last one
    padded, with the resets: the same params and state as train(resets=)."""
    model = jbptt.readout(cells.lstm(), output_size=2)
    params = model.init(jax.random.key(1), 3, 4)
    xs, ys, resets = _stream(2)
    h0 = tree_map(lambda a: a + 0.1, model.cell.initial_state(params, (B,)))
    opt, k = optax.adam(0.05), 5
    one = jbptt.train.train(
        model.cell, model.loss_fn, params, xs, ys, opt, estimators.tbptt(k),
        h0=h0, resets=resets, reset_state=h0,
    )  # fmt: skip
    with pytest.deprecated_call(match="Trainer"):  # deprecated, still working
        step = jbptt.train.make_step(model.cell, model.loss_fn, opt, guard=True)
    pad = (-T) % k  # the caller pads to whole buckets; padded steps are masked

    def padded(a):
        return jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)])

    xs_p, ys_p, r_p = padded(xs), padded(ys), padded(resets)
    w = jnp.asarray(jbptt.truncation.tbptt(T + pad, k), xs.dtype)
    p, s, h = params, opt.init(params), h0
    for start in range(0, T, k):
        n = min(k, T - start)
        p, s, h, loss, _, finite = step(
            p, s, h, xs_p, ys_p, w, start, n, k, resets=r_p, reset_state=h0
        )
        assert bool(jnp.isfinite(loss)) and bool(loop_checks.all_finite(finite))
    assert _rel(ravel_pytree(p)[0], ravel_pytree(one.params)[0]) <= 1e-12
    assert _rel(ravel_pytree(h)[0], ravel_pytree(one.h)[0]) <= 1e-12


def test_make_step_does_not_apply_a_nonfinite_update():
    model = jbptt.readout(cells.elman(), output_size=2)
    params = model.init(jax.random.key(1), 3, 4)
    xs, ys, _ = _stream()
    opt = optax.sgd(float("nan"))
    with pytest.deprecated_call(match="Trainer"):
        step = jbptt.train.make_step(model.cell, model.loss_fn, opt, guard=True)
    h = model.cell.initial_state(params, (B,))
    w = jnp.ones(T, xs.dtype)
    p, _, h_new, _, _, finite = step(params, opt.init(params), h, xs, ys, w, 0, 8, 8)
    # a NaN learning rate: finite gradients, non-finite params, not applied
    assert bool(loop_checks.all_finite(finite["grads"]))
    assert not any(map(bool, jax.tree_util.tree_leaves(finite["params"])))
    assert _rel(ravel_pytree(p)[0], ravel_pytree(params)[0]) == 0.0
    assert bool(jnp.all(h_new == h))


def test_rtrl_online_with_resets_is_exact():
    """RTRL trains online one step at a time; at lr 0 the summed gradient of
    a reset stream equals full BPTT with the same resets."""
    model = jbptt.readout(cells.elman(), output_size=2)
    params = model.init(jax.random.key(1), 3, 3)
    xs, ys, resets = _stream(5)
    h0 = model.cell.initial_state(params, (B,)) + 0.2
    h_reset = h0 - 0.5  # a reset state other than h0
    hist = jbptt.train.train(
        model.cell, model.loss_fn, params, xs, ys, _accumulate(),
        forward_mode.rtrl(), h0=h0, resets=resets, reset_state=h_reset,
    )  # fmt: skip
    (_, h_T), g = jbptt.value_and_grad(model.cell, model.loss_fn)(
        params, h0, xs, ys, resets=resets, reset_state=h_reset
    )
    assert _rel(ravel_pytree(hist.opt_state)[0], ravel_pytree(g)[0]) <= 1e-10
    assert _rel(hist.h, h_T) <= 1e-12


@pytest.mark.parametrize("update_every", [1, 4])
def test_forward_mode_train_with_resets_is_exact(update_every):
    """forward_mode.train hands resets to train.train: at lr 0 the summed
    RTRL gradient of a reset stream equals full BPTT with the same resets,
    updating every step or every 4."""
    model = jbptt.readout(cells.elman(), output_size=2)
    params = model.init(jax.random.key(1), 3, 3)
    xs, ys, resets = _stream(5)
    xs, ys, resets = xs[:20], ys[:20], resets[:20]  # T divisible by 4
    h0 = model.cell.initial_state(params, (B,)) + 0.2
    h_reset = h0 - 0.5
    hist = online_train(
        model.cell, model.loss_fn, params, xs, ys, _accumulate(),
        forward_mode.rtrl(), h0=h0, resets=resets, reset_state=h_reset,
        update_every=update_every,
    )  # fmt: skip
    (_, h_T), g = jbptt.value_and_grad(model.cell, model.loss_fn)(
        params, h0, xs, ys, resets=resets, reset_state=h_reset
    )
    assert _rel(ravel_pytree(hist.opt_state)[0], ravel_pytree(g)[0]) <= 1e-10
    assert _rel(hist.state.h, h_T) <= 1e-12


def test_token_ids_train_directly():
    """Integer token ids [T, B] train a token model as the float ids of
    model.encode do."""
    V = 5
    model = jbptt.readout(cells.lstm(), V, "xent", vocab_size=V)
    params = model.init(jax.random.key(0), 3, 4)
    toks = jax.random.randint(jax.random.key(1), (T, B), 0, V)
    est = estimators.tbptt(6)
    args = (model.cell, model.loss_fn, params)
    a = jbptt.train.train(*args, toks, toks, _accumulate(), est)
    b = jbptt.train.train(*args, model.encode(toks), toks, _accumulate(), est)
    assert _rel(ravel_pytree(a.opt_state)[0], ravel_pytree(b.opt_state)[0]) == 0


def test_bad_resets_and_lengths():
    model = jbptt.readout(cells.elman(), output_size=2)
    params = model.init(jax.random.key(1), 3, 4)
    xs, ys, resets = _stream()
    args = (model.cell, model.loss_fn, params, xs, ys, optax.sgd(0.1))
    est = estimators.tbptt(4)
    with pytest.raises(ValueError, match=r"resets must have shape \(T, \*batch\)"):
        jbptt.train.train(*args, est, resets=resets[:, :1])
    with pytest.raises(TypeError, match="resets must be boolean"):
        jbptt.train.train(*args, est, resets=resets.astype(int))
    with pytest.raises(ValueError, match=r"reset_state \(checked like h0\)"):
        jbptt.train.train(*args, est, resets=resets, reset_state=jnp.zeros((B, 5)))
    with pytest.raises(ValueError, match="lengths is not taken by train"):
        jbptt.train.train(*args, est, lengths=jnp.array([T, 3]))
    with pytest.raises(ValueError, match="resets: estimator es.* cannot train"):
        jbptt.train.train(*args, estimators.es(0.1), key=jax.random.key(0),
                          resets=resets)  # fmt: skip
