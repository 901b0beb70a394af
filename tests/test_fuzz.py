"""Property-based fuzzing of the public API (hypothesis).

Every call gets random sizes, dtypes, special values (NaN, ±inf, negative,
zero, bools, NumPy scalars, strings, None) and key types (typed, legacy
``uint32[2]``, ints). Each call must either return finite results that equal
the autodiff reference, or raise ``ValueError``/``TypeError`` whose message
names the argument at fault. Anything else (a crash inside JAX, an
``IndexError``, a ``KeyError``, NaN in the output, a wrong number) fails.

Budget: ``make test`` runs a few derandomized examples per entry point
(seconds each). ``JBPTT_FUZZ_EXAMPLES=300`` runs that many random examples
per entry point; shapes come from small fixed sets so that compiled functions
are reused across examples.
"""

from __future__ import annotations

import collections
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jbptt
from jbptt import cells, estimators, runs, truncation

_N = int(os.environ.get("JBPTT_FUZZ_EXAMPLES", "0"))
COUNTS: collections.Counter = collections.Counter()


def budget(default: int):
    """``default`` derandomized examples, or ``JBPTT_FUZZ_EXAMPLES`` random ones."""
    return settings(
        max_examples=_N or default,
        deadline=None,
        derandomize=not _N,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    if _N:
        print("\nfuzz examples per entry point:", dict(sorted(COUNTS.items())))


def named_error(call, *names):
    """Run ``call``; a ValueError/TypeError must name one of ``names``.

    Returns ``(result, None)`` or ``(None, error)``.
    """
    try:
        return call(), None
    except (ValueError, TypeError) as err:
        msg = str(err)
        assert any(n in msg for n in names), (
            f"error does not name any of {names}: {type(err).__name__}: {msg}"
        )
        return None, err


def rel_err(a, b) -> float:
    a = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(a)])
    b = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(b)])
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def all_finite(tree) -> bool:
    return all(
        bool(np.all(np.isfinite(np.asarray(x, np.float64))))
        for x in jax.tree_util.tree_leaves(tree)
    )


# ----------------------------------------------------------- strategies ---

SPECIAL = [float("nan"), float("inf"), -float("inf"), -1.0, 0.0]
ints = st.sampled_from([1, 2, 3, 5, 8, np.int64(3), np.int32(2)])
bad_ints = st.sampled_from([0, -1, 2.5, True, False, "3", None, float("nan")])
sizes = st.one_of(ints, bad_ints)


def make_key(kind: str, seed: int):
    return {
        "typed": lambda: jax.random.key(seed),
        "legacy": lambda: jax.random.PRNGKey(seed),
        "int": lambda: seed,
        "none": lambda: None,
        "float": lambda: jnp.zeros(2),
    }[kind]()


key_kinds = st.sampled_from(
    ["typed", "legacy", "typed", "legacy", "int", "none", "float"]
)
CELLS = {"elman": cells.elman, "lstm": cells.lstm, "gru": cells.gru}


# ------------------------------------------------------- cells: init/step ---


@budget(12)
@given(
    name=st.sampled_from(sorted(CELLS)),
    input_size=sizes,
    hidden_size=sizes,
    key_kind=key_kinds,
    dtype=st.sampled_from([None, jnp.float32, jnp.float64, jnp.int32, "float64"]),
    batch=st.sampled_from([(), (2,), (0,), (1, 2)]),
    fill=st.sampled_from([0.0, 1.0, -2.5, 1e3]),
)
def test_cell_init_and_step(
    name, input_size, hidden_size, key_kind, dtype, batch, fill
):
    COUNTS["cells.init/step"] += 1
    cell = CELLS[name]()
    key = make_key(key_kind, 0)
    params, err = named_error(
        lambda: cell.init(key, input_size, hidden_size, dtype=dtype),
        "input_size",
        "hidden_size",
        "key",
        "dtype",
    )
    if err is not None:
        return
    assert all_finite(params)
    dt = params[sorted(params)[0]].dtype
    assert jnp.issubdtype(dt, jnp.floating)
    h0 = cell.initial_state(params, batch)
    x = jnp.full(batch + (int(input_size),), fill, dt)
    h1, out = cell.step(params, h0, x)
    assert jax.tree_util.tree_structure(h1) == jax.tree_util.tree_structure(h0)
    assert out.shape == batch + (int(hidden_size),) and all_finite((h1, out))
    if name == "elman":  # the cell's own equation
        ref = jnp.tanh(x @ params["U"].T + params["b"])
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- truncation ---


