"""The trainer's state across chunks and divergences, its flags, keys and
dtypes: a stream with resets and a nonzero ``h0`` trained in chunks equals
one call bitwise; every field of the state under each ``on_nonfinite``
policy; user return values and flags read by ``bool()``; keys through the
one validator; the dtype rule (JAX's promotion of params and inputs) in
``value_and_grad``, ``rnn_scan`` and the trainer; and the errors of chunks
that do not fit the state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jbptt
from jbptt import cells, estimators, train
from jbptt._src import checks

tree_map = jax.tree_util.tree_map
T, B, I = 24, 2, 2


def _model():
    return jbptt.readout(cells.elman(), output_size=1)


def _data(seed=0, T=T):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    xs = jax.random.normal(k1, (T, B, I))
    ys = jax.random.normal(k2, (T, B, 1))
    resets = jax.random.bernoulli(k3, 0.2, (T, B)).at[0].set(False)
    return xs, ys, resets


def _array(a):
    if jax.dtypes.issubdtype(getattr(a, "dtype", None), jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(a))
    return np.asarray(a)


def _same(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for u, v in zip(la, lb, strict=True):
        np.testing.assert_array_equal(_array(u), _array(v))


def _h0(model, params):
    return model.cell.initial_state(params, (B,)) + 0.5


@pytest.mark.parametrize(
    "estimator", [estimators.tbptt(5), estimators.artbp(0.2)], ids=["tbptt", "artbp"]
)
def test_chunked_train_with_resets_and_h0_equals_one_call_bitwise(estimator):
    """The reset target is part of the state: the second chunk, given only
    ``state=``, restarts episodes from the first call's ``h0``."""
    model = _model()
    params = model.init(jax.random.key(0), I, 4)
    xs, ys, resets = _data()
    h0, key, opt = _h0(model, params), jax.random.key(3), optax.sgd(0.05)
    args = (model.cell, model.loss_fn)
    one = train.train(*args, params, xs, ys, opt, estimator, key=key, h0=h0,
                      resets=resets)  # fmt: skip
    a = train.train(*args, params, xs[:10], ys[:10], opt, estimator, key=key,
                    h0=h0, resets=resets[:10], flush=False)  # fmt: skip
    assert a.state.h_reset is not None
    b = train.train(*args, None, xs[10:], ys[10:], opt, estimator,
                    state=a.state, resets=resets[10:])  # fmt: skip
    _same(b.params, one.params)
    _same(b.h, one.h)
    # the same run through Trainer.init(params, key, h0) and Trainer.run
    tr = train.Trainer(*args, opt, estimator)
    state = tr.init(params, key, h0)
    state, _ = tr.run(state, xs[:7], ys[:7], resets=resets[:7], flush=False)
    state, _ = tr.run(state, xs[7:], ys[7:], resets=resets[7:])
    _same(state.params, one.params)


def test_reset_state_of_a_call_replaces_the_state_reset_target():
    """``run(reset_state=)`` takes precedence over ``state.h_reset`` and is
    kept for later calls."""
    model = _model()
    params = model.init(jax.random.key(0), I, 4)
    xs, ys, resets = _data()
    target = _h0(model, params) - 1.0
    tr = train.Trainer(model.cell, model.loss_fn, optax.sgd(0.05), estimators.tbptt(4))
    one, _ = tr.run(tr.init(params, None, _h0(model, params)), xs, ys,
                    resets=resets, reset_state=target)  # fmt: skip
    state = tr.init(params, None, _h0(model, params))
    state, _ = tr.run(state, xs[:9], ys[:9], resets=resets[:9],
                      reset_state=target, flush=False)  # fmt: skip
    _same(state.h_reset, target)
    state, _ = tr.run(state, xs[9:], ys[9:], resets=resets[9:])
    _same(state.params, one.params)


