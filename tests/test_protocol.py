"""The public core pieces (forward, backward, Residuals) and the estimator
protocol: a user-written estimator runs through the sweep and online
training like the built-in ones."""

from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import CELLS, flat, problem, random_w, rel_err
from helpers import accumulate as _accumulate

import jbptt
from jbptt import estimators, forward_mode, sweep
from jbptt._src.scan import link


def _reference(cell, params, h0, xs, w):
    """Plain lax.scan with the link-weight function: autodiff's view."""

    def body(h, inp):
        x_t, w_t = inp
        return cell.step(params, link(h, w_t), x_t)

    return jax.lax.scan(body, h0, (xs, w))


@pytest.mark.parametrize("name", sorted(CELLS))
def test_forward_backward_equal_autodiff_with_link_weights(name):
    model, params, h0, xs, _ = problem(CELLS[name](), T=7, batch=(3,))
    cell, T = model.cell, xs.shape[0]
    w = random_w(T)
    h_T, outs, residuals = jbptt.forward(cell, params, h0, xs)
    assert isinstance(residuals, jbptt.Residuals)
    ref_out, vjp = jax.vjp(lambda p, h, x: _reference(cell, p, h, x, w), params, h0, xs)
    assert rel_err((h_T, outs), ref_out) < 1e-12
    keys = jax.random.split(jax.random.key(5), 2)
    dh_T = jax.tree_util.tree_map(
        lambda a: jax.random.normal(keys[0], a.shape, a.dtype), h_T
    )
    douts = jax.random.normal(keys[1], outs.shape, outs.dtype)
    got = jbptt.backward(cell, params, residuals, w, dh_T, douts)
    want = vjp((dh_T, douts))
    for g, r in zip(got, want, strict=True):
        assert rel_err(g, r) < 1e-10


def test_backward_vmaps_over_link_weights_as_grads_for_weights():
    model, params, h0, xs, ys = problem(CELLS["lstm"](), T=6)
    ws = jnp.stack([random_w(6, seed) for seed in range(3)])
    _, g = jbptt.grads_for_weights(model.cell, model.loss_fn, params, h0, xs, ys, ws)
    vg = jbptt.value_and_grad(model.cell, model.loss_fn)
    for k, w in enumerate(ws):
        row = jax.tree_util.tree_map(lambda a, k=k: a[k], g)
        assert rel_err(row, vg(params, h0, xs, ys, w)[1]) < 1e-10


def test_backward_bad_inputs():
    model, params, h0, xs, _ = problem(CELLS["elman_tanh"](), T=5)
    _, outs, residuals = jbptt.forward(model.cell, params, h0, xs)
    with pytest.raises(TypeError, match="residuals"):
        jbptt.backward(model.cell, params, tuple(residuals), None, None, outs)
    with pytest.raises(ValueError, match=r"w \(link weights\)"):
        jbptt.backward(model.cell, params, residuals, jnp.ones(4), None, outs)


# ------------------------------------------------- a user-written estimator ---


def _doubled_segment(cell, loss_fn, params, h, est_state, xs, ys, w, mask, key):
    losses, g, h, est_state = (
        estimators.full()
        .online()
        .segment(cell, loss_fn, params, h, est_state, xs, ys, w, mask, key)
    )
    return losses, jax.tree_util.tree_map(lambda a: 2.0 * a, g), h, est_state


class Doubled(NamedTuple):
    """Twice the exact gradient: biased by exactly ‖g‖, zero variance."""

    name: str = "doubled"
    deterministic: bool = True
    hparams: dict = {}

    def samples(self, problem, key, n, *, chunk=64, mesh=None):
        g = estimators.full().samples(problem, key, n, chunk=chunk, mesh=mesh)
        return 2.0 * g

    def cost(self, problem):
        return estimators.full().cost(problem)

    def online(self):
        return estimators.full().online()._replace(segment=_doubled_segment)


def test_user_estimator_through_sweep():
    model, params, h0, xs, ys = problem(CELLS["gru"](), T=6)
    prob = estimators.Problem(model.cell, model.loss_fn, params, h0, xs, ys)
    es = [estimators.full(), Doubled(), forward_mode.rtrl(), estimators.tbptt(2)]
    assert all(isinstance(e, estimators.GradientEstimator) for e in es)
    res = sweep.sweep(prob, es, jax.random.key(0), 8)
    assert res.names == ("full", "doubled", "rtrl", "tbptt(k=2)")
    assert abs(res.rel_bias[1] - 1.0) < 1e-10 and res.rel_variance[1] == 0.0
    assert res.rel_bias[0] < 1e-10 and res.rel_bias[2] < 1e-10
    assert res.expected_depth.tolist() == [6.0, 6.0, 6.0, 2.0]
    assert res.windows.tolist() == [1, 1, 0, 1]


