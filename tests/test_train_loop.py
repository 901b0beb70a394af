"""The online loop researchers keep: one TrainState across calls (chunked
streams train bitwise as one call), a compile count bounded by the
estimator's buckets, long segments split without changing the gradient,
callbacks that see every step once."""

import os
import subprocess
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import accumulate as _accumulate

import jbptt
from jbptt import cells, estimators
from jbptt._src import buckets as buckets_lib
from jbptt._src import stream, train_compat

Buckets = jbptt.train.Buckets


def _flat(tree):
    return jnp.concatenate([jnp.ravel(a) for a in jax.tree_util.tree_leaves(tree)])


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


class SmallBuckets(NamedTuple):
    """An estimator's online rule with a small bucket set, so that long
    segments are split (the estimator is otherwise unchanged)."""

    inner: object
    ladder: tuple = (3, 5)

    name = property(lambda self: self.inner.name)
    deterministic = property(lambda self: self.inner.deterministic)
    hparams = property(lambda self: self.inner.hparams)

    def samples(self, problem, key, n, *, chunk=64, mesh=None):
        return self.inner.samples(problem, key, n, chunk=chunk, mesh=mesh)

    def cost(self, problem):
        return self.inner.cost(problem)

    def online(self):
        ladder = self.ladder
        return self.inner.online()._replace(buckets=lambda mb: ladder)


def _setup(cell_name="elman", T=60, B=2, H=4):
    cell = {"elman": cells.elman("tanh"), "lstm": cells.lstm()}[cell_name]
    model = jbptt.readout(cell, output_size=1)
    params = model.init(jax.random.key(0), 1, H)
    xs = jax.random.normal(jax.random.key(1), (T, B, 1))
    ys = jnp.concatenate([jnp.zeros((2, B, 1)), xs[:-2]])
    return model, params, xs, ys


def _chunked(model, params, xs, ys, opt, est, bounds, **kw):
    hists, state = [], None
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        last = i == len(bounds) - 2
        h = jbptt.train.train(
            model.cell, model.loss_fn, params, xs[a:b], ys[a:b], opt, est,
            state=state, flush=last, **kw,
        )  # fmt: skip
        hists.append(h)
        state = h.state
    return hists


