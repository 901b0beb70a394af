"""Online training: segment gradients are exactly the link-weight estimator,
TBPTT(k) learns a task with memory ≤ k, ARTBP compiles once per bucket."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import accumulate as _accumulate

import jbptt
from jbptt import cells, estimators, truncation


def _flat(tree):
    return jnp.concatenate([jnp.ravel(a) for a in jax.tree_util.tree_leaves(tree)])


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _model(cell_name, I=2, H=4, out=2):
    cell = {
        "elman": cells.elman("tanh"),
        "lstm": cells.lstm(),
        "flax_gru": cells.from_flax(nn.GRUCell(features=H)),
    }[cell_name]
    model = jbptt.readout(cell, output_size=out)
    params = model.init(jax.random.key(0), I, H)
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
    return model, params


W_TBPTT = truncation.tbptt(29, 6)
W_POLY = truncation.artbp(jax.random.key(3), 29, truncation.poly_tail(4.0))
W_CONST = truncation.artbp(jax.random.key(4), 29, 0.3)


@pytest.mark.parametrize(
    "cell_name, w",
    [
        ("elman", W_TBPTT),
        ("elman", W_CONST),
        ("lstm", W_POLY),
        ("flax_gru", W_POLY),
    ],
    ids=["elman-tbptt", "elman-artbp_constant", "lstm-artbp_poly", "flax-artbp_poly"],
)
def test_segment_gradients_sum_to_the_link_weight_estimator(cell_name, w):
    """With no updates, Σ_segments g_seg = ∇^{(w)} L over the whole sequence:
    online training implements exactly the estimator of its link weights
    (for ARTBP, Tallec & Ollivier's unbiased one)."""
    T, B = 29, 3
    model, params = _model(cell_name)
    xs = jax.random.normal(jax.random.key(1), (T, B, 2))
    ys = jax.random.normal(jax.random.key(2), (T, B, 2))
    hist = jbptt.train.train(
        model.cell,
        model.loss_fn,
        params,
        xs,
        ys,
        _accumulate(),
        w,
        buckets=jbptt.train.Buckets(min_bucket=32),
    )  # one bucket (the longest segment): one compilation
    h0 = model.cell.initial_state(params, (B,))
    (L, h_T), g = jbptt.value_and_grad(model.cell, model.loss_fn)(params, h0, xs, ys, w)
    assert _rel(_flat(hist.opt_state), _flat(g)) < 1e-10
    assert abs(float(np.sum(hist.loss * hist.length)) - float(L)) < 1e-10 * abs(L)
    assert _rel(_flat(hist.h), _flat(h_T)) < 1e-12  # the carried state is exact
    assert (
        int(hist.length.sum()) == T and len(hist.loss) == int(jnp.sum(w[1:] == 0)) + 1
    )


def _delay_task(T=1600, B=16, delay=3):
    xs = jax.random.normal(jax.random.key(1), (T, B, 1))
    ys = jnp.concatenate([jnp.zeros((delay, B, 1)), xs[:-delay]])  # y_t = x_{t−3}
    return xs, ys


def test_tbptt_learns_a_task_within_its_memory():
    """y_t = x_{t−3}, a memory of 3 ≤ k steps: online TBPTT(8) cuts the mean
    segment loss by at least 10× between the first and the last 20 updates
    (about 60× on this seed: from 0.28 to 0.0045)."""
    xs, ys = _delay_task()
    model = jbptt.readout(cells.elman("tanh"), output_size=1)
    params = model.init(jax.random.key(0), 1, 16)

    hist = jbptt.train.train(
        model.cell,
        model.loss_fn,
        params,
        xs,
        ys,
        optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2)),
        estimators.tbptt(8),
    )
    assert hist.loss[:20].mean() / hist.loss[-20:].mean() > 10.0


def test_artbp_compiles_once_per_bucket():
    xs, ys = _delay_task(T=400, B=2)
    model = jbptt.readout(cells.elman(), output_size=1)
    params = model.init(jax.random.key(0), 1, 4)
    traces = []

    def loss_fn(p, out, y):
        traces.append(1)  # runs once per trace of the step, never per call
        return model.loss_fn(p, out, y)

    hist = jbptt.train.train(
        model.cell,
        loss_fn,
        params,
        xs,
        ys,
        optax.sgd(1e-3),
        estimators.artbp(0.1),
        key=jax.random.key(0),
        buckets=jbptt.train.Buckets(min_bucket=4, max_buckets=6),
    )
    distinct = len(set(hist.length.tolist()))
    assert len(hist.length) > 25 and distinct > 10
    assert len(traces) == len(hist.buckets) == hist.compiles
    # The buckets are the estimator's (fixed by its law, not by this draw):
    # each segment ran in the smallest that holds it, or split at the top.
    ladder = estimators.artbp(0.1).online().buckets(4)
    assert set(hist.buckets) <= set(ladder) and len(ladder) < distinct
    for n in hist.length.tolist():
        fits = [b for b in ladder if b >= n]
        assert (fits and fits[0] in hist.buckets) or max(hist.buckets) == ladder[-1]