def _diverging(policy, bad_segment=2, top=None, estimator=None):
    """A trainer whose segment ``bad_segment`` (of 4 steps) has a NaN loss
    (finite data: the loss is NaN where a target is above 50), its first
    state, the data and the model."""
    model = _model()
    params = model.init(jax.random.key(0), I, 4)
    xs, ys, _ = _data(T=24)
    ys = ys.at[4 * bad_segment + 1].set(100.0)

    def loss_fn(p, out, y):
        return model.loss_fn(p, out, y) + jnp.where(jnp.any(y > 50), jnp.nan, 0.0)

    est = estimators.tbptt(4) if estimator is None else estimator
    buckets = None if top is None else train.Buckets(top=top, min_bucket=top)
    tr = train.Trainer(model.cell, loss_fn, optax.adam(1e-2), est,
                       on_nonfinite=policy, buckets=buckets)  # fmt: skip
    state0 = tr.init(params, jax.random.key(1), _h0(model, params))
    return tr, state0, xs, ys, model


@pytest.mark.parametrize("with_callback", [False, True])
def test_stop_returns_exactly_the_state_before_the_diverged_segment(with_callback):
    cbs = [lambda e: None] if with_callback else []
    tr, state0, xs, ys, _ = _diverging("stop")
    state, hist = tr.run(state0, xs, ys, callbacks=cbs)
    assert hist.stopped and hist.divergences[0].action == "stopped"
    # the same run stopped by hand before segment 2 (steps 0..7)
    ref, _ = tr.run(state0, xs[:8], ys[:8])
    for name in ("params", "opt_state", "h", "est_state", "key", "h_reset"):
        _same(getattr(state, name), getattr(ref, name))
    assert (state.step, state.segment, state.cut) == (8, 2, ref.cut)
    assert state.pending is None and state.stream_cut is None
    _same((hist.params, hist.h), (state.params, state.h))
    # a rerun from it with the data from state.step on retries the segment
    _, again = tr.run(state, xs[8:], ys[8:])
    assert again.divergences[0].step == 2 and again.state.step == 8


def test_stop_at_the_first_segment_of_a_call_returns_the_state_given():
    tr, state0, xs, ys, _ = _diverging("stop", bad_segment=2)
    first, _ = tr.run(state0, xs[:10], ys[:10], flush=False)  # pending 8, 9
    assert first.pending is not None
    state, hist = tr.run(first, xs[10:], ys[10:])
    assert hist.divergences[0].step == 2
    for name in first._fields:
        _same(getattr(state, name), getattr(first, name))


def test_skip_moves_the_stream_past_the_segment_with_params_unchanged():
    tr, state0, xs, ys, model = _diverging("skip")
    state, hist = tr.run(state0, xs, ys)
    assert [d.step for d in hist.divergences] == [2] and not hist.stopped
    assert state.step == T and state.segment == 6 and state.pending is None
    # params and opt_state as before segment 2; h moved past the segment to
    # its end under the unchanged params; then segments 3 .. 5 train
    before, _ = tr.run(state0, xs[:8], ys[:8])
    ref = train.Trainer(tr.cell, model.loss_fn, optax.adam(0.0), tr.estimator)
    h_end = ref.run(before, xs[8:12], ys[8:12])[0].h
    cont = before._replace(h=h_end, step=12, segment=3)
    after, _ = tr.run(cont, xs[12:], ys[12:])
    for name in ("params", "opt_state", "h", "est_state", "key", "h_reset"):
        _same(getattr(state, name), getattr(after, name))
    assert (state.cut, state.stream_cut) == (after.cut, after.stream_cut)


def test_skip_of_a_segment_split_into_blocks_moves_the_stream_too():
    # full BPTT over 24 steps in blocks of 8: one split segment
    est = estimators.full()
    tr, state0, xs, ys, model = _diverging("skip", top=8, estimator=est)
    state, hist = tr.run(state0, xs, ys)
    assert hist.divergences and hist.advanced_steps > 0
    _same(state.params, state0.params)
    ref = train.Trainer(tr.cell, model.loss_fn, optax.adam(0.0), est,
                        buckets=train.Buckets(top=8, min_bucket=8))  # fmt: skip
    h_end = ref.run(state0, xs, ys)[0].h
    _same(state.h, h_end)
    assert state.step == T and state.segment == 1