@budget(25)
@given(
    T=sizes,
    k=st.one_of(ints, bad_ints, st.integers(1, 12)),
    offset=st.one_of(
        st.integers(-6, 6), st.sampled_from([2.5, True, None, np.int64(1), "0"])
    ),
)
def test_tbptt(T, k, offset):
    COUNTS["truncation.tbptt"] += 1
    w, err = named_error(lambda: truncation.tbptt(T, k, offset), "T", "k", "offset")
    if err is not None:
        return
    T, k, offset = int(T), int(k), int(offset)
    expect = [0.0 if (t - offset) % k == 0 else 1.0 for t in range(T)]
    assert w.tolist() == expect


@budget(15)
@given(T=sizes, dtype=st.sampled_from([None, jnp.float32, jnp.float64, jnp.int32]))
def test_full(T, dtype):
    COUNTS["truncation.full"] += 1
    w, err = named_error(lambda: truncation.full(T, dtype), "T", "dtype")
    if err is None:
        assert w.tolist() == [1.0] * int(T)


c_values = st.one_of(
    st.sampled_from([0.0, 0.3, 0.9, 1.0, 1.5, np.float32(0.25), True, None, "0.5"]),
    st.sampled_from(SPECIAL),
    st.sampled_from(["poly_tail", "geometric", "array", "array_bad", "short"]),
)


@budget(25)
@given(
    T=st.one_of(ints, bad_ints), c=c_values, key_kind=key_kinds, seed=st.integers(0, 3)
)
def test_artbp(T, c, key_kind, seed):
    COUNTS["truncation.artbp"] += 1
    n = int(T) if isinstance(T, int | np.integer) and not isinstance(T, bool) else 3
    n = max(n, 1)
    if isinstance(c, str) and c != "0.5":
        c = {
            "poly_tail": truncation.poly_tail(4.0),
            "geometric": truncation.geometric(3.0),
            "array": jnp.linspace(0.0, 0.8, n),
            "array_bad": jnp.linspace(0.0, 0.8, n).at[-1].set(jnp.nan),
            "short": jnp.full((n + 1,), 0.2),
        }[c]
    key = make_key(key_kind, seed)
    w, err = named_error(lambda: truncation.artbp(key, T, c), "T", "c", "key")
    if err is not None:
        return
    T = int(T)
    assert w.shape == (T,) and float(w[0]) == 1.0 and all_finite(w)
    assert bool(jnp.all(w >= 0))
    if not callable(c):
        probs = jnp.broadcast_to(jnp.asarray(c, w.dtype), (T,))
        kept = jnp.isclose(w, 1.0 / (1.0 - probs))
        assert bool(jnp.all((w == 0) | kept | (jnp.arange(T) == 0)))


# ------------------------------------------------------------- gradients ---


def loss_fn(params, out_t, y_t):
    del params
    return 0.5 * jnp.sum((out_t - y_t) ** 2)


_PROBLEMS: dict = {}


def problem(name, T, batch):
    """One cached problem per (cell, T, batch): params, h0, xs, ys."""
    key = (name, T, batch)
    if key not in _PROBLEMS:
        cell = CELLS[name]()
        k = jax.random.split(jax.random.key(hash(key) % 1000), 4)
        params = cell.init(k[0], 2, 3)
        h0 = jax.tree_util.tree_map(
            lambda a: 0.3 * jax.random.normal(k[1], a.shape, a.dtype),
            cell.initial_state(params, batch),
        )
        xs = jax.random.normal(k[2], (T, *batch, 2))
        ys = jax.random.normal(k[3], (T, *batch, 3))
        fns = {
            "vg": jax.jit(jbptt.value_and_grad(cell, loss_fn)),
            "ref": jax.jit(jax.value_and_grad(jbptt.loss(cell, loss_fn), has_aux=True)),
            "scan": jax.jit(
                jax.value_and_grad(
                    lambda p, h, x, y, w: jnp.sum(
                        jax.vmap(loss_fn, (None, 0, 0))(
                            p, jbptt.rnn_scan(cell, p, h, x, w)[1], y
                        )
                    )
                )
            ),
        }
        _PROBLEMS[key] = (cell, params, h0, xs, ys, fns)
    return _PROBLEMS[key]


w_kinds = st.sampled_from(
    [
        "none",
        "ones",
        "tbptt",
        "random",
        "random",
        "nan",
        "neg",
        "inf",
        "short",
        "int",
        "list",
    ]
)
ys_kinds = st.sampled_from(["ok", "ok", "ok", "short", "none", "list"])


