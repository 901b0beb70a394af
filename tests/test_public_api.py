"""The public surface: few names, one home each; old homes warn and still work."""

from __future__ import annotations

import ast
import importlib
import pathlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jbptt
from jbptt import estimators, forward_mode, sweep, truncation

FACADES = (
    "adaptive",
    "cells",
    "checks",
    "data",
    "diagnostics",
    "estimators",
    "forward_mode",
    "plotting",
    "runs",
    "sharding",
    "sweep",
    "train",
    "truncation",
)
SRC = pathlib.Path(jbptt.__file__).parent / "_src"


def _public(module) -> list[str]:
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    ]


def _facade(name):
    return importlib.import_module(f"jbptt.{name}")


def test_at_most_110_public_names():
    counts = {name: len(_public(_facade(name))) for name in FACADES}
    counts["jbptt"] = len(_public(jbptt))
    assert sum(counts.values()) <= 110, counts


def test_deprecated_names_are_not_in_the_namespace():
    for name in FACADES:
        module = _facade(name)
        for old in getattr(module, "_deprecated", {}):
            assert old not in vars(module), f"jbptt.{name}.{old}"


DEPRECATED = [
    (name, old) for name in FACADES for old in getattr(_facade(name), "_deprecated", {})
]


@pytest.mark.parametrize(
    "module, old", DEPRECATED, ids=[f"{m}.{o}" for m, o in DEPRECATED]
)
def test_each_old_name_warns_naming_the_new_home_and_is_the_same_object(module, old):
    mod = _facade(module)
    moved = mod._deprecated[old]
    with pytest.warns(DeprecationWarning) as record:
        value = getattr(mod, old)
    message = str(record[0].message)
    assert f"jbptt.{module}.{old}" in message and moved.new in message
    assert value is moved.value


def test_unknown_names_still_raise_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sweep.nope  # noqa: B018


def _model_problem(T=6, batch=()):
    model = jbptt.readout(jbptt.cells.elman(), output_size=1)
    p = model.init(jax.random.key(0), 1, 4)
    xs = jax.random.normal(jax.random.key(1), (T, *batch, 1))
    h0 = model.cell.initial_state(p, batch)
    return model, estimators.Problem(model.cell, model.loss_fn, p, h0, xs, xs)


# The old spellings give the results of the new ones.


def test_old_problem_and_gradient_fn_are_the_estimators_ones():
    with pytest.deprecated_call():
        assert sweep.Problem is estimators.Problem
    with pytest.deprecated_call():
        assert sweep.gradient_fn is estimators.gradient_fn


def test_old_sample_estimates_equal_the_protocol_samples():
    _, prob = _model_problem(batch=(2,))
    est, key = forward_mode.uoro(), jax.random.key(3)
    with pytest.deprecated_call():
        old = forward_mode.sample_estimates(est, *prob[:6], key, 5)
    np.testing.assert_array_equal(old, est.samples(prob, key, 5))
    # The one public sample_estimates folds the estimator's name into the key,
    # as sweep.sweep draws.
    from jbptt._src.protocol import estimator_key

    new = sweep.sample_estimates(prob, est, key, 5)
    np.testing.assert_array_equal(new, est.samples(prob, estimator_key(key, est), 5))


def test_old_adaptive_is_estimators_adaptive_tbptt():
    with pytest.deprecated_call():
        old = jbptt.adaptive.adaptive(0.1, max_lag=8)
    assert old == estimators.adaptive_tbptt(0.1, max_lag=8)
    assert repr(old) == "adaptive_tbptt(delta=0.1)"


def test_old_artbp_c_for_depth_is_artbp_matched_c():
    with pytest.deprecated_call():
        c = estimators.artbp_c_for_depth(8, T=16)
    assert c == estimators.artbp_matched(8, T=16).hparams["c"]


def test_old_truncation_helpers_equal_their_new_spellings():
    cuts = jnp.array([False, True, False, False])
    with pytest.deprecated_call():
        p = truncation.prob(cuts, 0.25)
    assert float(p) == float(jnp.exp(truncation.log_prob(cuts, 0.25)))
    ws, probs = truncation.enumerate_artbp(4, 0.25)
    with pytest.deprecated_call():
        patterns = truncation.all_cut_patterns(4)
    with pytest.deprecated_call():
        np.testing.assert_array_equal(truncation.weights_from_cuts(patterns, 0.25), ws)


def test_old_tbptt_ks_equals_stacked_tbptt():
    with pytest.deprecated_call():
        old = jbptt.diagnostics.tbptt_ks(6, [1, 2, 3])
    new = jnp.stack([truncation.tbptt(6, k) for k in (1, 2, 3)])
    np.testing.assert_array_equal(old, new)