def test_skip_restarts_from_the_reset_target_where_the_end_state_is_not_finite():
    model = jbptt.readout(cells.elman("identity"), output_size=1)
    params = model.init(jax.random.key(0), I, 4)
    params["cell"]["U"] = jnp.ones_like(params["cell"]["U"])
    xs, ys, _ = _data()
    xs = xs.at[9].set(1.5e308)  # finite data, U x overflows at step 9
    tr = train.Trainer(model.cell, model.loss_fn, optax.sgd(0.1), estimators.tbptt(4),
                       on_nonfinite="skip")  # fmt: skip
    h0 = _h0(model, params)
    state, hist = tr.run(tr.init(params, None, h0), xs[:13], ys[:13], flush=False)
    assert [d.step for d in hist.divergences] == [2]
    assert "state" in hist.divergences[0].quantities
    _same(state.h, h0)  # restarted from h_reset (Trainer.init's h0)
    assert state.step == 13 and state.segment == 3


def test_raise_leaves_the_state_given_unchanged():
    tr, state0, xs, ys, _ = _diverging("raise")
    with pytest.raises(checks.DivergenceError, match="at step 2"):
        tr.run(state0, xs, ys)
    assert state0.step == 0 and state0.segment == 0


@pytest.mark.parametrize(
    "stop", [np.bool_(True), jnp.array(True), np.array(True), 1], ids=str
)
def test_a_callback_stops_on_any_true_value(stop):
    model = _model()
    params = model.init(jax.random.key(0), I, 4)
    xs, ys, _ = _data()
    tr = train.Trainer(model.cell, model.loss_fn, optax.sgd(0.05), estimators.tbptt(4))
    _, hist = tr.run(tr.init(params), xs, ys, callbacks=[lambda e: stop])
    assert hist.stopped and len(hist.length) == 1


@pytest.mark.parametrize("go", [np.bool_(False), jnp.array(False), 0, None], ids=str)
def test_a_callback_returning_a_false_value_never_stops(go):
    model = _model()
    params = model.init(jax.random.key(0), I, 4)
    xs, ys, _ = _data()
    tr = train.Trainer(model.cell, model.loss_fn, optax.sgd(0.05), estimators.tbptt(4))
    _, hist = tr.run(tr.init(params), xs, ys, callbacks=[lambda e: go])
    assert not hist.stopped and len(hist.length) == 6


def test_callback_stop_state_continues_the_run_bitwise():
    """A state after a callback's stop carries the cut laws' exact carries
    (here ARTBP with per-stream cuts)."""
    model = _model()
    params = model.init(jax.random.key(0), I, 4)
    xs, ys, _ = _data()
    tr = train.Trainer(model.cell, model.loss_fn, optax.sgd(0.05),
                       estimators.artbp(0.3),
                       stream_cuts=estimators.artbp_matched(3))  # fmt: skip
    state0 = tr.init(params, jax.random.key(5))
    one, _ = tr.run(state0, xs, ys)
    stop_at = [1]
    state, hist = tr.run(state0, xs, ys, callbacks=[lambda e: e.index == stop_at[0]])
    assert hist.stopped
    state, _ = tr.run(state, xs[state.step :], ys[state.step :])
    _same(state.params, one.params)
    assert state.stream_cut.tolist() == one.stream_cut.tolist()


@pytest.mark.parametrize(
    "flush", [np.bool_(True), jnp.array(True), np.array(True)], ids=str
)
def test_flush_takes_numpy_and_jax_bools(flush):
    model = _model()
    params = model.init(jax.random.key(0), I, 4)
    xs, ys, _ = _data()
    tr = train.Trainer(model.cell, model.loss_fn, optax.sgd(0.05), estimators.tbptt(5))
    state, _ = tr.run(tr.init(params), xs, ys, flush=flush)
    assert state.pending is None
    state, _ = tr.run(tr.init(params), xs, ys, flush=np.bool_(False))
    assert state.pending is not None
    with pytest.raises(TypeError, match="flush must be a bool, got 'yes'"):
        tr.run(tr.init(params), xs, ys, flush="yes")