def make_w(kind, T, seed):
    r = np.random.default_rng(seed)
    return {
        "none": lambda: None,
        "ones": lambda: jnp.ones(T),
        "tbptt": lambda: truncation.tbptt(T, 2),
        "random": lambda: jnp.asarray(r.choice([0.0, 0.5, 1.0, 2.0], T)),
        "nan": lambda: jnp.ones(T).at[T - 1].set(jnp.nan),
        "neg": lambda: jnp.ones(T).at[0].set(-1.0),
        "inf": lambda: jnp.ones(T).at[T // 2].set(jnp.inf),
        "short": lambda: jnp.ones(T + 1),
        "int": lambda: jnp.ones(T, jnp.int32),
        "list": lambda: [1.0] * T,
    }[kind]()


def make_ys(kind, ys):
    return {
        "ok": lambda: ys,
        "short": lambda: ys[:-1] if ys.shape[0] > 1 else ys[:0],
        "none": lambda: None,
        "list": lambda: ys.tolist(),
    }[kind]()


@budget(6)
@given(
    name=st.sampled_from(sorted(CELLS)),
    T=st.sampled_from([1, 3]),
    batch=st.sampled_from([(), (2,)]),
    w_kind=w_kinds,
    ys_kind=ys_kinds,
    seed=st.integers(0, 5),
)
def test_value_and_grad_loss_rnn_scan(name, T, batch, w_kind, ys_kind, seed):
    COUNTS["value_and_grad/loss/rnn_scan"] += 1
    cell, params, h0, xs, ys, fns = problem(name, T, batch)
    w = make_w(w_kind, T, seed)
    ys = make_ys(ys_kind, ys)
    grad_fn = jbptt.value_and_grad(cell, loss_fn)
    # Eagerly first: values of concrete w are checked here (not under jit).
    got, err = named_error(lambda: grad_fn(params, h0, xs, ys, w), "w", "ys")
    if err is not None:
        # The same call must fail on the plain-scan forward and rnn_scan too.
        named_error(lambda: jbptt.loss(cell, loss_fn)(params, h0, xs, ys, w), "w", "ys")
        return
    w = None if w is None else jnp.asarray(w)
    (L, h_T), g = fns["vg"](params, h0, xs, ys, w)
    (L_ref, h_ref), g_ref = fns["ref"](params, h0, xs, ys, w)
    assert all_finite((L, h_T, g))
    assert rel_err(g, g_ref) <= 1e-10 and rel_err(L, L_ref) <= 1e-12
    assert rel_err(h_T, h_ref) <= 1e-12
    assert rel_err(got[1], g_ref) <= 1e-10
    L_scan, g_scan = fns["scan"](params, h0, xs, ys, jnp.ones(T) if w is None else w)
    assert rel_err(L_scan, L_ref) <= 1e-12 and rel_err(g_scan, g_ref) <= 1e-10


@budget(4)
@given(
    name=st.sampled_from(sorted(CELLS)),
    T=st.sampled_from([1, 3]),
    K=st.sampled_from([1, 2]),
    bad=st.sampled_from(["ok", "ok", "shape", "vector"]),
    seed=st.integers(0, 5),
)
def test_grads_for_weights(name, T, K, bad, seed):
    COUNTS["grads_for_weights"] += 1
    cell, params, h0, xs, ys, fns = problem(name, T, ())
    r = np.random.default_rng(seed)
    ws = jnp.asarray(r.choice([0.0, 0.5, 1.0, 2.0], (K, T)))
    if bad == "shape":
        ws = jnp.ones((K, T + 1))
    elif bad == "vector":
        ws = jnp.ones(T)
    out, err = named_error(
        lambda: jbptt.grads_for_weights(cell, loss_fn, params, h0, xs, ys, ws), "ws"
    )
    if err is not None:
        return
    (L, _), g = out
    for k in range(K):
        _, g_ref = fns["ref"](params, h0, xs, ys, ws[k])
        g_k = jax.tree_util.tree_map(lambda a, k=k: a[k], g)
        assert rel_err(g_k, g_ref) <= 1e-10


# ------------------------------------------------------------- estimators ---


@budget(15)
@given(
    which=st.sampled_from(
        ["full", "tbptt", "tbptt_random", "artbp", "artbp_poly", "wp"]
    ),
    k=st.one_of(ints, bad_ints),
    c=st.sampled_from([0.0, 0.25, 0.5, 1.0, float("nan"), -0.5, True]),
    T=st.sampled_from([1, 2, 5]),
    key_kind=st.sampled_from(["typed", "legacy"]),
    seed=st.integers(0, 3),
)
def test_estimator_samples(which, k, c, T, key_kind, seed):
    COUNTS["estimators.sample"] += 1
    est, err = named_error(
        lambda: {
            "full": lambda: estimators.full(),
            "tbptt": lambda: estimators.tbptt(k),
            "tbptt_random": lambda: estimators.tbptt(k, random_offset=True),
            "artbp": lambda: estimators.artbp(c),
            "artbp_poly": lambda: estimators.artbp(truncation.poly_tail(3.0)),
            "wp": lambda: estimators.williams_peng(1, k),
        }[which](),
        "k",
        "c",
    )
    if err is not None:
        return
    w, m = est.sample(make_key(key_kind, seed), T)
    assert w.ndim == 2 and w.shape[1] == T and m.shape == w.shape
    assert all_finite((w, m)) and bool(jnp.all(w >= 0))


# ------------------------------------------------------------ result file ---

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**53), 2**53),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=4), inner, max_size=3),
    ),
    max_leaves=6,
)