def test_resuming_equals_one_run():
    """Training on [0, T/2) then [T/2, T), carrying params, optimizer state and
    hidden state, is the same run as one call on [0, T)."""
    xs, ys = _delay_task(T=96, B=2)
    model = jbptt.readout(cells.lstm(), output_size=1)
    params = model.init(jax.random.key(0), 1, 4)
    opt = optax.adam(1e-2)
    args = (model.cell, model.loss_fn)
    one = jbptt.train.train(*args, params, xs, ys, opt, estimators.tbptt(8))
    a = jbptt.train.train(*args, params, xs[:48], ys[:48], opt, estimators.tbptt(8))
    b = jbptt.train.train(
        *args,
        a.params,
        xs[48:],
        ys[48:],
        opt,
        estimators.tbptt(8),
        h0=a.h,
        opt_state=a.opt_state,
    )
    assert _rel(_flat(b.params), _flat(one.params)) < 1e-12
    np.testing.assert_allclose(np.concatenate([a.loss, b.loss]), one.loss, rtol=1e-12)


_CLIPS = {"global_norm": optax.clip_by_global_norm, "value": optax.clip}


@pytest.mark.parametrize("mode", ["global_norm", "value"])
def test_clipping(mode):
    xs, ys = _delay_task(T=20, B=2)
    model = jbptt.readout(cells.elman(), output_size=1)
    params = model.init(jax.random.key(0), 1, 4)
    ys = 100.0 * ys  # large gradients
    clip = 1e-3
    hist = jbptt.train.train(
        model.cell,
        model.loss_fn,
        params,
        xs,
        ys,
        optax.chain(_CLIPS[mode](clip), optax.sgd(1.0)),
        estimators.full(),
    )
    step = _flat(hist.params) - _flat(params)  # one segment, one sgd step
    assert float(hist.grad_norm[0]) > 100 * clip  # the raw gradient is large
    if mode == "global_norm":
        assert float(jnp.linalg.norm(step)) == pytest.approx(clip, rel=1e-9)
    else:
        assert float(jnp.max(jnp.abs(step))) == pytest.approx(clip, rel=1e-9)
    # the deprecated keywords warn, naming optax.chain, and train the same
    with pytest.warns(DeprecationWarning, match=r"optax\.chain"):
        old = jbptt.train.train(
            model.cell, model.loss_fn, params, xs, ys, optax.sgd(1.0),
            estimators.full(), clip=clip, clip_mode=mode,
        )  # fmt: skip
    np.testing.assert_array_equal(_flat(old.params), _flat(hist.params))


def test_helpers():
    starts, lengths = jbptt.train.segments(jnp.array([1.0, 2.0, 0.0, 0.0, 1.5, 0.0]))
    assert starts.tolist() == [0, 2, 3, 5] and lengths.tolist() == [2, 1, 2, 1]
    with pytest.deprecated_call():
        bucket_length = jbptt.train.bucket_length
    assert [bucket_length(n, 8, 100) for n in (1, 8, 9, 64, 65, 100)] == [
        8,
        8,
        16,
        64,
        100,
        100,
    ]