def test_every_entry_point_takes_its_key_through_the_validator():
    model = _model()
    params = model.init(jax.random.key(0), I, 4)
    xs, ys, _ = _data()
    tr = train.Trainer(model.cell, model.loss_fn, optax.sgd(0.1), estimators.artbp(0.2))
    with pytest.raises(TypeError, match=r"key must be a PRNG key \(jax.random.key"):
        tr.init(params, 0)
    with pytest.raises(TypeError, match=r"key must be a PRNG key \(jax.random.key"):
        train.train(model.cell, model.loss_fn, params, xs, ys, optax.sgd(0.1),
                    estimators.artbp(0.2), key=0)  # fmt: skip
    with pytest.raises(TypeError, match=r"state.key must be a PRNG key"):
        tr.run(tr.init(params, jax.random.key(0))._replace(key=0), xs, ys)
    # a legacy uint32 key is the same key
    legacy = tr.run(tr.init(params, jax.random.PRNGKey(2)), xs, ys)[0]
    typed = tr.run(tr.init(params, jax.random.key(2)), xs, ys)[0]
    _same(legacy.params, typed.params)


def test_chunk_that_does_not_continue_the_pending_steps():
    model = _model()
    params = model.init(jax.random.key(0), I, 4)
    xs, ys, _ = _data()
    tr = train.Trainer(model.cell, model.loss_fn, optax.sgd(0.1), estimators.tbptt(5))
    state, _ = tr.run(tr.init(params), xs[:7], ys[:7], flush=False)
    with pytest.raises(ValueError, match=r"xs: steps of shape \(3, 2\)"):
        tr.run(state, jnp.ones((4, 3, I)), jnp.ones((4, 3, 1)))
    with pytest.raises(ValueError, match=r"xs: steps of shape \(2,\)"):
        tr.run(state, jnp.ones((4, I)), jnp.ones((4, 1)))
    with pytest.raises(ValueError, match=r"ys: targets of per-step shapes"):
        tr.run(state, xs[7:], jnp.ones((T - 7, B, 3)))


def test_state_from_another_optimizer_is_named():
    model = _model()
    params = model.init(jax.random.key(0), I, 4)
    xs, ys, _ = _data()
    sgd = train.Trainer(model.cell, model.loss_fn, optax.sgd(0.1), estimators.tbptt(5))
    adam = train.Trainer(
        model.cell, model.loss_fn, optax.adam(0.1), estimators.tbptt(5)
    )
    with pytest.raises(ValueError, match=r"state: its opt_state was not made by"):
        adam.run(sgd.init(params), xs, ys)
    with pytest.raises(ValueError, match=r"state: its opt_state"):
        train.train(model.cell, model.loss_fn, None, xs, ys, optax.adam(0.1),
                    estimators.tbptt(5), state=sgd.init(params))  # fmt: skip


def test_callbacks_must_be_a_list():
    model = _model()
    params = model.init(jax.random.key(0), I, 4)
    xs, ys, _ = _data()
    tr = train.Trainer(model.cell, model.loss_fn, optax.sgd(0.1), estimators.tbptt(5))
    with pytest.raises(TypeError, match=r"callbacks must be a list of callables"):
        tr.run(tr.init(params), xs, ys, callbacks=lambda e: None)


@pytest.mark.parametrize("mesh", ["cpu", 1.5, True, None], ids=str)
def test_mesh_of_the_wrong_kind_is_named(mesh):
    model = _model()
    args = (model.cell, model.loss_fn, optax.sgd(0.1), estimators.tbptt(5))
    if mesh is None:  # the kinds it takes
        assert train.Trainer(*args, mesh=1).mesh.size == 1
        assert train.Trainer(*args, mesh=np.int64(1)).mesh.size == 1
        assert train.Trainer(*args, mesh=jax.devices()[:1]).mesh.size == 1
        return
    with pytest.raises(TypeError, match=r"mesh must be None, a device count"):
        train.Trainer(*args, mesh=mesh)