def _same(a, b):
    for x, y in zip(*map(jax.tree_util.tree_leaves, (a, b)), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize(
    "est",
    [
        estimators.tbptt(7),
        estimators.tbptt(5, random_offset=True),
        estimators.artbp_matched(4, "poly_tail"),
        SmallBuckets(estimators.artbp(0.15)),  # long segments split
    ],
    ids=["tbptt", "tbptt_offset", "artbp_poly", "artbp_split"],
)
def test_chunked_calls_equal_one_call_bitwise(est):
    model, params, xs, ys = _setup()
    opt, key = optax.adam(1e-2), jax.random.key(5)
    one = jbptt.train.train(
        model.cell, model.loss_fn, params, xs, ys, opt, est, key=key
    )
    parts = _chunked(model, params, xs, ys, opt, est, [0, 11, 12, 30, 47, 60], key=key)
    _same(one.params, parts[-1].params)
    _same(one.opt_state, parts[-1].opt_state)
    _same(one.h, parts[-1].h)
    for field in ("loss", "grad_norm", "length", "start", "step_loss"):
        joined = np.concatenate([getattr(h, field) for h in parts])
        np.testing.assert_array_equal(joined, getattr(one, field))
    assert int(one.length.sum()) == 60 and one.state.pending is None
    assert parts[-1].state.step == 60 and parts[-1].state.segment == len(one.loss)
    if isinstance(est, SmallBuckets):
        assert one.advanced_steps > 0  # some segment was split


def test_compiles_over_chunked_calls_bounded_by_the_buckets():
    """8 chunked calls of ARTBP poly-tail: at most one compilation per
    bucket of the estimator, however the draws fall."""
    model, params, xs, ys = _setup(T=240)

    def loss_fn(p, out, y):  # a fresh function: a fresh jit cache entry
        return model.loss_fn(p, out, y)

    est = estimators.artbp_matched(6, "poly_tail")
    ladder = est.online().buckets(1)
    hists, state, opt = [], None, optax.sgd(1e-2)  # one optimizer: one static
    for i in range(8):
        sl = slice(30 * i, 30 * (i + 1))
        h = jbptt.train.train(
            model.cell, loss_fn, params, xs[sl], ys[sl], opt, est,
            key=jax.random.key(0), state=state, flush=i == 7,
        )  # fmt: skip
        hists.append(h)
        state = h.state
    compiles = sum(h.compiles for h in hists)
    used = set().union(*(h.buckets for h in hists))
    assert 1 <= compiles == len(used) <= len(ladder) <= 8
    lengths = np.concatenate([h.length for h in hists])
    assert len(set(lengths.tolist())) > len(ladder) // 2
    real = int(lengths.sum())
    padded = sum(h.padded_steps for h in hists)
    assert real == 240 and real <= padded < 3 * real


def test_compiled_steps_of_dropped_models_are_released():
    """train keeps the step programs of its last few models only: a loop
    over fresh models does not keep every model's executables alive (each
    holds hundreds of memory maps of compiled code on XLA:CPU), while a
    model used again within that window compiles nothing."""
    import gc
    import weakref

    _, params, xs, ys = _setup(T=16)
    est, opt = estimators.tbptt(4), optax.sgd(1e-2)

    def run(model):
        return jbptt.train.train(model.cell, model.loss_fn, params, xs, ys, opt, est)

    kept = jbptt.readout(cells.elman("tanh"), output_size=1)
    assert run(kept).compiles == 1
    first = jbptt.readout(cells.elman("tanh"), output_size=1)
    run(first)
    gone = weakref.ref(first.loss_fn)
    del first
    for _ in range(train_compat._PROGRAMS - 2):  # fill the window, keep `kept`
        run(jbptt.readout(cells.elman("tanh"), output_size=1))
        assert run(kept).compiles == 0
    gc.collect()
    assert gone() is not None  # still one of the last _PROGRAMS programs
    run(jbptt.readout(cells.elman("tanh"), output_size=1))
    gc.collect()
    assert gone() is None  # its program, and so its executables, released
    assert len(train_compat._programs) == train_compat._PROGRAMS
    assert run(kept).compiles == 0


def _ladders(est, T, *variants):
    """One SGD run of ``est`` per keyword set in ``variants`` (same data and
    key), and the runner for more."""
    model, params, xs, ys = _setup(T=T)
    opt = optax.sgd(1e-2)

    def run(estimator=est, **kw):
        return jbptt.train.train(
            model.cell, model.loss_fn, params, xs, ys, opt, estimator,
            key=jax.random.key(3), **kw,
        )  # fmt: skip

    return run, [run(**kw) for kw in variants]


def test_more_buckets_pad_less_and_train_the_same_segments():
    """max_buckets=16: a finer ladder of the same law, less padding, the same
    cuts and (up to round-off) the same run."""
    est = estimators.artbp_matched(8, "constant")
    fine = est.online().buckets(1, max_buckets=16)
    assert len(est.online().buckets(1)) == 6 < len(fine) <= 16
    assert max(fine) == max(est.online().buckets(1))  # the same top quantile
    run, (six, many) = _ladders(  # warmup=0: the whole ladders from the start
        est, 240, {"buckets": Buckets(max_buckets=6, warmup=0)},
        {"buckets": Buckets(max_buckets=16, warmup=0)},
    )  # fmt: skip
    np.testing.assert_array_equal(six.length, many.length)
    assert set(many.buckets) <= set(fine) and many.compiles <= len(fine)
    assert many.padded_steps < six.padded_steps
    np.testing.assert_allclose(many.loss, six.loss, rtol=1e-9)
    with pytest.raises(ValueError, match="max_buckets"):
        run(buckets=Buckets(max_buckets=0))


def test_warmup_trains_the_first_steps_in_two_buckets_and_chunks_as_one_call():
    """Buckets.warmup: segments starting before it run in the ladder's middle
    and top buckets only (a short run compiles two passes), later ones in
    the whole ladder; the run is the warmup=0 one up to round-off, and
    chunked calls across the boundary are bitwise one call."""
    est = estimators.artbp_matched(6, "constant")
    ladder = tuple(sorted(est.online().buckets(1)))
    early = buckets_lib.warmup_ladder(ladder)
    assert len(ladder) == 6 and early == (ladder[2], ladder[-1])
    short, late, none = (
        Buckets(max_buckets=6, top=None, warmup=w) for w in (240, 100, 0)
    )
    run, (first, mixed, whole) = _ladders(
        est, 240, {"buckets": short}, {"buckets": late}, {"buckets": none}
    )
    np.testing.assert_array_equal(first.length, whole.length)
    assert set(first.buckets) <= set(early) and first.compiles <= 2
    assert len(set(whole.buckets) - set(early)) > 0  # the ladder pads less
    assert first.padded_steps > mixed.padded_steps > whole.padded_steps
    for h in (first, mixed):
        np.testing.assert_allclose(h.loss, whole.loss, rtol=1e-10)
        leaves = map(jax.tree_util.tree_leaves, (h.params, whole.params))
        for a, b in zip(*leaves, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
    model, params, xs, ys = _setup(T=240)
    parts = _chunked(
        model, params, xs, ys, optax.sgd(1e-2), est, [0, 70, 130, 240],
        key=jax.random.key(3), buckets=late,
    )  # fmt: skip
    _same(parts[-1].params, mixed.params)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="warmup"):
            run(buckets=Buckets(warmup=bad))


def test_top_bucket_caps_the_ladder_and_trains_the_same_segments():
    """top_bucket=5: no compiled segment is longer, the longer segments are
    split, and the run is the uncapped one up to round-off (float64)."""
    est = estimators.artbp_matched(6, "constant")
    ladder = est.online().buckets(1)
    assert max(ladder) > 5
    six = Buckets(max_buckets=6)
    run, (full, capped) = _ladders(
        est, 120, {"buckets": six}, {"buckets": six._replace(top=5)}
    )
    np.testing.assert_array_equal(full.length, capped.length)
    assert max(full.length) > 5 and capped.advanced_steps > full.advanced_steps
    assert set(capped.buckets) <= {b for b in ladder if b <= 5}
    np.testing.assert_allclose(capped.loss, full.loss, rtol=1e-10)
    leaves = map(jax.tree_util.tree_leaves, (capped.params, full.params))
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
    _, (ref, tb) = _ladders(estimators.tbptt(6), 120, {}, {"buckets": Buckets(top=4)})
    assert tb.buckets == (4,) and tb.advanced_steps == 4 * len(tb.length)
    np.testing.assert_allclose(tb.loss, ref.loss, rtol=1e-10)  # blocks of 4, 2
    with pytest.raises(ValueError, match="top_bucket"):
        run(buckets=Buckets(top=0))
    with pytest.raises(ValueError, match="top_bucket: estimator"):
        run(estimator=jbptt.forward_mode.uoro(), buckets=Buckets(top=8))


def test_auto_top_bucket_caps_only_past_the_page_fault_size():
    """top_bucket="auto" (the default) keeps the whole ladder while every
    bucket's step fits in the policy's cpu_temp_bytes of temporaries (a tiny model);
    with no room it keeps the lower half of the ladder, splits longer
    segments (the uncapped run up to round-off), and makes the same choice
    in every chunked call (bitwise one call)."""
    est = estimators.artbp_matched(6, "constant")
    ladder = tuple(sorted(est.online().buckets(1)))
    middle = ladder[(len(ladder) - 1) // 2]
    six = Buckets(max_buckets=6)
    run, (full, auto) = _ladders(
        est, 240, {"buckets": six._replace(top=None)}, {"buckets": six}
    )
    assert auto.buckets == full.buckets and max(full.buckets) > middle
    _same(auto.params, full.params)
    no_room = six._replace(cpu_temp_bytes=0)
    capped = run(buckets=no_room)
    assert max(capped.buckets) <= middle < max(full.length)
    assert capped.advanced_steps > full.advanced_steps
    np.testing.assert_allclose(capped.loss, full.loss, rtol=1e-10)
    model, params, xs, ys = _setup(T=240)
    parts = _chunked(
        model, params, xs, ys, optax.sgd(1e-2), est, [0, 90, 170, 240],
        key=jax.random.key(3), buckets=no_room,
    )  # fmt: skip
    assert max(b for h in parts for b in h.buckets) <= middle
    _same(parts[-1].params, capped.params)


def test_auto_top_bucket_reads_the_line_of_real_temporaries():
    """buckets.auto_top extrapolates the first and middle buckets' temporaries
    linearly; on XLA's own compiled steps (a GRU's value and gradient) that
    picks the bucket a limit at the real temporaries allows (the estimate is
    within 5 % at four times the middle bucket)."""
    cell = cells.gru()
    params = cell.init(jax.random.key(0), 3, 16)
    ladder = (4, 8, 16, 32, 64)

    vg = jbptt.value_and_grad(cell, lambda p, out, y: jnp.sum((out - y) ** 2))
    h0 = cell.initial_state(params, (8,))

    def compiled(b):
        xs = jnp.zeros((b, 8, 3))
        ys = jnp.zeros((b, 8, 16))
        return jax.jit(vg).lower(params, h0, xs, ys).compile()

    temps = [buckets_lib.temp_bytes(compiled(b)) for b in ladder]
    assert temps[-1] > temps[0] > 0
    for i in range(2, len(ladder)):  # limits between two buckets' temporaries
        last = i + 1 == len(ladder)
        limit = temps[i] * 1.05 if last else (temps[i] + temps[i + 1]) / 2
        assert buckets_lib.auto_top(ladder, compiled, int(limit)) == ladder[i]


@pytest.mark.parametrize("cell_name", ["elman", "lstm"])
def test_splitting_a_long_segment_leaves_the_gradient_unchanged(cell_name):
    """Full BPTT over 29 steps in blocks of 3 and 5 (forward through the
    blocks, cotangents carried back): the same gradient as unsplit and as
    jbptt.value_and_grad; ARTBP with its link weights likewise."""
    model, params, xs, ys = _setup(cell_name, T=29, B=3)
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
    h0 = model.cell.initial_state(params, (3,))
    key = jax.random.key(2)
    for est in (estimators.full(), estimators.artbp(0.1)):
        run = lambda e: jbptt.train.train(  # noqa: E731
            model.cell, model.loss_fn, params, xs, ys, _accumulate(), e, key=key
        )
        whole, split = run(est), run(SmallBuckets(est))
        assert split.advanced_steps > 0 and whole.advanced_steps == 0
        assert _rel(_flat(split.opt_state), _flat(whole.opt_state)) < 1e-12
        assert _rel(_flat(split.h), _flat(whole.h)) < 1e-12
        np.testing.assert_allclose(split.loss, whole.loss, rtol=1e-12)
        w, _ = stream.draw(est.law, key, 0, 29, 1)
        vg = jbptt.value_and_grad(model.cell, model.loss_fn)
        (L, _), g = vg(params, h0, xs, ys, jnp.asarray(w))
        assert _rel(_flat(split.opt_state), _flat(g)) < 1e-10
        assert abs(float(np.sum(split.step_loss)) - float(L)) < 1e-10 * abs(L)


def test_callbacks_see_every_step_exactly_once():
    model, params, xs, ys = _setup(T=90)
    est, key = estimators.artbp(0.2), jax.random.key(1)
    seen, evals = [], []

    def record(event):
        assert isinstance(event.state, jbptt.train.TrainState)
        assert event.state.step == event.start + event.length
        seen.extend(range(event.start, event.start + event.length))

    every = jbptt.train.every(25, lambda e: evals.append(e.start + e.length))
    hists = _chunked(
        model, params, xs, ys, optax.sgd(1e-2), est, [0, 40, 41, 90],
        key=key, callbacks=[record, every],
    )  # fmt: skip
    assert seen == list(range(90))
    ends = np.cumsum(np.concatenate([h.length for h in hists]))
    crossing = [
        int(e)
        for s, e in zip(np.r_[0, ends[:-1]], ends, strict=True)
        if e // 25 > s // 25
    ]
    assert evals == crossing and len(evals) >= 1


def test_a_callback_stops_training():
    model, params, xs, ys = _setup(T=64)
    stop_after = jbptt.train.every(20, lambda e: True)
    opt = optax.sgd(1e-2)  # one optimizer for the chunked calls
    h = jbptt.train.train(
        model.cell, model.loss_fn, params, xs, ys, opt,
        estimators.tbptt(8), callbacks=[stop_after],
    )  # fmt: skip
    assert h.stopped and h.length.tolist() == [8, 8, 8]
    assert h.state.step == 24 and h.state.pending is None
    # continuing from the state on the rest of the data is the one run
    rest = jbptt.train.train(
        model.cell, model.loss_fn, None, xs[24:], ys[24:], opt,
        estimators.tbptt(8), state=h.state,
    )  # fmt: skip
    one = jbptt.train.train(
        model.cell, model.loss_fn, params, xs, ys, optax.sgd(1e-2),
        estimators.tbptt(8),
    )  # fmt: skip
    _same(rest.params, one.params)


def test_pending_segment_and_bad_state():
    model, params, xs, ys = _setup(T=20)
    opt = optax.sgd(1e-2)
    h = jbptt.train.train(
        model.cell, model.loss_fn, params, xs, ys, opt, estimators.tbptt(8),
        flush=False,
    )  # fmt: skip
    assert h.length.tolist() == [8, 8] and h.state.pending[0].shape[0] == 4
    assert h.state.step == 20
    with pytest.raises(TypeError, match="TrainState"):
        jbptt.train.train(
            model.cell, model.loss_fn, params, xs, ys, opt, estimators.tbptt(8),
            state=dict(h.state._asdict()),
        )  # fmt: skip
    with pytest.raises(ValueError, match="pending"):
        jbptt.train.train(
            model.cell, model.loss_fn, params, xs, ys, opt,
            jbptt.truncation.full(20), state=h.state,
        )  # fmt: skip
    with pytest.raises(TypeError, match="flush"):
        jbptt.train.train(
            model.cell, model.loss_fn, params, xs, ys, opt, estimators.tbptt(8),
            flush=1,
        )  # fmt: skip


def test_progress_bar_shows_loss_and_segments_per_second(capsys):
    model, params, xs, ys = _setup(T=24)
    h = jbptt.train.train(
        model.cell, model.loss_fn, params, xs, ys, optax.sgd(1e-2),
        estimators.tbptt(4), callbacks=[jbptt.train.progress_bar(24)],
    )  # fmt: skip
    err = capsys.readouterr().err
    assert "24/24" in err and "loss=" in err and "seg_s=" in err
    assert f"loss={float(h.loss[-1]):.4g}" in err  # the last segment's loss
    # progress=True: deprecated, the same bar and the same run
    with pytest.deprecated_call(match="progress_bar"):
        old = jbptt.train.train(
            model.cell, model.loss_fn, params, xs, ys, optax.sgd(1e-2),
            estimators.tbptt(4), progress=True,
        )  # fmt: skip
    err = capsys.readouterr().err
    assert "24/24" in err and f"loss={float(old.loss[-1]):.4g}" in err
    _same(old.params, h.params)


def test_trainer_runs_chunks_bitwise_as_train_and_owns_its_steps():
    """Trainer.init/run over chunks: bitwise the one-call train(); the
    second chunk compiles nothing; History.seconds is never negative (the
    first chunk's included, where compilation happens)."""
    model, params, xs, ys = _setup(T=60)
    est, opt, key = estimators.artbp_matched(4, "poly_tail"), optax.adam(1e-2), None
    key = jax.random.key(5)
    one = jbptt.train.train(
        model.cell, model.loss_fn, params, xs, ys, opt, est, key=key
    )
    tr = jbptt.train.Trainer(model.cell, model.loss_fn, opt, est)
    state, hists = tr.init(params, key), []
    for a, b in [(0, 30), (30, 60)]:
        state, h = tr.run(state, xs[a:b], ys[a:b], flush=b == 60)
        hists.append(h)
        assert h.seconds >= 0.0 and h.state is state
    _same(one.params, state.params)
    _same(one.opt_state, state.opt_state)
    joined = np.concatenate([h.step_loss for h in hists])
    np.testing.assert_array_equal(joined, one.step_loss)
    # a new Trainer compiles its own steps; the same one reuses them
    again = jbptt.train.Trainer(model.cell, model.loss_fn, opt, est)
    _, h = again.run(again.init(params, key), xs[:30], ys[:30], flush=False)
    assert h.compiles >= 1
    _, h = tr.run(tr.init(params, key), xs[:30], ys[:30], flush=False)
    assert h.compiles == 0
    with pytest.raises(ValueError, match="is random: pass key"):
        tr.init(params)
    with pytest.raises(TypeError, match="TrainState"):
        tr.run(dict(state._asdict()), xs, ys)


def test_fresh_optimizer_per_chunked_call_reuses_the_compiled_steps():
    """The train() docstring's old chunked spelling, a new optax.adam per
    call: every gradient pass compiled by the first call is reused (only
    the optimizer's update, outside the buckets, compiles again), and the
    run is bitwise the one with one optimizer object."""
    model, params, xs, ys = _setup(T=90)

    def loss_fn(p, out, y):  # a fresh function: nothing compiled before
        return model.loss_fn(p, out, y)

    est, key = estimators.artbp_matched(5, "poly_tail"), jax.random.key(2)
    hists, state = [], None
    for a, b in [(0, 45), (45, 90)]:
        h = jbptt.train.train(
            model.cell, loss_fn, params, xs[a:b], ys[a:b], optax.adam(1e-2), est,
            key=key, state=state, flush=b == 90,
        )  # fmt: skip
        hists.append(h)
        state = h.state
    assert hists[0].compiles >= 1 and hists[0].seconds >= 0.0
    new = set(hists[1].buckets) - set(hists[0].buckets)
    # no bucket compiled again: new buckets compile, and the blocks of the
    # run's first split segment (one program, the top bucket's)
    first_split = hists[1].advanced_steps > 0 == hists[0].advanced_steps
    assert hists[1].compiles == len(new) + first_split
    one = jbptt.train.train(
        model.cell, loss_fn, params, xs, ys, optax.adam(1e-2), est, key=key
    )
    _same(one.params, hists[-1].params)


@pytest.mark.parametrize(
    "old, new",
    [
        ({"min_bucket": 8}, {"min_bucket": 8}),
        ({"max_buckets": 3}, {"max_buckets": 3}),
        ({"top_bucket": 5}, {"top": 5}),
        ({"top_bucket": None, "max_buckets": 4}, {"top": None, "max_buckets": 4}),
    ],
)
def test_old_bucket_keywords_warn_and_train_the_same(old, new):
    model, params, xs, ys = _setup(T=60)
    est, opt, key = estimators.artbp_matched(4, "constant"), optax.sgd(1e-2), None
    key = jax.random.key(1)

    def run(**kw):
        return jbptt.train.train(
            model.cell, model.loss_fn, params, xs, ys, opt, est, key=key, **kw
        )

    ref = run(buckets=Buckets(**new))
    with pytest.warns(DeprecationWarning, match=r"buckets=jbptt\.train\.Buckets\("):
        got = run(**old)
    _same(got.params, ref.params)
    assert got.buckets == ref.buckets and got.padded_steps == ref.padded_steps


def test_unknown_keywords_and_bad_buckets_are_refused():
    model, params, xs, ys = _setup(T=20)

    def run(**kw):
        return jbptt.train.train(
            model.cell, model.loss_fn, params, xs, ys, optax.sgd(1e-2),
            estimators.tbptt(4), **kw,
        )  # fmt: skip

    with pytest.raises(TypeError, match="unexpected keyword argument 'lr'"):
        run(lr=0.1)
    with pytest.raises(TypeError, match="jbptt.train.Buckets"):
        run(buckets={"top": 4})


# Compiling ahead, in a fresh interpreter with XLA's default flags.
AHEAD = """
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np, optax
import jbptt
from jbptt import cells, estimators
model = jbptt.readout(cells.elman("tanh"), output_size=1)
params = model.init(jax.random.key(0), 1, 4)
xs = jax.random.normal(jax.random.key(1), (90, 2, 1))
ys = jax.numpy.concatenate([jax.numpy.zeros((2, 2, 1)), xs[:-2]])
est = estimators.artbp_matched(4, "poly_tail")
out = []
for ahead in (True, False):
    tr = jbptt.train.Trainer(model.cell, model.loss_fn, optax.adam(1e-2), est,
                             buckets=jbptt.train.Buckets(ahead=ahead))
    state, hist = tr.run(tr.init(params, jax.random.key(5)), xs, ys)
    assert (tr.steps._pool is not None) == ahead, ahead
    out.append(np.concatenate([np.ravel(a) for a in
                               jax.tree_util.tree_leaves(state.params)]))
    out.append(hist.step_loss)
assert np.array_equal(out[0], out[2]) and np.array_equal(out[1], out[3])
print("same")
"""


def test_compiling_ahead_trains_bitwise_as_compiling_in_turn():
    """Buckets(ahead=True) compiles in background threads and trains
    bitwise as the default, ahead=False."""
    # XLA's own defaults (the suite's XLA_FLAGS tune compile time only)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    proc = subprocess.run(
        [sys.executable, "-c", AHEAD], capture_output=True, text=True, env=env,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "same"