def test_bad_inputs():
    xs, ys = _delay_task(T=10, B=2)
    model = jbptt.readout(cells.elman(), output_size=1)
    params = model.init(jax.random.key(0), 1, 4)

    def run(**kw):
        args = dict(optimizer=optax.sgd(0.1), estimator=estimators.tbptt(3))
        args.update(kw)
        return jbptt.train.train(
            model.cell,
            model.loss_fn,
            params,
            kw.pop("xs", xs),
            kw.pop("ys", ys),
            args["optimizer"],
            args["estimator"],
            **{k: v for k, v in kw.items() if k not in ("optimizer", "estimator")},
        )

    with pytest.raises(TypeError, match="optax.GradientTransformation"):
        run(optimizer=lambda g: g)
    with pytest.raises(ValueError, match="Unknown clip_mode"):
        run(clip=1.0, clip_mode="norm")
    with pytest.raises(ValueError, match="clip must be a positive number"):
        run(clip=-1.0)
    with pytest.raises(ValueError, match="overlapping"):
        run(estimator=estimators.williams_peng(2, 4))
    with pytest.raises(ValueError, match="is random: pass key"):
        run(estimator=estimators.artbp(0.2))
    with pytest.raises(ValueError, match=r"shape \(T,\) = \(10,\)"):
        run(estimator=truncation.full(9))
    with pytest.raises(TypeError, match="Estimator or link weights"):
        run(estimator="tbptt")
    with pytest.raises(ValueError, match="length T = 10"):
        run(ys=ys[:9])
    with pytest.raises(ValueError, match="min_bucket"):
        run(min_bucket=0)
    with pytest.raises(TypeError, match="cell must be a jbptt Cell"):
        jbptt.train.train(
            model, model.loss_fn, params, xs, ys, optax.sgd(0.1), estimators.tbptt(3)
        )


def test_nonfinite_learning_rate_or_link_weights_never_reach_the_params():
    """A NaN learning rate gives finite gradients but NaN params: under "skip"
    no such update is applied; NaN link weights are refused up front."""
    xs, ys = _delay_task(T=16, B=2)
    model = jbptt.readout(cells.elman(), output_size=1)
    params = model.init(jax.random.key(0), 1, 4)
    hist = jbptt.train.train(
        model.cell,
        model.loss_fn,
        params,
        xs,
        ys,
        optax.sgd(float("nan")),
        estimators.tbptt(8),
        on_nonfinite="skip",
    )
    assert len(hist.divergences) == 2
    assert "params" in hist.divergences[0].message()
    assert _rel(_flat(hist.params), _flat(params)) == 0.0
    w = truncation.tbptt(16, 8).at[3].set(jnp.nan)
    with pytest.raises(ValueError, match=r"finite and ≥ 0, got w\[3\]"):
        jbptt.train.train(model.cell, model.loss_fn, params, xs, ys, optax.sgd(0.1), w)


@pytest.mark.parametrize(
    "adjoint",
    [
        jbptt.ReverseScan(checkpoint="sqrt"),
        jbptt.Budget(max_states=2),
        jbptt.Autodiff(),
    ],
    ids=["sqrt", "budget", "autodiff"],
)
def test_trainer_takes_the_reverse_pass_strategy(adjoint):
    """Trainer(adjoint=) runs each segment's reverse pass by the strategy:
    the same training as the default, including segments split into blocks
    (ARTBP with a capped top bucket) and resets."""
    T, B = 40, 2
    model, params = _model("lstm")
    xs = jax.random.normal(jax.random.key(1), (T, B, 2))
    ys = jax.random.normal(jax.random.key(2), (T, B, 2))
    resets = jnp.zeros((T, B), bool).at[17, 1].set(True)
    opt = optax.sgd(0.05)
    buckets = jbptt.train.Buckets(top=8)
    for est in (estimators.tbptt(6), estimators.artbp(0.15)):
        runs = []
        for adj in (None, adjoint):
            tr = jbptt.train.Trainer(
                model.cell, model.loss_fn, opt, est, buckets=buckets, adjoint=adj
            )
            state = tr.init(params, jax.random.key(5))
            state, hist = tr.run(state, xs, ys, resets=resets)
            runs.append((_flat(state.params), np.asarray(hist.loss)))
        (p0, l0), (p1, l1) = runs
        assert _rel(p1, p0) < 1e-10
        np.testing.assert_allclose(l1, l0, rtol=1e-10)


def test_trainer_refuses_a_strategy_for_forward_mode():
    model, params = _model("elman")
    with pytest.raises(ValueError, match="adjoint: the online rule of estimator"):
        jbptt.train.Trainer(
            model.cell,
            model.loss_fn,
            optax.sgd(0.1),
            jbptt.forward_mode.rtrl(),
            adjoint=jbptt.Budget(max_states=2),
        )
    with pytest.raises(TypeError, match="adjoint must be a reverse-pass strategy"):
        jbptt.train.Trainer(
            model.cell, model.loss_fn, optax.sgd(0.1), estimators.tbptt(4), adjoint=3
        )


def test_progress_bar_bad_input(monkeypatch):
    with pytest.raises(ValueError, match="total"):
        jbptt.train.progress_bar(0)
    monkeypatch.setitem(__import__("sys").modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match="pip install tqdm"):
        jbptt.train.progress_bar(16)
