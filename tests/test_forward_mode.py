"""Forward-mode estimators: RTRL is exact, UORO unbiased, SnAp-1 exact only on
(block-)diagonal recurrences; costs, size limit, online training, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jbptt
from jbptt import cells, forward_mode
from jbptt._src.forward_mode import online_samples
from jbptt._src.forward_mode_train import train as online_train

tree_map = jax.tree_util.tree_map
T, I, H = 6, 2, 3


def _flat(tree):
    return jax.flatten_util.ravel_pytree(tree)[0]


def _problem(cell_fn, batch=(2,), seed=0):
    model = jbptt.readout(cell_fn(), output_size=2)
    params = model.init(jax.random.key(seed), I, H)
    h0 = model.cell.initial_state(params, batch)
    k1, k2 = jax.random.split(jax.random.key(seed + 1))
    xs = jax.random.normal(k1, (T,) + batch + (I,))
    ys = jax.random.normal(k2, (T,) + batch + (2,))
    return model, params, h0, xs, ys


def _estimate(est, model, params, h0, xs, ys, key=None):
    key = jax.random.key(0) if key is None else key
    fn = lambda k, p: est.estimate(k, model.cell, model.loss_fn, p, h0, xs, ys)
    return jax.jit(fn)(key, params)


def _bptt(model, params, h0, xs, ys):
    return jbptt.value_and_grad(model.cell, model.loss_fn)(params, h0, xs, ys)


def _rel_err(a, b):
    a, b = _flat(a), _flat(b)
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


@pytest.mark.parametrize(
    "cell_fn, batch",
    [(cells.elman, (2,)), (cells.lstm, (2,)), (cells.gru, (2,))],
)
def test_rtrl_equals_full_bptt(cell_fn, batch):
    model, params, h0, xs, ys = _problem(cell_fn, batch)
    (L, h_T), g = _estimate(forward_mode.rtrl(), model, params, h0, xs, ys)
    (L_ref, h_ref), g_ref = _bptt(model, params, h0, xs, ys)
    assert _rel_err(g, g_ref) <= 1e-10
    assert abs(float(L - L_ref)) <= 1e-12
    assert _rel_err(h_T, h_ref) <= 1e-12


def test_rtrl_generic_cell_with_pytree_state():
    # A from_fn cell whose state is a dict of two arrays; params nested.
    def init(key, i, h):
        k1, k2 = jax.random.split(key)
        return {
            "rec": {"A": 0.4 * jax.random.normal(k1, (h, h))},
            "B": jax.random.normal(k2, (h, i)),
        }

    def step(p, s, x):
        a = jnp.tanh(s["a"] @ p["rec"]["A"].T + x @ p["B"].T)
        b = 0.5 * s["b"] + a * a
        return {"a": a, "b": b}, a + b

    cell = cells.from_fn(
        init,
        step,
        lambda p, bs=(): {"a": jnp.zeros(bs + (H,)), "b": jnp.zeros(bs + (H,))},
    )
    params = cell.init(jax.random.key(0), I, H)
    xs = jax.random.normal(jax.random.key(1), (T, I))
    ys = jax.random.normal(jax.random.key(2), (T, H))
    loss_fn = lambda p, out, y: 0.5 * jnp.sum((out - y) ** 2)
    h0 = cell.initial_state(params)
    _, g = forward_mode.rtrl().estimate(
        jax.random.key(0), cell, loss_fn, params, h0, xs, ys
    )
    ref = jax.grad(lambda p: jbptt.loss(cell, loss_fn)(p, h0, xs, ys)[0])(params)
    assert _rel_err(g, ref) <= 1e-10


def _uoro_samples(model, params, h0, xs, ys, n, seed):
    est = forward_mode.uoro()
    keys = jax.random.split(jax.random.key(seed), n)
    fn = lambda k: _flat(
        est.estimate(k, model.cell, model.loss_fn, params, h0, xs, ys)[1]
    )
    return np.asarray(jax.jit(jax.vmap(fn))(keys))


def test_uoro_is_unbiased_at_the_root_n_rate():
    model, params, h0, xs, ys = _problem(cells.elman, batch=())
    g = np.asarray(_flat(_estimate(forward_mode.rtrl(), model, params, h0, xs, ys)[1]))
    samples = _uoro_samples(model, params, h0, xs, ys, 4096, seed=0)  # [N, P]
    mean, std = samples.mean(0), samples.std(0, ddof=1)
    random = std > 1e-12  # readout params get exact gradients (no influence)
    n_cell = _flat(params["cell"]).size
    assert random.sum() == n_cell  # the cell's params are estimated, not exact
    np.testing.assert_allclose(mean[~random], g[~random], rtol=1e-10, atol=1e-12)
    # Per-coordinate z-scores of the mean against the RTRL gradient.
    z = np.abs(mean - g)[random] / (std[random] / np.sqrt(len(samples)))
    assert z.max() < 5.0  # P(|z| > 5) ~ 6e-7 per coordinate if unbiased
    # The same test rejects a biased gradient: SnAp-1's differs detectably.
    g_snap = np.asarray(
        _flat(_estimate(forward_mode.snap1(), model, params, h0, xs, ys)[1])
    )
    z_snap = np.abs(mean - g_snap)[random] / (std[random] / np.sqrt(len(samples)))
    assert z_snap.max() > 10.0
    # 1/√N rate: the squared error of a mean of n draws, averaged over
    # disjoint groups, is tr(Σ)/n: 16x smaller from n = 16 to n = 256.
    trace = (std**2).sum()
    mse = {}
    for n in (16, 64, 256):
        groups = samples.reshape(-1, n, samples.shape[1]).mean(1)
        mse[n] = ((groups - g) ** 2).sum(1).mean()
        assert 0.5 < mse[n] / (trace / n) < 2.0
    assert 8.0 < mse[16] / mse[256] < 32.0


def test_uoro_vmap_over_keys_matches_single_calls():
    model, params, h0, xs, ys = _problem(cells.elman, batch=(2,))
    # online_samples: a vmap over split keys, in chunks (3 = 2 + 1 padded).
    samples = online_samples(
        forward_mode.uoro(),
        model.cell,
        model.loss_fn,
        params,
        h0,
        xs,
        ys,
        jax.random.key(7),
        3,
        chunk=2,
    )
    keys = jax.random.split(jax.random.key(7), 3)
    one = _flat(_estimate(forward_mode.uoro(), model, params, h0, xs, ys, keys[2])[1])
    np.testing.assert_allclose(samples[2], one, rtol=1e-12, atol=1e-14)
    assert not np.allclose(samples[0], samples[1])


def _diagonal_recurrence(cell_fn, params):
    p = dict(params["cell"])
    if cell_fn is cells.elman:
        p["W"] = jnp.diag(jnp.array([0.9, -0.5, 0.3]))
    else:  # every gate's H×H block of weight_hh diagonal
        G = p["weight_hh"].shape[0] // H
        blocks = [jnp.diag(0.8 * jnp.cos(jnp.arange(H) + g)) for g in range(G)]
        p["weight_hh"] = jnp.concatenate(blocks, 0)
    return {**params, "cell": p}


def _estimate_both(est, model, params_a, params_b, h0, xs, ys):
    """Estimates at two params with one compilation (vmapped)."""
    stacked = tree_map(lambda a, b: jnp.stack([a, b]), params_a, params_b)
    fn = lambda p: est.estimate(
        jax.random.key(0), model.cell, model.loss_fn, p, h0, xs, ys
    )[1]
    g = jax.jit(jax.vmap(fn))(stacked)
    return tree_map(lambda a: a[0], g), tree_map(lambda a: a[1], g)


@pytest.mark.parametrize("cell_fn", [cells.elman, cells.gru, cells.lstm])
def test_snap1_exact_for_diagonal_recurrence_and_biased_otherwise(cell_fn):
    model, params, h0, xs, ys = _problem(cell_fn, batch=(2,))
    diag = _diagonal_recurrence(cell_fn, params)
    snap_diag, snap = _estimate_both(
        forward_mode.snap1(), model, diag, params, h0, xs, ys
    )
    rtrl_diag, rtrl = _estimate_both(
        forward_mode.rtrl(), model, diag, params, h0, xs, ys
    )
    if cell_fn is cells.lstm:
        # A diagonal weight_hh makes D_t block-diagonal over units (c_j, h_j),
        # so the i, f, g gates' params, which touch c_j and h_j, are exact.
        # The o gate touches only h_j in one step but c_j two steps later
        # (through h_{t-1}): SnAp-1 drops that, SnAp-2 would keep it.
        ifg = lambda g: tree_map(lambda a: a[: 3 * H], g["cell"])
        o = lambda g: tree_map(lambda a: a[3 * H :], g["cell"])
        assert _rel_err(ifg(snap_diag), ifg(rtrl_diag)) <= 1e-10
        assert _rel_err(o(snap_diag), o(rtrl_diag)) > 1e-3
    else:
        assert _rel_err(snap_diag, rtrl_diag) <= 1e-10
    # With a dense recurrent matrix the truncated influence is biased...
    assert _rel_err(snap["cell"], rtrl["cell"]) > 1e-3
    # ...but still exact for params outside the recurrence (the readout).
    assert _rel_err(snap["readout"], rtrl["readout"]) <= 1e-10


def test_sparsity_pattern_and_costs():
    cell = cells.lstm()
    params = cell.init(jax.random.key(0), I, H)
    h0 = cell.initial_state(params, (2,))
    x = jnp.ones((2, I))
    M = forward_mode.sparsity_pattern(cell, params, h0, x)
    S, P = 2 * H, _flat(params).size
    assert M.shape == (S, P)
    # In one step a parameter of unit j's i, f or g gate touches c_j and h_j;
    # one of its o gate touches h_j only (params sorted: bias_hh, bias_ih,
    # weight_hh, weight_ih; rows of each: gates i, f, g, o).
    per_param = tree_map(lambda a: np.zeros(a.shape, int), params)
    unravel = jax.flatten_util.ravel_pytree(per_param)[1]
    counts = unravel(jnp.asarray(M.sum(0)))
    for name, a in counts.items():
        assert (a[: 3 * H] == 2).all() and (a[3 * H :] == 1).all(), name
    assert (M[:H] <= M[H:]).all()  # whatever touches c_j touches h_j
    costs = {
        e.name: e.footprint(cell, params, h0, x)
        for e in (forward_mode.rtrl(), forward_mode.uoro(), forward_mode.snap1())
    }
    assert costs["rtrl"].state_bytes == 2 * S * P * 8  # B·S·P float64
    assert costs["uoro"].state_bytes == 2 * (S + P) * 8
    assert costs["snap1"].state_bytes == 2 * 2 * P * 8  # k = 2
    # F_t on the pattern from 2 VJPs (rows c, rows h), D_t dense, k×k blocks.
    assert costs["snap1"].work_bytes == 2 * (2 * P + S * S + 4 * P) * 8
    total = {n: c.state_bytes + c.work_bytes for n, c in costs.items()}
    assert total["uoro"] < total["snap1"] < total["rtrl"]
    assert costs["rtrl"].flops_per_step > costs["snap1"].flops_per_step
    assert costs["rtrl"].flops_per_step > costs["uoro"].flops_per_step > 0


def test_rtrl_refuses_sizes_above_the_limit():
    model, params, h0, xs, ys = _problem(cells.elman, batch=(2,))
    est = forward_mode.rtrl(max_bytes=2000)
    S, P = H, _flat(params).size
    with pytest.raises(ValueError, match=f"{2 * S * P * 8:,} carried") as err:
        est.estimate(jax.random.key(0), model.cell, model.loss_fn, params, h0, xs, ys)
    assert "max_bytes=2,000" in str(err.value)
    with pytest.raises(ValueError, match="max_bytes"):
        est.init(model.cell, params, h0, xs[0])
    # SnAp-1's and UORO's O(P) states fit where RTRL's O(S·P) does not.
    for small in (
        forward_mode.snap1(max_bytes=2000),
        forward_mode.uoro(max_bytes=2000),
    ):
        small.init(model.cell, params, h0, xs[0])


@pytest.mark.parametrize("name", ["rtrl", "snap1", "uoro"])
def test_online_training_reduces_loss_on_short_memory_task(name):
    # y_t = x_{t-1}: needs one step of memory; a memoryless predictor
    # (ŷ = 0) has loss ½·E[x²] = 0.5 per step.
    steps, B = 400, 4
    model = jbptt.readout(cells.elman(), output_size=1)
    params = model.init(jax.random.key(0), 1, 4)
    xs = jax.random.normal(jax.random.key(1), (steps, B, 1))
    ys = jnp.concatenate([jnp.zeros((1, B, 1)), xs[:-1]])
    est = getattr(forward_mode, name)()
    hist = online_train(
        model.cell,
        model.loss_fn,
        params,
        xs,
        ys,
        optax.adam(2e-2),
        est,
        key=jax.random.key(2),
    )
    first, last = hist.loss[:40].mean(), hist.loss[-40:].mean()
    assert last < first / 4  # loss reduced at least 4x
    assert last < 0.1  # and far below the memoryless 0.5


def test_train_update_every_and_resume():
    model = jbptt.readout(cells.elman(), output_size=1)
    params = model.init(jax.random.key(0), 1, 3)
    xs = jax.random.normal(jax.random.key(1), (8, 1))
    est, opt = forward_mode.rtrl(), optax.sgd(0.0)
    train = lambda p, xs, **kw: online_train(
        model.cell, model.loss_fn, p, xs, xs, opt, est, update_every=2, **kw
    )
    # Two halves, the second resuming the first's state (one compilation).
    a = train(params, xs[:4])
    b = train(a.params, xs[4:], state=a.state, opt_state=a.opt_state)
    # lr 0: params unchanged, and the losses are those of one forward pass.
    L, h_T = jbptt.loss(model.cell, model.loss_fn)(
        params, model.cell.initial_state(params), xs, xs
    )
    np.testing.assert_allclose(a.loss.sum() + b.loss.sum(), L, rtol=1e-12)
    np.testing.assert_allclose(b.state.h, h_T, rtol=1e-12)
    assert _rel_err(b.params, params) == 0.0
    # clip: sgd(1) with a clip c moves params by a step of norm ≤ c.
    clipped = online_train(
        model.cell,
        model.loss_fn,
        params,
        xs[:4],
        xs[:4],
        optax.sgd(1.0),
        est,
        update_every=4,
        clip=1e-3,
    )
    step = _flat(clipped.params) - _flat(params)
    np.testing.assert_allclose(jnp.linalg.norm(step), 1e-3, rtol=1e-9)
    assert clipped.grad_norm.shape == (1,) and clipped.grad_norm[0] > 1e-3
    assert a.grad_norm.shape == (2,)


def test_jbptt_train_dispatches_forward_mode_estimators():
    model = jbptt.readout(cells.elman(), output_size=1)
    params = model.init(jax.random.key(0), 1, 3)
    xs = jax.random.normal(jax.random.key(1), (8, 1))
    est, opt = forward_mode.snap1(), optax.sgd(0.1)
    ref = online_train(model.cell, model.loss_fn, params, xs, xs, opt, est)
    hist = jbptt.train.train(model.cell, model.loss_fn, params, xs, xs, opt, est)
    np.testing.assert_allclose(hist.loss, ref.loss, rtol=1e-12)
    np.testing.assert_allclose(hist.grad_norm, ref.grad_norm, rtol=1e-12)
    assert _rel_err(hist.params, ref.params) <= 1e-12
    assert hist.length.tolist() == [1] * 8 and hist.start.tolist() == list(range(8))


def test_bad_inputs():
    model, params, h0, xs, ys = _problem(cells.elman, batch=(2,))
    key = jax.random.key(0)
    est = forward_mode.rtrl()
    with pytest.raises(ValueError, match="max_bytes"):
        forward_mode.rtrl(max_bytes=0)
    with pytest.raises(ValueError, match="eps"):
        forward_mode.uoro(eps=-1.0)
    with pytest.raises(TypeError, match="cell must be a jbptt Cell"):
        est.estimate(key, "elman", model.loss_fn, params, h0, xs, ys)
    with pytest.raises(ValueError, match="feature size"):
        est.estimate(key, model.cell, model.loss_fn, params, h0, xs[..., :1], ys)
    with pytest.raises(ValueError, match="h0"):
        est.estimate(key, model.cell, model.loss_fn, params, h0[0], xs, ys)
    with pytest.raises(ValueError, match="ys must be time-major"):
        est.estimate(key, model.cell, model.loss_fn, params, h0, xs, ys[:-1])
    with pytest.raises(ValueError, match="x .one step's input"):
        est.init(model.cell, params, h0, jnp.float64(1.0))
    int_params = tree_map(lambda a: a.astype(jnp.int32), params)
    with pytest.raises(TypeError, match="floating"):
        est.init(model.cell, int_params, h0, xs[0])
    with pytest.raises(TypeError, match="OnlineEstimator"):
        online_train(model.cell, model.loss_fn, params, xs, ys, optax.sgd(0.1), "rtrl")
    with pytest.raises(ValueError, match="pass key"):
        online_train(
            model.cell,
            model.loss_fn,
            params,
            xs,
            ys,
            optax.sgd(0.1),
            forward_mode.uoro(),
        )
    with pytest.raises(ValueError, match="update_every"):
        online_train(
            model.cell,
            model.loss_fn,
            params,
            xs,
            ys,
            optax.sgd(0.1),
            est,
            update_every=4,
        )
    with pytest.raises(ValueError, match="n must be a positive int"):
        online_samples(est, model.cell, model.loss_fn, params, h0, xs, ys, key, 0)
    with pytest.raises(TypeError, match="OnlineEstimator"):
        online_samples("uoro", model.cell, model.loss_fn, params, h0, xs, ys, key, 2)
    with pytest.raises(ValueError, match="clip"):
        online_train(
            model.cell, model.loss_fn, params, xs, ys, optax.sgd(0.1), est, clip=-1.0
        )
    with pytest.raises(TypeError, match="optimizer"):
        online_train(model.cell, model.loss_fn, params, xs, ys, None, est)


def test_bias_sweep_forward_mode_flag():
    from experiments import bias_sweep

    args = bias_sweep.parse_args(["--quick", "--forward-mode"])
    specs = bias_sweep.make_estimators(args.ks, args.T, args.forward_mode)
    fm = [(fam, k, e) for fam, k, e in specs if fam in bias_sweep.FORWARD]
    assert [fam for fam, _, _ in fm] == ["rtrl", "snap1", "uoro"]
    assert all(k == args.T and e.name == fam for fam, k, e in fm)
    assert all(isinstance(e, forward_mode.OnlineEstimator) for _, _, e in fm)
    plain = bias_sweep.parse_args(["--quick"])
    specs = bias_sweep.make_estimators(plain.ks, plain.T, plain.forward_mode)
    assert not any(fam in bias_sweep.FORWARD for fam, _, _ in specs)


def test_every_n_steps_plans_n_step_segments_and_checks_n():
    """est.every(n): segments of n steps (a shorter last one), the same
    estimator otherwise; n is checked by name."""
    est = forward_mode.rtrl().every(4)
    lengths, _ = est.online().plan(None, 10)
    assert lengths.tolist() == [4, 4, 2]
    assert est.name == forward_mode.rtrl().name and est.hparams["update_every"] == 4
    for bad in (0, -1, 2.5, float("nan")):
        with pytest.raises((TypeError, ValueError), match="n must be"):
            forward_mode.uoro().every(bad)