def _same(a, b) -> bool:  # JSON equality where NaN equals NaN
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@budget(10)
@given(
    values=st.lists(json_values, min_size=0, max_size=6),
    corrupt=st.sets(st.integers(0, 5), max_size=3),
    torn=st.binary(max_size=12),
    junk=st.binary(min_size=1, max_size=12),
)
def test_result_file_keeps_every_intact_row(
    tmp_path_factory, values, corrupt, torn, junk
):
    COUNTS["runs.ResultFile"] += 1
    path = str(tmp_path_factory.mktemp("rf") / "r.jsonl")
    f = runs.ResultFile(path, {"seed": 0}, key=("i",))
    rows = [{"i": i, "v": v} for i, v in enumerate(values)]
    for r in rows:
        assert f.append(r)
    with open(path, "rb") as fh:
        lines = [x + b"\n" for x in fh.read().split(b"\n")[:-1]]
    bad = {i for i in corrupt if i < len(rows)}
    junk = junk.replace(b"\n", b"\x00")
    for i in bad:  # row i is on line i + 2 (line 1 is the header)
        lines[i + 1] = b"{" + junk + b"\n"
    torn = torn.replace(b"\n", b"")
    with open(path, "wb") as fh:
        fh.write(b"".join(lines) + torn)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        g = runs.ResultFile(path, {"seed": 0}, key=("i",))
    intact = [r for i, r in enumerate(rows) if i not in bad]
    assert _same(g.rows(), intact)
    side = path + ".corrupt"
    quarantined = []
    if os.path.exists(side):
        with open(side, encoding="utf-8") as fh:
            quarantined = [json.loads(x) for x in fh if x.strip()]
    expected_lines = sorted(i + 2 for i in bad) + ([len(lines) + 1] if torn else [])
    assert [q["line"] for q in quarantined] == expected_lines
    for q in quarantined:  # nothing lost: the bytes come back
        raw = q["text"].encode("utf-8", "surrogateescape")
        assert raw == torn or raw == b"{" + junk + b"\n"
    assert _same(runs.read_rows(path)[1], intact)


# ------------------------------------------------------------ checkpoints ---

DTYPES = [jnp.float32, jnp.float64, jnp.int32, jnp.uint8, jnp.bfloat16]
SHAPES = [(), (0,), (3,), (2, 2)]


@st.composite
def states(draw):
    n = draw(st.integers(1, 3))
    out = {}
    for i in range(n):
        dtype = draw(st.sampled_from(DTYPES))
        shape = draw(st.sampled_from(SHAPES))
        size = math.prod(shape)
        if jnp.issubdtype(dtype, jnp.floating):
            vals = draw(
                st.lists(
                    st.sampled_from([0.0, -1.5, 3.25, 1e30, *SPECIAL]),
                    min_size=size,
                    max_size=size,
                )
            )
        else:
            vals = draw(st.lists(st.integers(0, 200), min_size=size, max_size=size))
        out[f"a{i}"] = jnp.asarray(np.asarray(vals, np.float64).reshape(shape), dtype)
    if draw(st.booleans()):
        out["key"] = jax.random.key(draw(st.integers(0, 9)))
    out["step"] = draw(st.integers(0, 2**40))
    return out


def _bits(a):
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        a = jax.random.key_data(a)
    return np.asarray(a).tobytes(), str(a.dtype), np.shape(a)


@budget(6)
@given(state=states(), change=st.sampled_from(["none", "dtype", "shape", "drop"]))
def test_checkpointer_roundtrip_or_named_refusal(tmp_path_factory, state, change):
    COUNTS["runs.Checkpointer"] += 1
    folder = tmp_path_factory.mktemp("ck")
    with runs.Checkpointer(folder) as ckpt:
        ckpt.save(3, state)
        assert ckpt.latest_step() == 3
        template = dict(state)
        if change == "dtype":
            a = template["a0"]
            other = jnp.float32 if a.dtype != jnp.float32 else jnp.float64
            template["a0"] = a.astype(other)
        elif change == "shape":
            template["a0"] = jnp.zeros((5,), state["a0"].dtype)
        elif change == "drop":
            del template["step"]
        back, err = named_error(lambda: ckpt.restore(template), "template", "leaf")
        if change != "none":
            assert err is not None
            if change != "drop":
                assert "['a0']" in str(err)
            return
    assert err is None and type(back["step"]) is int and back["step"] == state["step"]
    for name in state:
        if name != "step":
            assert _bits(back[name]) == _bits(state[name])
    with runs.Checkpointer(folder) as again:  # the same after reopening
        assert again.latest_step() == 3