_MIXED = [(jnp.float32, jnp.float64), (jnp.float64, jnp.float32)]


@pytest.mark.parametrize("p_dt,x_dt", _MIXED, ids=["f32params", "f64params"])
def test_mixed_dtypes_run_in_the_promoted_dtype(p_dt, x_dt):
    """float32 params with float64 inputs (and the reverse) run the
    recurrence in float64, the params' gradient in the params' dtype, in
    value_and_grad, rnn_scan and the trainer."""
    model = _model()
    p64 = model.init(jax.random.key(0), I, 4)
    xs, ys, _ = _data()
    params = tree_map(lambda a: a.astype(p_dt), p64)
    ref_p = tree_map(lambda a: a.astype(jnp.float64), params)  # same values
    h0 = model.cell.initial_state(params, (B,)).astype(x_dt)
    xs_x, ys_x = xs.astype(x_dt), ys.astype(x_dt)
    ref_x, ref_y = xs_x.astype(jnp.float64), ys_x.astype(jnp.float64)
    vg = jbptt.value_and_grad(model.cell, model.loss_fn)
    (L, h_T), g = vg(params, h0, xs_x, ys_x)
    (L_ref, h_ref), g_ref = vg(ref_p, h0.astype(jnp.float64), ref_x, ref_y)
    assert h_T.dtype == jnp.float64
    np.testing.assert_array_equal(h_T, h_ref)  # the recurrence ran in float64
    assert {a.dtype for a in jax.tree_util.tree_leaves(g)} == {jnp.dtype(p_dt)}
    # float32 params: the loss is evaluated in float32, hence the tolerance
    exact = p_dt == jnp.float64
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref),
                    strict=True):  # fmt: skip
        np.testing.assert_allclose(a, b.astype(p_dt), rtol=0 if exact else 1e-5)
    h_s, outs = jbptt.rnn_scan(model.cell, params, h0, xs_x)
    assert outs.dtype == jnp.float64
    np.testing.assert_array_equal(h_s, h_ref)
    tr = train.Trainer(model.cell, model.loss_fn, optax.sgd(0.1), estimators.tbptt(6))
    state, hist = tr.run(tr.init(params), xs_x, ys_x)
    ref_state, _ = tr.run(tr.init(ref_p), ref_x, ref_y)
    assert state.h.dtype == jnp.float64 and hist.params["cell"]["W"].dtype == p_dt
    if exact:  # float32 inputs are exact in float64
        _same(state.params, ref_state.params)


def test_compute_dtype_still_asks_for_low_precision():
    model = _model()
    params = tree_map(
        lambda a: a.astype(jnp.float32), model.init(jax.random.key(0), I, 4)
    )
    xs = jnp.ones((5, I), jnp.float32)
    h0 = model.cell.initial_state(params)
    h_T, outs = jbptt.rnn_scan(model.cell, params, h0, xs, compute_dtype=jnp.bfloat16)
    assert outs.dtype == jnp.bfloat16
    # without compute_dtype, bfloat16 inputs with float32 params promote
    h_T, outs = jbptt.rnn_scan(
        model.cell, params, h0.astype(jnp.bfloat16), xs.astype(jnp.bfloat16)
    )
    assert outs.dtype == jnp.float32