def test_old_next_char_pairs_is_a_shift():
    s = np.arange(7)
    with pytest.deprecated_call():
        x, y = jbptt.data.next_char_pairs(s)
    np.testing.assert_array_equal(x, s[:-1])
    np.testing.assert_array_equal(y, s[1:])


def test_old_forward_mode_cost_is_the_footprint_not_the_protocol_cost():
    with pytest.deprecated_call():
        old = forward_mode.Cost
    _, prob = _model_problem()
    fp = forward_mode.rtrl().footprint(prob.cell, prob.params, prob.h0, prob.xs[0])
    assert isinstance(fp, old) and old is not estimators.Cost
    assert isinstance(forward_mode.rtrl().cost(prob), estimators.Cost)


# Readable estimators.


def test_estimator_reprs_read_as_written():
    assert repr(estimators.artbp(0.25)) == "artbp(c=0.25)"
    assert repr(estimators.tbptt(8)) == "tbptt(k=8)"
    assert repr(estimators.pes(0.1, pairs=2, K=5)) == "pes(sigma=0.1, pairs=2, K=5)"
    assert repr(forward_mode.uoro(eps=1e-6)).startswith("uoro(eps=1e-06")
    # A float32 scalar shows the number the user typed, not its float64 value.
    est = estimators.artbp(np.float32(0.1))
    assert est.name == "artbp(c=0.1)" and est.hparams["c"] == 0.1
    est = estimators.artbp(jnp.float32(0.3))
    assert est.name == "artbp(c=0.3)" and est.hparams["c"] == 0.3


# Problem: a plain NamedTuple, no hidden state.


def test_problem_is_a_plain_namedtuple_of_eight_fields():
    model, prob = _model_problem(batch=(2,))
    assert estimators.Problem._fields == (
        "cell", "loss_fn", "params", "h0", "xs", "ys", "lengths", "resets"
    )  # fmt: skip
    assert not hasattr(prob, "__dict__")
    assert prob.lengths is None and prob.resets is None
    # Unpack all eight, or the first six with problem[:6]; a six-name unpack
    # of the whole problem is the one spelling that changed (it raises).
    cell, loss_fn, params, h0, xs, ys, lengths, resets = prob
    cell, loss_fn, params, h0, xs, ys = prob[:6]
    assert cell is model.cell and lengths is None and resets is None
    with pytest.raises(ValueError, match="too many values to unpack"):
        cell, loss_fn, params, h0, xs, ys = prob
    # lengths and resets are ordinary fields: tree_map and _replace keep them.
    resets = jnp.zeros((6, 2), bool).at[3, 1].set(True)
    with_resets = prob._replace(resets=resets)
    mapped = jax.tree_util.tree_map(lambda a: a, with_resets)
    assert isinstance(mapped, estimators.Problem)
    np.testing.assert_array_equal(mapped.resets, resets)


def test_shared_forward_has_no_identity_keyed_cache():
    from jbptt._src import protocol

    _, prob = _model_problem()
    twin = prob._replace()  # equal fields, another object
    with protocol.shared_forward():
        a, b = protocol.gradient_fn(prob), protocol.gradient_fn(prob)
        c = protocol.gradient_fn(twin)
    assert a is b and c is not a  # shared within the context only
    w = truncation.full(6)
    fa, fc = a(w, jnp.ones(6)), c(w, jnp.ones(6))
    np.testing.assert_array_equal(fa["cell"]["W"], fc["cell"]["W"])
    source = (SRC / "protocol.py").read_text()
    assert "id(" not in source


# Structure: the shared pieces have modules of their own.


def _imports(module: str) -> set[str]:
    tree = ast.parse((SRC / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


@pytest.mark.parametrize(
    "module, must_not_import",
    [
        ("protocol", "jbptt._src.estimators"),
        ("sparsity", "jbptt._src.forward_mode"),
        ("influence", "jbptt._src.forward_mode"),
        ("influence", "jbptt._src.sparsity"),
    ],
)
def test_no_circle(module, must_not_import):
    assert must_not_import not in _imports(module)


def test_module_and_body_sizes():
    assert len((SRC / "forward_mode.py").read_text().splitlines()) < 600
    tree = ast.parse((SRC / "zeroth_order.py").read_text())
    make = next(
        n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_make"
    )
    assert make.end_lineno - make.body[0].lineno + 1 < 100


def test_top_level_check_finite_warns_and_is_checks_check_finite():
    with pytest.warns(DeprecationWarning, match="jbptt.checks.check_finite"):
        old = jbptt.check_finite
    assert old is jbptt.checks.check_finite


def test_the_migration_page_lists_every_old_name():
    page = (
        pathlib.Path(jbptt.__file__).parents[1] / "docs" / "migration.md"
    ).read_text()
    olds = [f"jbptt.{m}.{o}" for m, o in DEPRECATED] + ["jbptt.check_finite"]
    missing = [old for old in olds if f"`{old}`" not in page]
    assert not missing, missing
