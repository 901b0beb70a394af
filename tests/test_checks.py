"""Finite-data checks up front and divergence handling in a jitted step."""

from __future__ import annotations

import importlib
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jbptt
from jbptt import checks
from jbptt._src import checks as loop_checks


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(xs=np.array([[0.0, 1.0], [2.0, np.nan]])),
            r"xs contains non-finite values: xs\[1, 1\] = nan \(1 of 4",
        ),
        (
            dict(xs=jnp.ones((2, 2)), ys=jnp.array([1.0, -jnp.inf, jnp.inf])),
            r"ys contains non-finite values: ys\[1\] = -inf \(2 of 3",
        ),
        (
            dict(ys={"a": jnp.zeros(2), "b": jnp.array([[jnp.nan]])}),
            r"ys\['b'\]\[0, 0\] = nan",
        ),
        (dict(h0=jnp.array(jnp.inf)), r"h0 contains non-finite values: h0 = inf"),
    ],
)
def test_check_finite_names_argument_and_first_index(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jbptt.checks.check_finite(**kwargs)


def test_check_finite_passes_clean_integer_and_none():
    jbptt.checks.check_finite(
        xs=jnp.ones((3, 2)),
        ys=jnp.array([1, 2, 3]),
        h0=None,
        labels=np.array([True, False]),
    )


def test_check_finite_refuses_tracers():
    with pytest.raises(TypeError, match="outside jit"):
        jax.jit(lambda x: jbptt.checks.check_finite(xs=x))(jnp.ones(2))


def test_flags_under_jit_and_vmap():
    def f(g):
        return loop_checks.finite_flags(loss=jnp.sum(g["W"]), grads=g)

    g = {"W": jnp.array([1.0, jnp.nan]), "b": jnp.zeros(2)}
    flags = jax.jit(f)(g)
    assert loop_checks.nonfinite_names(flags) == ["grads['W']", "loss"]
    assert not bool(loop_checks.all_finite(flags))
    batched = jax.vmap(f)(
        {"W": jnp.array([[1.0, 2.0], [jnp.inf, 0.0]]), "b": jnp.zeros((2, 2))}
    )
    assert batched["loss"].tolist() == [True, False]


def _diverging_setup(on_nonfinite):
    """A jitted step whose update becomes NaN when the data holds a NaN."""
    model = jbptt.readout(jbptt.cells.elman(), output_size=1)
    params = model.init(jax.random.key(0), 1, 4)
    grad_fn = jbptt.value_and_grad(model.cell, model.loss_fn)
    opt = optax.sgd(0.1)

    @jax.jit
    def step(params, opt_state, xs):
        (L, _), g = grad_fn(params, model.cell.initial_state(params), xs, xs)
        flags = loop_checks.finite_flags(loss=L, grads=g)
        upd, new_opt = opt.update(g, opt_state, params)
        new = (optax.apply_updates(params, upd), new_opt)
        if on_nonfinite == "skip":  # Python-level policy: static, not a tracer
            new = loop_checks.select_if(
                loop_checks.all_finite(flags), new, (params, opt_state)
            )
        return new, flags

    return params, opt.init(params), step


def _train(on_nonfinite, bad_step=2, steps=5):
    params, opt_state, step = _diverging_setup(on_nonfinite)
    events, history = [], []
    for i in range(steps):
        xs = jnp.full((4, 1), 0.5)
        if i == bad_step:
            xs = xs.at[1, 0].set(jnp.nan)  # e.g. a corrupt batch mid-stream
        (params, opt_state), flags = step(params, opt_state, xs)
        div = loop_checks.handle_nonfinite(i, flags, on_nonfinite)
        history.append(params)
        if div is not None:
            events.append(div)
            if div.action == "stopped":
                break
    return params, history, events


def test_raise_reports_step_and_quantity():
    with pytest.raises(
        checks.DivergenceError, match="non-finite .*loss at step 2"
    ) as info:
        _train("raise")
    div = info.value.divergence
    assert div.step == 2 and "loss" in div.quantities
    assert "grads['cell']['W']" in div.quantities


def test_skip_keeps_params_finite_and_continues():
    params, history, events = _train("skip")
    assert [e.step for e in events] == [2] and events[0].action == "skipped"
    assert len(history) == 5
    leaves = jax.tree_util.tree_leaves(params)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in leaves)
    # The skipped step left the params exactly as they were.
    for a, b in zip(
        jax.tree_util.tree_leaves(history[1]),
        jax.tree_util.tree_leaves(history[2]),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_stop_ends_at_the_bad_step():
    _, history, events = _train("stop")
    assert len(history) == 3 and events[0].action == "stopped"
    assert events[0].message().startswith("non-finite grads")


def test_unknown_policy():
    with pytest.raises(ValueError, match=r"on_nonfinite 'ignore'.*'raise', 'stop'"):
        loop_checks.check_policy("ignore")


# ------------------------------------------------------- bad-input table ---

DOC = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "bad_inputs.md")
_ROW = re.compile(r"^\| (?P<what>[^|]+) \| `(?P<code>[^`]+)` \| (?P<gets>[^|]+) \|$")
_GETS = re.compile(r'^(?:`(?P<exc>\w+)`|exit (?P<code>\d+)) "(?P<msg>.+)"$')