def test_numpy_and_0d_integers_where_the_trainer_takes_ints():
    model = _model()
    args = (model.cell, model.loss_fn, optax.sgd(0.1), estimators.tbptt(5))
    assert train.Trainer(*args, mesh=jnp.array(1)).mesh.size == 1
    seen = []
    cb = train.every(np.int64(10), lambda e: seen.append(e.start + e.length))
    for s in (0, 8, 16):
        cb(train.Event(None, s // 8, s, 8, 0.0, 0.0, 0.0))
    assert seen == [16, 24]


def test_train_checks_callbacks_before_adding_the_progress_bar():
    model = _model()
    params = model.init(jax.random.key(0), I, 4)
    xs, ys, _ = _data()
    with pytest.raises(TypeError, match=r"callbacks must be a list of callables"):
        train.train(model.cell, model.loss_fn, params, xs, ys, optax.sgd(0.1),
                    estimators.tbptt(5), callbacks=print)  # fmt: skip


def test_a_bad_h0_or_reset_state_is_named():
    model = _model()
    params = model.init(jax.random.key(0), I, 4)
    xs, ys, resets = _data()
    tr = train.Trainer(model.cell, model.loss_fn, optax.sgd(0.1), estimators.tbptt(5))
    with pytest.raises(ValueError, match=r"^h0 has shape"):
        tr.run(tr.init(params, None, jnp.zeros((3, 4))), xs, ys)
    state, _ = tr.run(tr.init(params), xs[:7], ys[:7], flush=False)
    with pytest.raises(
        ValueError, match=r"reset_state \(checked like h0\).*state.h_reset"
    ):
        tr.run(state, xs[7:], ys[7:], resets=resets[7:], reset_state=jnp.zeros(4))


@pytest.mark.parametrize(
    "est,own",
    [
        (estimators.tbptt(4, random_offset=True), None),
        (estimators.artbp_matched(5), estimators.artbp_matched(3)),
        (estimators.artbp(0.3), estimators.tbptt(3, random_offset=True)),
    ],
    ids=["tbptt", "matched", "artbp"],
)
@pytest.mark.parametrize("t0", [0, 7])
def test_carries_read_from_the_plan_equal_a_redraw(est, own, t0):
    """The cut laws' carries at any step inside a call (the state after a
    callback's stop or before a diverged segment) equal those a draw of
    the steps up to there gives."""
    from jbptt._src import train_plan

    host = train_plan.read_rule(est.online())[0]
    own_rule = None if own is None else train_plan.stream_rule(own, (B,))
    key, T_call = jax.random.key(4), 40
    _, _, cut0, sc0, _ = train_plan.draw(host, own_rule, key, 0, t0, 1, None,
                                         (B,), np.float64)  # fmt: skip
    if t0 == 0:
        cut0, sc0 = 1, None
    state = train.TrainState(None, None, None, None, key, t0, 0, cut0, None, sc0)
    xs = np.zeros((T_call, B, I))
    plan = train_plan.plan_call(host, own_rule, state, xs, xs[..., :1], None, True, "")
    at = train_plan.carries(plan, t0, cut0, sc0)
    for n in (0, 1, 5, 13, T_call):
        _, _, cut, sc, _ = train_plan.draw(host, own_rule, key, t0, n, cut0, sc0,
                                           (B,), np.float64)  # fmt: skip
        if n == 0:
            cut, sc = cut0, sc0
        got = at(n)
        assert got[0] == cut, n
        if own is not None:
            assert np.asarray(got[1]).tolist() == np.asarray(sc).tolist(), n
    assert at(T_call)[0] == plan.cut


def test_train_refuses_token_ids_and_labels_out_of_range_by_name():
    # An id equal to vocab_size would give NaN (and a DivergenceError blaming
    # the learning rate); a label of -1 would silently mean the last class.
    model = jbptt.readout(cells.elman(), 3, "xent", vocab_size=3)
    params = model.init(jax.random.key(0), 2, 4)
    trainer = train.Trainer(
        model.cell, model.loss_fn, optax.sgd(0.1), estimators.tbptt(2)
    )
    state = trainer.init(params, jax.random.key(1))
    ids = np.zeros((6, 2), np.int32)
    labels = np.zeros((6, 2), np.int32)
    bad_ids, bad_labels = ids.copy(), labels.copy()
    bad_ids[2, 1], bad_labels[3, 1] = 3, -1
    with pytest.raises(ValueError, match=r"xs.*\[0, 3\)"):
        trainer.run(state, bad_ids, labels)
    with pytest.raises(ValueError, match=r"ys.*\[0, 3\)"):
        trainer.run(state, ids, bad_labels)
