"""Bad input, class by class: every numeric hyperparameter of every public
factory, token ids and class labels, host-level data checks, and adapted
cells whose state or keys are wrong."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jbptt
from jbptt import adaptive, cells, checks, estimators, forward_mode, sweep, truncation
from jbptt._src.adaptive import ParamLags

NORMS = 0.5 ** np.arange(8.0)
LAGS = ParamLags(np.tile(NORMS, (10, 1)), np.ones(3))

# factory, positional args, valid keyword values of its numeric parameters,
# and the parameters for which a negative int is a valid value.
FACTORIES = [
    (estimators.tbptt, (), {"k": 3}, ()),
    (estimators.williams_peng, (), {"k1": 2, "k2": 4}, ()),
    (estimators.artbp, (), {"c": 0.5}, ()),
    (estimators.artbp_matched, (), {"depth": 4.0, "alpha": 4.0, "T": 8}, ()),
    (estimators.es, (), {"sigma": 0.5, "pairs": 3}, ()),
    (estimators.truncated_es, (), {"sigma": 0.5, "pairs": 3, "K": 3}, ()),
    (estimators.pes, (), {"sigma": 0.5, "pairs": 3, "K": 3, "horizon": 8}, ()),
    (estimators.nres, (), {"sigma": 0.5, "pairs": 3, "K": 3, "horizon": 8}, ()),
    (
        estimators.adaptive_tbptt,
        (),
        {"delta": 0.5, "max_lag": 3, "every": 3, "k0": 3, "tau0": 3},
        (),
    ),
    (truncation.full, (), {"T": 3}, ()),
    (truncation.tbptt, (), {"T": 6, "k": 3, "offset": 3}, ("offset",)),
    (truncation.artbp, (jax.random.key(0),), {"T": 3, "c": 0.5}, ()),
    (truncation.enumerate_artbp, (), {"T": 3, "c": 0.5}, ()),
    (truncation.geometric, (), {"mean_length": 3.0}, ()),
    (truncation.poly_tail, (), {"mean_length": 3.0, "alpha": 4.0}, ()),
    (forward_mode.rtrl, (), {"max_bytes": 3, "window": 3}, ()),
    (forward_mode.snap1, (), {"max_bytes": 3}, ()),
    (forward_mode.uoro, (), {"eps": 0.5, "max_bytes": 3}, ()),
    (
        forward_mode.layerwise_rtrl,
        ([cells.min_gru()],),
        {"max_bytes": 3, "window": 3},
        (),
    ),
    (adaptive.choose_k, (NORMS,), {"delta": 0.5, "tau0": 3, "k_max": 5}, ()),
    (adaptive.fit_decay, (NORMS,), {"tau0": 3}, ()),
    (adaptive.choose_tbptt_k, (LAGS,), {"delta": 0.5, "tau0": 3}, ()),
    (adaptive.tbptt_bias_bounds, (LAGS,), {"tau0": 3}, ()),
]

# Public functions of these modules that have no numeric hyperparameter to
# loop over (or take arrays): each is checked elsewhere.
NOT_FACTORIES = {
    "full",  # estimators.full() has no argument
    "estimate",
    "gradient_fn",
    "log_prob",
    "sparsity_pattern",
    "param_lag_norms",  # a cell and a loss first; max_lag below
    "bias_bound",  # k is an array of lengths
}

CASES = [
    (f, args, kw, param, negative_ok)
    for f, args, kw, negative_ok in FACTORIES
    for param in kw
]
IDS = [f"{f.__module__.split('.')[-1]}.{f.__name__}-{p}" for f, _, _, p, _ in CASES]


def test_every_public_factory_is_in_the_loop():
    covered = {(f.__module__, f.__name__) for f, *_ in FACTORIES}
    for mod in (estimators, truncation, forward_mode, adaptive):
        for name, f in vars(mod).items():
            if name.startswith("_") or not inspect.isfunction(f):
                continue
            if name in NOT_FACTORIES and not (name == "full" and mod is truncation):
                continue
            assert (f.__module__, f.__name__) in covered, f"{mod.__name__}.{name}"


@pytest.mark.parametrize("f, args, kw, param, negative_ok", CASES, ids=IDS)
def test_numeric_hyperparameters_refuse_nonsense_by_name(
    f, args, kw, param, negative_ok
):
    f(*args, **kw)  # the valid call works
    bad = [float("nan"), float("inf"), float("-inf"), "a", True]
    if param not in negative_ok:
        bad.append(-5)
    if isinstance(kw[param], int):
        bad.append(2.5)
    for value in bad:
        with pytest.raises((TypeError, ValueError)) as info:
            f(*args, **{**kw, param: value})
        assert param in str(info.value), (value, str(info.value))


@pytest.mark.parametrize("f, args, kw, param, negative_ok", CASES, ids=IDS)
def test_numpy_scalars_are_accepted_like_python_numbers(
    f, args, kw, param, negative_ok
):
    v = kw[param]
    as_numpy = np.int64(v) if isinstance(v, int) else np.float32(v)
    got = f(*args, **{**kw, param: as_numpy})
    want = f(*args, **kw)
    if hasattr(want, "name"):  # estimators: same name, same hyperparameters
        assert got.name == want.name
    elif isinstance(want, jax.Array | np.ndarray | tuple):
        for a, b in zip(
            jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True
        ):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    elif callable(want):  # schedules: the same function of the depth
        d = jnp.arange(1.0, 6.0)
        np.testing.assert_allclose(got(d), want(d), rtol=1e-6)
    else:
        assert got == want


@pytest.mark.parametrize(
    "est",
    [estimators.full(), estimators.tbptt(4), estimators.artbp(0.2),
     estimators.williams_peng(2, 4)],
    ids=repr,
)  # fmt: skip
def test_expected_depth_checks_the_sequence_length(est):
    assert est.expected_depth(np.int64(10)) == est.expected_depth(10)
    for bad in (float("nan"), 0, -3, 2.5):
        with pytest.raises((TypeError, ValueError), match="T must be"):
            est.expected_depth(bad)


def test_param_lag_norms_checks_max_lag():
    model = jbptt.readout(cells.elman(), 1)
    assert adaptive.param_lag_norms(model.cell, model.loss_fn, np.int64(3))
    for value in (float("nan"), -5, "a", True, 2.5):
        with pytest.raises((TypeError, ValueError), match="max_lag"):
            adaptive.param_lag_norms(model.cell, model.loss_fn, value)


def test_adaptive_tbptt_checks_tau0_at_construction():
    with pytest.raises(TypeError, match="tau0 must be None or an int ≥ 0, got str"):
        estimators.adaptive_tbptt(0.1, tau0="a")
    with pytest.raises(ValueError, match="tau0 must be None or an int ≥ 0, got -5"):
        estimators.adaptive_tbptt(0.1, tau0=-5)
    with pytest.raises(ValueError, match="tau0 must be None or an int ≥ 0, got 2.5"):
        estimators.adaptive_tbptt(0.1, tau0=2.5)
    est = estimators.adaptive_tbptt(np.float64(0.1), max_lag=np.int64(6), tau0=2)
    assert est.tau0 == 2 and type(est.max_lag) is int


# ------------------------------------------------- token ids and labels ---

V, C = 5, 3  # vocabulary and classes


def _token_model():
    model = jbptt.readout(cells.gru(), C, "xent", vocab_size=V)
    params = model.init(jax.random.key(0), 4, 6)
    return model, params, model.cell.initial_state(params, (2,))


def _loss_and_grad(tokens, labels):
    model, params, h0 = _token_model()
    fn = jax.jit(jbptt.value_and_grad(model.cell, model.loss_fn))
    (loss, _), grads = fn(params, h0, tokens, labels)
    flat = jnp.concatenate([jnp.ravel(g) for g in jax.tree_util.tree_leaves(grads)])
    return loss, flat


TOKENS = jnp.array([[0, 1], [2, 3], [4, 0]])
LABELS = jnp.array([[0, 1], [2, 0], [1, 2]])


@pytest.mark.parametrize(
    "tokens, labels",
    [
        (TOKENS.at[1, 0].set(V), LABELS),  # id = vocab_size
        (TOKENS.at[1, 0].set(-1), LABELS),  # would read the last row
        (TOKENS, LABELS.at[2, 1].set(C)),  # label = number of classes
        (TOKENS, LABELS.at[2, 1].set(-1)),  # would mean the last class
    ],
    ids=["id=V", "id=-1", "label=C", "label=-1"],
)
def test_out_of_range_ids_under_jit_give_nan_never_another_row(tokens, labels):
    loss, grads = _loss_and_grad(TOKENS, LABELS)
    assert np.isfinite(loss) and np.all(np.isfinite(grads))
    loss, grads = _loss_and_grad(tokens, labels)
    assert np.isnan(loss) and np.isnan(grads).any()


def test_float_ids_that_are_not_whole_give_nan():
    model, params, h0 = _token_model()
    fn = jbptt.loss(model.cell, model.loss_fn)
    xs = model.encode(TOKENS, jnp.float64)
    assert np.isfinite(fn(params, h0, xs, LABELS)[0])
    assert np.isnan(fn(params, h0, xs.at[0, 0, 0].set(1.7), LABELS)[0])


def test_check_tokens_names_the_argument_and_the_first_bad_id():
    checks.check_tokens(TOKENS, V)
    checks.check_tokens(np.asarray(TOKENS), np.int64(V))
    with pytest.raises(ValueError, match=r"xs must hold token ids in \[0, 5\), got "):
        checks.check_tokens(TOKENS.at[2, 1].set(V), V)
    with pytest.raises(ValueError, match=r"xs\[1, 0\] = -1 \(1 of 6 entries"):
        checks.check_tokens(TOKENS.at[1, 0].set(-1), V)
    with pytest.raises(TypeError, match="ys must hold integer token ids or class"):
        checks.check_tokens(jnp.array([1.7, 0.0]), V, "ys")
    with pytest.raises(TypeError, match="on concrete arrays outside jit"):
        jax.jit(lambda t: checks.check_tokens(t, V))(TOKENS)
    with pytest.raises(ValueError, match="vocab_size must be a positive int"):
        checks.check_tokens(TOKENS, 0)


def test_encode_checks_concrete_ids():
    model, _, _ = _token_model()
    with pytest.raises(ValueError, match=r"tokens must hold token ids in \[0, 5\)"):
        model.encode(TOKENS.at[0, 0].set(-1))
    with pytest.raises(TypeError, match="tokens must be integer ids in"):
        model.encode(jnp.full((2, 2), 1.7))
    out = jax.jit(model.encode)(TOKENS.at[0, 0].set(7))  # traced: not inspected
    assert out.shape == (3, 2, 1)


def test_xent_refuses_float_targets_naming_ys():
    model, params, h0 = _token_model()
    fn = jbptt.value_and_grad(model.cell, model.loss_fn)
    with pytest.raises(TypeError, match="ys must hold integer class labels"):
        fn(params, h0, TOKENS, LABELS.astype(jnp.float64))
    plain = jbptt.readout(cells.elman(), 3, "xent")
    with pytest.raises(TypeError, match="ys must hold integer class labels"):
        plain.loss_fn(
            plain.init(jax.random.key(0), 2, 4), jnp.ones((2, 4)), jnp.ones(2)
        )


def test_readout_takes_numpy_sizes_and_checks_its_key():
    model = jbptt.readout(
        cells.elman(), np.int64(2), vocab_size=np.int64(4), hidden=(np.int64(3),)
    )
    params = model.init(jax.random.PRNGKey(0), 2, 3)
    assert params["readout"]["V"].shape == (2, 3) and params["embed"].shape == (4, 2)
    with pytest.raises(TypeError, match=r"key must be a PRNG key \(jax.random.key"):
        model.init(0, 2, 3)
    for bad in (True, 2.5, float("nan")):
        with pytest.raises(ValueError, match="vocab_size must be None or a positive"):
            jbptt.readout(cells.elman(), 2, vocab_size=bad)
        with pytest.raises(ValueError, match="output_size must be a positive int"):
            jbptt.readout(cells.elman(), bad)


# ------------------------------------------------ host-level data checks ---


def _problem(xs=None, ys=None):
    model = jbptt.readout(cells.elman(), 1)
    params = model.init(jax.random.key(0), 2, 4)
    h0 = model.cell.initial_state(params, (3,))
    xs = jnp.ones((5, 3, 2)) if xs is None else xs
    ys = jnp.zeros((5, 3, 1)) if ys is None else ys
    return estimators.Problem(model.cell, model.loss_fn, params, h0, xs, ys)


def test_sweep_and_sample_estimates_refuse_nonfinite_data_by_name():
    key = jax.random.key(0)
    bad_xs = _problem(xs=jnp.ones((5, 3, 2)).at[1, 2, 0].set(jnp.nan))
    with pytest.raises(ValueError, match=r"problem.xs contains non-finite values"):
        sweep.sweep(bad_xs, [estimators.full()], key)
    bad_ys = _problem(ys=jnp.zeros((5, 3, 1)).at[4, 0, 0].set(jnp.inf))
    with pytest.raises(ValueError, match=r"problem.ys\[4, 0, 0\] = inf"):
        sweep.sample_estimates(bad_ys, estimators.tbptt(2), key, 4)
    p = bad_xs
    run = sweep.make_sweep(p.cell, p.loss_fn, [estimators.full()], 4)
    with pytest.raises(ValueError, match=r"xs contains non-finite values: xs\[1, 2"):
        run(p.params, p.h0, p.xs, p.ys, key)
    ok = _problem()
    g, _ = run(ok.params, ok.h0, ok.xs, ok.ys, key)
    assert np.all(np.isfinite(g))


def test_sweep_refuses_token_ids_and_labels_out_of_range():
    model, params, h0 = _token_model()
    xs = model.encode(TOKENS, jnp.float64)

    def prob(xs, ys):
        return estimators.Problem(model.cell, model.loss_fn, params, h0, xs, ys)

    key = jax.random.key(0)
    res = sweep.sweep(prob(xs, LABELS), [estimators.full()], key, 4)
    assert np.isfinite(res.rel_bias[0])
    with pytest.raises(ValueError, match=r"problem.xs must hold token ids in \[0, 5"):
        sweep.sweep(prob(xs.at[0, 1, 0].set(V), LABELS), [estimators.full()], key)
    with pytest.raises(ValueError, match=r"problem.xs\[2, 0, 0\] = 1.7"):
        sweep.sweep(prob(xs.at[2, 0, 0].set(1.7), LABELS), [estimators.full()], key)
    with pytest.raises(ValueError, match=r"problem.ys must hold class labels in \[0"):
        sweep.sample_estimates(
            prob(xs, LABELS.at[0, 0].set(-1)), estimators.full(), key, 1
        )


# --------------------------------------------------------------- adapters ---


def test_adapter_inits_check_their_key():
    import equinox as eqx
    import flax.linen as nn
    from flax import nnx

    adapted = [
        cells.from_nnx(nnx.GRUCell(2, 3, rngs=nnx.Rngs(0))),
        cells.from_equinox(eqx.nn.GRUCell(2, 3, key=jax.random.key(0))),
        cells.from_flax(nn.GRUCell(features=3)),
        # from_fn passes the key to the user's init as it is; a model checks it
        jbptt.readout(
            cells.from_fn(
                lambda k, i, h: {"W": jax.random.normal(k, (h, i))},
                lambda p, h, x: (h, h),
                lambda p, b: jnp.zeros(b + (3,)),
            ),
            1,
        ),
    ]
    for cell in adapted:
        with pytest.raises(TypeError, match=r"key must be a PRNG key .*got int 0"):
            cell.init(0, 2, 3)
        cell.init(jax.random.PRNGKey(0), 2, 3)  # legacy keys still work


def _grads(cell, i, h, T=4, B=2):
    model = jbptt.readout(cell, 1)
    params = model.init(jax.random.key(0), i, h)
    h0 = model.cell.initial_state(params, (B,))
    dtype = jax.tree_util.tree_leaves(h0)[0].dtype
    xs = jax.random.normal(jax.random.key(1), (T, B, i), dtype)
    fn = jbptt.value_and_grad(model.cell, model.loss_fn)
    return fn(params, h0, xs, jnp.zeros((T, B, 1), dtype))


def _nnx_cell(extra: str):
    from flax import nnx

    class Cell(nnx.Module):
        def __init__(self, rngs):
            self.cell = nnx.GRUCell(2, 3, rngs=rngs)
            self.in_features, self.hidden_features = 2, 3
            if extra == "dropout":
                self.extra = nnx.Dropout(0.5, rngs=rngs)
            else:
                self.extra = nnx.BatchNorm(3, rngs=rngs)

        def initialize_carry(self, shape, rngs=None):
            return self.cell.initialize_carry(shape, rngs=rngs)

        def __call__(self, h, x):
            h, y = self.cell(h, x)
            return h, self.extra(y)

    return Cell(nnx.Rngs(0))


@pytest.mark.parametrize("extra", ["dropout", "batchnorm"])
def test_from_nnx_holds_dropout_and_batchnorm_state_fixed(extra):
    module = _nnx_cell(extra)
    (l1, _), g1 = _grads(cells.from_nnx(module), 2, 3)
    (l2, _), g2 = _grads(cells.from_nnx(module), 2, 3)
    assert np.isfinite(l1) and float(l1) == float(l2)  # deterministic
    leaves = zip(
        jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2), strict=True
    )
    for a, b in leaves:
        np.testing.assert_array_equal(a, b)
    # the user's module is left in training mode
    flag = "deterministic" if extra == "dropout" else "use_running_average"
    assert getattr(module.extra, flag) is False


def test_from_nnx_refuses_a_step_that_changes_fixed_state():
    from flax import nnx

    class Noisy(nnx.Module):
        def __init__(self, rngs):
            self.cell = nnx.GRUCell(2, 3, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)
            self.in_features, self.hidden_features = 2, 3

        def initialize_carry(self, shape, rngs=None):
            return self.cell.initialize_carry(shape, rngs=rngs)

        def __call__(self, h, x):
            h, y = self.cell(h, x)
            return h, self.drop(y, deterministic=False)  # overrides eval mode

    with pytest.raises(TypeError, match=r"from_nnx\(Noisy\): the module changes state"):
        _grads(cells.from_nnx(Noisy(nnx.Rngs(0))), 2, 3)


def test_from_equinox_takes_a_dict_state():
    import equinox as eqx

    class DictCell(eqx.Module):
        lin: eqx.nn.Linear

        def __call__(self, x, state):
            h = jnp.tanh(self.lin(jnp.concatenate([x, state["h"]])))
            return {"h": h, "n": state["n"] + 1.0}

    def zeros(params, batch_shape):
        return {"h": jnp.zeros(batch_shape + (3,)), "n": jnp.zeros(batch_shape + (1,))}

    module = DictCell(eqx.nn.Linear(5, 3, key=jax.random.key(0)))
    cell = cells.from_equinox(module, initial_state=zeros)
    (loss, h_T), grads = _grads(cell, 2, 3)
    assert np.isfinite(loss) and np.all(h_T["n"] == 4.0)
    # The output is the state's first leaf (the dict's "h"), or output(state).
    h, out = cell.step(module, zeros(None, ()), jnp.ones(2))
    np.testing.assert_array_equal(out, h["h"])
    cell = cells.from_equinox(module, initial_state=zeros, output=lambda s: s["n"])
    assert cell.step(module, zeros(None, ()), jnp.ones(2))[1].shape == (1,)
    with pytest.raises(TypeError, match="output must be callable, got int"):
        cells.from_equinox(module, initial_state=zeros, output=1)


def _fn_cell(new_state):
    return cells.from_fn(
        lambda k, i, h: {"W": jnp.ones((h, i))},
        lambda p, h, x: (new_state(h + x @ p["W"].T), h),
        lambda p, b: jnp.zeros(b + (3,)),
        name="mycell",
    )


def test_a_step_that_changes_the_state_dtype_or_shape_is_named():
    with pytest.raises(
        TypeError,
        match=r"mycell.step returns a state float32\[2, 3\] but was given "
        r"float64\[2, 3\]: the state must keep its dtype",
    ):
        _grads(_fn_cell(lambda h: h.astype(jnp.float32)), 2, 3)
    with pytest.raises(
        ValueError,
        match=r"mycell.step returns a state float64\[2, 6\] but was given "
        r"float64\[2, 3\]: the state must keep its structure and shapes",
    ):
        _grads(_fn_cell(lambda h: jnp.concatenate([h, h], -1)), 2, 3)
    with pytest.raises(ValueError, match=r"mycell.step returns a state \('float64"):
        _grads(_fn_cell(lambda h: (h, h)), 2, 3)
    (loss, _), _ = _grads(_fn_cell(lambda h: h), 2, 3)
    assert np.isfinite(loss)


@pytest.mark.parametrize(
    "cell",
    [
        cells.elman(),
        cells.gru(),
        cells.lstm(),
        cells.stack([cells.gru(), cells.elman()]),
        jbptt.readout(cells.lstm(), 2).cell,
    ],
    ids=lambda c: c.name,
)
def test_cells_take_numpy_sizes_and_refuse_int_keys(cell):
    want = cell.init(jax.random.key(0), 2, 3)
    got = cell.init(jax.random.key(0), np.int64(2), np.int64(3))
    for a, b in zip(
        jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match=r"key must be a PRNG key .*got int 0"):
        cell.init(0, 2, 3)


@pytest.mark.parametrize(
    "est",
    [
        estimators.tbptt(2),
        estimators.artbp(0.3),
        estimators.es(0.1),
        estimators.pes(0.1, K=2),
        forward_mode.uoro(),
        estimators.adaptive_tbptt(0.1, max_lag=4),
    ],
    ids=lambda e: e.name,
)
def test_samples_check_their_count_by_name(est):
    p = _problem()
    key = jax.random.key(0)
    assert est.samples(p, key, np.int64(2)).shape[0] == 2
    for n in (2.5, float("nan"), -1, True, "a", 0):
        with pytest.raises((TypeError, ValueError), match="n must be a positive int"):
            est.samples(p, key, n)