def test_user_estimator_through_train():
    model, params, h0, xs, ys = problem(CELLS["elman_tanh"](), T=9)
    run = lambda e: jbptt.train.train(  # noqa: E731
        model.cell, model.loss_fn, params, xs, ys, _accumulate(), e, h0=h0
    )
    full, doubled = run(estimators.full()), run(Doubled())
    assert (
        rel_err(
            doubled.opt_state, jax.tree_util.tree_map(lambda a: 2.0 * a, full.opt_state)
        )
        < 1e-12
    )
    _, g = jbptt.value_and_grad(model.cell, model.loss_fn)(params, h0, xs, ys)
    assert rel_err(flat(full.opt_state), flat(g)) < 1e-10
    np.testing.assert_array_equal(doubled.loss, full.loss)


def test_sweep_and_train_never_ask_the_estimator_kind():
    src = Path(jbptt.__file__).parent / "_src"
    for module in ("sweep.py", "train.py"):
        text = (src / module).read_text()
        for kind in ("Estimator)", "OnlineEstimator", "Estimator |", "Links"):
            assert kind not in text, (module, kind)


def test_built_in_rules_state_their_flags():
    """The trainer reads what a built-in rule states (OnlineRule's flags),
    nothing hung on its functions."""
    from jbptt._src import segment_rules
    from jbptt._src.estimators import as_estimator
    from jbptt._src.train_plan import read_rule

    rule = estimators.artbp(0.25).online()
    assert rule.splits is rule.segment and rule.takes_resets and rule.takes_adjoint
    assert rule.stream_cuts is not None
    assert not hasattr(segment_rules.truncation_block, "splits")
    assert not hasattr(rule.cuts, "streams")
    host, traced = read_rule(rule)
    assert traced.splits and traced.block is rule.block
    assert host.stream_cuts is rule.stream_cuts
    links = as_estimator(jnp.ones(4))  # no cut law, no blocks
    for est, flags in (
        (links, (True, True)),
        (forward_mode.uoro(), (True, False)),
        (estimators.es(0.1), (False, False)),
    ):
        r = est.online()
        assert (r.takes_resets, r.takes_adjoint) == flags
        _, traced = read_rule(r)
        assert (traced.takes_resets, traced.takes_adjoint) == flags
    # A rule made by _replace(segment=f) runs f whole: its blocks split
    # another segment.
    _, traced = read_rule(Doubled().online())
    assert not traced.splits and traced.block is None and traced.advance is None


def test_a_rule_without_flags_is_read_as_before():
    """Flags left None: inferred as before the flags existed (signature,
    block.splits, cuts.streams), for compatibility only."""
    from jbptt._src import stream
    from jbptt._src.train_plan import read_rule

    base = (
        estimators.tbptt(4)
        .online()
        ._replace(stream_cuts=None, splits=None, takes_resets=None, takes_adjoint=None)
    )
    host, traced = read_rule(base)
    assert traced.splits and traced.takes_resets and traced.takes_adjoint
    assert host.stream_cuts is None
    law = stream.periodic(4)

    def cuts(key, t0, T, d):
        return stream.draw(law, key, t0, T, d)

    def block(*args, **kwargs):
        return base.block(*args, **kwargs)

    cuts.streams = lambda keys, t0, T, d: stream.draw_streams(law, keys, t0, T, d)
    block.splits = base.segment  # it splits another segment
    host, traced = read_rule(
        base._replace(segment=_doubled_segment, cuts=cuts, block=block)
    )
    assert host.stream_cuts is cuts.streams
    assert not traced.splits and traced.block is None
    assert not traced.takes_resets and not traced.takes_adjoint
    # Stated flags win over the signature.
    _, traced = read_rule(base._replace(takes_resets=False, takes_adjoint=False))
    assert not traced.takes_resets and not traced.takes_adjoint
    with pytest.raises(TypeError, match="OnlineRule.splits must be the segment"):
        read_rule(base._replace(splits=True))
    # A built-in rule whose segment is replaced (as Doubled's is): its stated
    # call flags described the old segment, so the new one's are read.
    _, traced = read_rule(estimators.full().online()._replace(segment=_doubled_segment))
    assert not traced.splits and not traced.takes_resets and not traced.takes_adjoint