def _table():
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    setup = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    rows = []
    for line in text.splitlines():
        m = _ROW.match(line)
        if m:
            g = _GETS.match(m["gets"].strip())
            assert g, f"unparsed 'gets' column: {line}"
            rows.append((m["code"], g["exc"], g["code"], g["msg"]))
    return setup, rows


SETUP, ROWS = _table()


def test_bad_input_table_is_complete():
    # Every public function that validates input is in the table.
    assert len(ROWS) >= 40
    for name in (
        "check_finite",
        "ResultFile",
        "make_mesh",
        "tbptt",
        "artbp",
        "readout",
        "rnn_scan",
        "value_and_grad",
        "from_flax",
        "Checkpointer",
        "initial_state",
        "offset=",
    ):
        assert any(name in code for code, *_ in ROWS), name


@pytest.mark.parametrize("code, exc, exit_code, msg", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_table(code, exc, exit_code, msg, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if code.startswith("python -m "):
        module, *argv = code.split()[2:]
        parse_args = importlib.import_module(module).parse_args
        with pytest.raises(SystemExit) as info:
            parse_args(argv)
        assert info.value.code == int(exit_code)
        assert msg in capsys.readouterr().err
        return
    ns: dict = {}
    exec(SETUP, ns)
    with pytest.raises(Exception) as info:
        eval(code, ns)
    assert type(info.value).__name__ == exc, info.value
    assert msg in str(info.value)


# --------------------------------------------------- jbptt.train.train ---


def _exploding(on_nonfinite, xs=None):
    # SGD with a step of 1e200: after the first segment the readout weights
    # are ~1e200, so the next segment's squared loss overflows to inf.
    from jbptt import estimators, train

    model = jbptt.readout(jbptt.cells.elman(), output_size=1)
    params = model.init(jax.random.key(0), 1, 4)
    xs = jnp.ones((16, 1)) if xs is None else xs
    return train.train(
        model.cell,
        model.loss_fn,
        params,
        xs,
        xs,
        optax.sgd(1e200),
        estimators.tbptt(4),
        on_nonfinite=on_nonfinite,
    )


def test_train_rejects_nonfinite_data():
    with pytest.raises(ValueError, match=r"xs contains non-finite values: xs\[3, 0\]"):
        _exploding("raise", jnp.ones((16, 1)).at[3, 0].set(jnp.inf))


def test_train_divergence_policies():
    with pytest.raises(checks.DivergenceError, match="at step 1") as info:
        _exploding("raise")
    assert "loss" in info.value.divergence.quantities
    stopped = _exploding("stop")
    assert len(stopped.loss) == 2 and stopped.divergences[0].step == 1
    skipped = _exploding("skip")
    assert [d.step for d in skipped.divergences] == [1, 2, 3]
    assert len(skipped.loss) == 4 and not np.isfinite(skipped.loss[1])
    # Skipped updates were not applied: params equal those after segment 0,
    # the same as when stopping at segment 1.
    for a, b in zip(
        jax.tree_util.tree_leaves(skipped.params),
        jax.tree_util.tree_leaves(stopped.params),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
        assert np.all(np.isfinite(a))
    with pytest.raises(ValueError, match="on_nonfinite"):
        _exploding("warn")


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_check_finite_sees_narrow_float_nan(dtype):
    with pytest.raises(ValueError, match=r"xs\[1\] = nan"):
        checks.check_finite(xs=jnp.array([1.0, jnp.nan], dtype))
    with pytest.raises(ValueError, match=r"xs\[0\] = inf"):
        checks.check_finite(xs=jnp.array([jnp.inf, 0.0], dtype))
    checks.check_finite(xs=jnp.ones(3, dtype))
