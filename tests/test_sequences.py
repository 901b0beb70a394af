"""Variable lengths, padding masks, resets and forward mode through the core.

Every gradient is compared in float64 to 1e-10 with ``jax.grad`` of the plain
``lax.scan`` forward (``jbptt.loss``, link weights through ``link``), and the
masked and reset batches also with independent per-sequence / per-episode
computations that never see a mask.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import CELLS, problem, random_w, rel_err, tree_allclose

import jbptt
from jbptt import estimators

# One rules cell with a one-leaf state, one with the packed (c, h) state, one
# generic cell with a two-leaf pytree state.
SEQ_CELLS = ["elman_tanh", "lstm", "from_fn"]
T, B = 6, 3
LENGTHS = np.array([6, 2, 4])
RESETS = np.zeros((T, B), bool)
RESETS[[2, 4], 0] = True
RESETS[3, 1] = True


def _reference(model, argnums=(0, 1), **kw):
    return jax.value_and_grad(
        jbptt.loss(model.cell, model.loss_fn, **kw), argnums, has_aux=True
    )


def _check_against_reference(model, params, h0, xs, ys, w, **seq):
    (L, h_T), g = jbptt.value_and_grad(model.cell, model.loss_fn, argnums=(0, 1))(
        params, h0, xs, ys, w, **seq
    )
    (L_ref, h_ref), g_ref = _reference(model)(params, h0, xs, ys, w, **seq)
    assert rel_err(L, L_ref) <= 1e-12
    assert tree_allclose(h_T, h_ref, 1e-12)
    assert tree_allclose(g, g_ref, 1e-10)
    return (L, h_T), g


@pytest.mark.parametrize("name", SEQ_CELLS)
def test_lengths_and_resets_match_autodiff(name):
    model, params, h0, xs, ys = problem(CELLS[name](), T=T, batch=(B,))
    w = random_w(T)
    _check_against_reference(model, params, h0, xs, ys, w, lengths=LENGTHS)
    _check_against_reference(model, params, h0, xs, ys, w, resets=RESETS)
    _check_against_reference(
        model, params, h0, xs, ys, w, lengths=LENGTHS, resets=RESETS
    )


def test_gru_and_per_sequence_link_weights_match_autodiff():
    # w [T, B]: one link weight per sequence, in backward and in the reference.
    model, params, h0, xs, ys = problem(CELLS["gru"](), T=T, batch=(B,))
    w = jnp.stack([random_w(T, seed=s) for s in range(B)], axis=1)
    _check_against_reference(model, params, h0, xs, ys, w, lengths=LENGTHS)
    _check_against_reference(model, params, h0, xs, ys, w, resets=RESETS)
    # backward directly, with dh_T as well as douts
    cell, cp = model.cell, params
    seq = dict(lengths=LENGTHS, resets=RESETS)
    h_T, outs, res = jbptt.forward(cell, cp, h0, xs, **seq)
    douts, dh_T = jnp.cos(outs), jnp.sin(h_T)

    def f(p, h0):
        h_T, outs = jbptt.rnn_scan(cell, p, h0, xs, w, adjoint=jbptt.Autodiff(), **seq)
        return jnp.sum(outs * douts) + jnp.sum(h_T * dh_T)

    dp, dh0, _ = jbptt.backward(cell, cp, res, w, dh_T, douts)
    assert tree_allclose((dp, dh0), jax.grad(f, (0, 1))(cp, h0), 1e-10)


@pytest.mark.parametrize("name", ["lstm", "from_fn"])
def test_masked_batch_is_the_sum_of_its_sequences(name):
    # Independent of any masking code: each sequence alone, unbatched, cut to
    # its own length.
    model, params, h0, xs, ys = problem(CELLS[name](), T=T, batch=(B,))
    vg = jbptt.value_and_grad(model.cell, model.loss_fn)
    (L, h_T), g = vg(params, h0, xs, ys, lengths=jnp.asarray(LENGTHS))
    per_seq = []
    for b, n in enumerate(LENGTHS):
        h0_b = jax.tree_util.tree_map(lambda a, b=b: a[b], h0)
        per_seq.append(vg(params, h0_b, xs[:n, b], ys[:n, b]))
    assert rel_err(L, sum(Lb for (Lb, _), _ in per_seq)) <= 1e-12
    for b, ((_, h_b), _) in enumerate(per_seq):
        assert tree_allclose(jax.tree_util.tree_map(lambda a, b=b: a[b], h_T), h_b)
    g_sum = jax.tree_util.tree_map(lambda *gs: sum(gs), *(gb for _, gb in per_seq))
    assert tree_allclose(g, g_sum, 1e-10)


@pytest.mark.parametrize("name", ["elman_tanh", "from_fn"])
def test_reset_stream_trains_as_separate_episodes(name):
    # One unbatched stream of three concatenated episodes (lengths 3, 2, 4),
    # reset at each start: gradient = sum of the episodes' own gradients, each
    # started from h0, and h_T = the last episode's final state.
    model, params, h0, xs, ys = problem(CELLS[name](), T=9, batch=())
    starts, ends = [0, 3, 5], [3, 5, 9]
    resets = jnp.zeros(9, bool).at[jnp.array(starts)].set(True)
    vg = jbptt.value_and_grad(model.cell, model.loss_fn, argnums=(0, 1))
    (L, h_T), g = vg(params, h0, xs, ys, resets=resets)
    eps = [vg(params, h0, xs[s:e], ys[s:e]) for s, e in zip(starts, ends, strict=True)]
    assert rel_err(L, sum(Le for (Le, _), _ in eps)) <= 1e-12
    assert tree_allclose(h_T, eps[-1][0][1])
    g_sum = jax.tree_util.tree_map(lambda *gs: sum(gs), *(ge for _, ge in eps))
    assert tree_allclose(g, g_sum, 1e-10)


def test_non_prefix_mask_and_checkpointing_match_autodiff():
    # A [T, B] bool mask with holes (padding inside a sequence: skipped steps),
    # and the same batch run in checkpointed segments.
    model, params, h0, xs, ys = problem(CELLS["lstm"](), T=T, batch=(B,))
    mask = jax.random.bernoulli(jax.random.key(3), 0.7, (T, B)).at[0].set(True)
    w = random_w(T)
    seq = dict(lengths=mask, resets=jnp.asarray(RESETS))
    (L, h_T), g = _check_against_reference(model, params, h0, xs, ys, w, **seq)
    for checkpoint in ("sqrt", 4):
        vg = jbptt.value_and_grad(
            model.cell,
            model.loss_fn,
            argnums=(0, 1),
            adjoint=jbptt.ReverseScan(checkpoint=checkpoint),
        )
        (L_c, h_c), g_c = vg(params, h0, xs, ys, w, **seq)
        assert rel_err(L_c, L) <= 1e-12
        assert tree_allclose(h_c, h_T, 1e-12)
        assert tree_allclose(g_c, g, 1e-10)
        h_r, outs_r = jbptt.rnn_scan(
            model.cell,
            params,
            h0,
            xs,
            w,
            adjoint=jbptt.ReverseScan(checkpoint=checkpoint),
            **seq,
        )
        h_s, outs_s = jbptt.rnn_scan(model.cell, params, h0, xs, w, **seq)
        assert tree_allclose((h_r, outs_r), (h_s, outs_s), 1e-12)


def test_padded_outputs_are_zero_and_state_frozen():
    cell = CELLS["elman_tanh"]()
    model, params, h0, xs, ys = problem(cell, T=T, batch=(B,))
    p = params["cell"]
    h_T, outs = jbptt.rnn_scan(model.cell, params, h0, xs, lengths=LENGTHS)
    pad = np.arange(T)[:, None] >= LENGTHS[None]
    assert np.all(np.asarray(outs)[pad] == 0.0)
    # h_T[b] is the state after step lengths[b] - 1 of the unmasked scan
    _, outs_full = jbptt.rnn_scan(cell, p, h0, xs)
    expect = outs_full[LENGTHS - 1, np.arange(B)]
    assert tree_allclose(h_T, expect, 1e-12)


def test_sweep_gradient_fn_and_grads_for_weights_take_lengths_and_resets():
    model, params, h0, xs, ys = problem(CELLS["gru"](), T=T, batch=(B,))
    seq = dict(lengths=jnp.asarray(LENGTHS), resets=jnp.asarray(RESETS))
    ws = jnp.stack([random_w(T, seed=s) for s in range(2)])
    vg = jbptt.value_and_grad(model.cell, model.loss_fn)
    refs = [vg(params, h0, xs, ys, w, **seq)[1] for w in ws]
    prob = estimators.Problem(model.cell, model.loss_fn, params, h0, xs, ys)
    grad = estimators.gradient_fn(prob, **seq)
    for w, ref in zip(ws, refs, strict=True):
        assert tree_allclose(grad(w, jnp.ones(T)), ref, 1e-10)
    _, g = jbptt.grads_for_weights(
        model.cell, model.loss_fn, params, h0, xs, ys, ws, **seq
    )
    for k, ref in enumerate(refs):
        assert tree_allclose(jax.tree_util.tree_map(lambda a, k=k: a[k], g), ref, 1e-10)


def test_problem_keeps_lengths_and_resets_through_pytree_maps():
    model, params, h0, xs, ys = problem(CELLS["elman_tanh"](), T=T, batch=(B,))
    prob = estimators.Problem(
        model.cell, model.loss_fn, params, h0, xs, ys,
        lengths=jnp.asarray(LENGTHS), resets=jnp.asarray(RESETS),
    )  # fmt: skip

    def twice(a):  # numbers doubled; functions and bools kept
        return a * 2 if getattr(a, "dtype", None) not in (None, bool) else a

    doubled = jax.tree_util.tree_map(twice, prob)
    assert isinstance(doubled, estimators.Problem)
    np.testing.assert_array_equal(doubled.lengths, 2 * LENGTHS)
    np.testing.assert_array_equal(doubled.resets, RESETS)
    assert doubled.cell == model.cell
    paths = [jax.tree_util.keystr(k) for k, _ in
             jax.tree_util.tree_flatten_with_path(prob)[0]]  # fmt: skip
    assert paths[-2:] == [".lengths", ".resets"]
    bare = jax.tree_util.tree_map(lambda a: a, prob._replace(resets=None))
    assert bare.resets is None and bare.lengths is not None


def test_traced_lengths_under_jit_and_vmap():
    model, params, h0, xs, ys = problem(CELLS["elman_tanh"](), T=T, batch=(B,))
    vg = jbptt.value_and_grad(model.cell, model.loss_fn)
    jitted = jax.jit(lambda n, r: vg(params, h0, xs, ys, lengths=n, resets=r))
    (L, _), g = jitted(jnp.asarray(LENGTHS), jnp.asarray(RESETS))
    (L_ref, _), g_ref = vg(params, h0, xs, ys, lengths=LENGTHS, resets=RESETS)
    assert rel_err(L, L_ref) <= 1e-12 and tree_allclose(g, g_ref, 1e-10)
    # vmap over two length vectors = the two separate gradients
    ns = jnp.asarray(np.stack([LENGTHS, [1, 6, 3]]))
    gs = jax.vmap(lambda n: vg(params, h0, xs, ys, lengths=n)[1])(ns)
    for k in range(2):
        ref = vg(params, h0, xs, ys, lengths=ns[k])[1]
        assert tree_allclose(jax.tree_util.tree_map(lambda a, k=k: a[k], gs), ref)


# ------------------------------------------------------------ forward mode ---


@pytest.mark.parametrize("name", ["lstm", "from_fn"])
def test_jvp_through_rnn_scan_autodiff_mode(name):
    cell = CELLS[name]()
    _, params, h0, xs, _ = problem(cell, T=5, batch=(2,))
    p = params["cell"]
    tangent = jax.tree_util.tree_map(jnp.cos, p)

    def plain(p):  # the plain lax.scan of cell.step
        return jax.lax.scan(lambda h, x: cell.step(p, h, x), h0, xs)

    def ours(p):
        return jbptt.rnn_scan(cell, p, h0, xs, adjoint=jbptt.Autodiff(), lengths=None)

    out, tan = jax.jvp(ours, (p,), (tangent,))
    out_ref, tan_ref = jax.jvp(plain, (p,), (tangent,))
    assert tree_allclose((out, tan), (out_ref, tan_ref), 1e-12)
    # jacfwd too, and the default mode says what to do
    jac = jax.jacfwd(lambda p: ours(p)[0])(p)
    assert tree_allclose(jac, jax.jacfwd(lambda p: plain(p)[0])(p), 1e-12)
    with pytest.raises(TypeError, match=r"adjoint=jbptt\.Autodiff\(\)"):
        jax.jvp(lambda p: jbptt.rnn_scan(cell, p, h0, xs), (p,), (tangent,))


def test_forward_over_reverse_through_value_and_grad_autodiff_mode():
    # Hessian-vector product of the masked loss: jvp of the gradient.
    model, params, h0, xs, ys = problem(CELLS["gru"](), T=5, batch=(2,))
    seq = dict(
        lengths=jnp.array([5, 3]), resets=jnp.zeros((5, 2), bool).at[2, 0].set(True)
    )
    v = jax.tree_util.tree_map(jnp.sin, params)
    vg_ad = jbptt.value_and_grad(model.cell, model.loss_fn, adjoint=jbptt.Autodiff())
    vg = jbptt.value_and_grad(model.cell, model.loss_fn)
    assert tree_allclose(
        vg_ad(params, h0, xs, ys, **seq), vg(params, h0, xs, ys, **seq)
    )
    _, hvp = jax.jvp(lambda p: vg_ad(p, h0, xs, ys, **seq)[1], (params,), (v,))
    ref = jax.grad(
        lambda p: jax.tree_util.tree_reduce(
            jnp.add,
            jax.tree_util.tree_map(
                lambda a, b: jnp.sum(a * b), vg(p, h0, xs, ys, **seq)[1], v
            ),
        )
    )(params)  # Hv = ∇(g(θ)·v), by reverse over jbptt's reverse scan
    assert tree_allclose(hvp, ref, 1e-9)


# -------------------------------------------------------------- bad input ---


@pytest.mark.parametrize(
    ("kw", "err", "match"),
    [
        (dict(lengths=np.array([6, 2])), ValueError, r"lengths must have the batch"),
        (
            dict(lengths=np.array([6.0, 2.0, 3.0])),
            TypeError,
            "lengths must be integers",
        ),
        (
            dict(lengths=np.array([7, 2, 3])),
            ValueError,
            r"lengths must lie in \[1, T\]",
        ),
        (
            dict(lengths=np.array([0, 2, 3])),
            ValueError,
            r"lengths must lie in \[1, T\]",
        ),
        (dict(lengths=np.ones((T, B))), TypeError, "mask must be boolean"),
        (
            dict(lengths=np.ones((T, 2), bool)),
            ValueError,
            "lengths must have the batch",
        ),
        (
            dict(resets=np.zeros((T - 1, B), bool)),
            ValueError,
            r"resets must have shape",
        ),
        (dict(resets=np.zeros((T, B))), TypeError, "resets must be boolean"),
        (dict(resets=[[True]]), TypeError, "resets must be a boolean array"),
    ],
)
def test_bad_lengths_and_resets(kw, err, match):
    model, params, h0, xs, ys = problem(CELLS["elman_tanh"](), T=T, batch=(B,))
    vg = jbptt.value_and_grad(model.cell, model.loss_fn)
    with pytest.raises(err, match=match):
        vg(params, h0, xs, ys, **kw)


def test_bad_link_weights_ys_and_mode():
    model, params, h0, xs, ys = problem(CELLS["elman_tanh"](), T=T, batch=(B,))
    vg = jbptt.value_and_grad(model.cell, model.loss_fn)
    with pytest.raises(ValueError, match=r"w \(link weights\) must have shape"):
        vg(params, h0, xs, ys, jnp.ones((T, B + 1)))
    with pytest.raises(ValueError, match="with lengths, ys must be time-major"):
        vg(params, h0, xs, ys[:, 0], lengths=LENGTHS)
    with pytest.raises(ValueError, match="Unknown mode 'forward'"):
        jbptt.value_and_grad(model.cell, model.loss_fn, mode="forward")
    with pytest.raises(TypeError, match="compute_dtype must be None or a floating"):
        jbptt.value_and_grad(model.cell, model.loss_fn, compute_dtype=jnp.int32)


def test_reset_state_lets_a_stream_run_in_segments():
    # Online training's case: the second segment starts from the carried
    # state, but its resets restart from the stream's initial (zero) state.
    model, params, h0, xs, ys = problem(CELLS["lstm"](), T=8, batch=(2,))
    zero = model.cell.initial_state(params, (2,))
    resets = jnp.zeros((8, 2), bool).at[3, 0].set(True).at[6, 1].set(True)
    seq = dict(resets=resets, reset_state=zero)
    w = jnp.ones(8).at[5].set(0.0)  # TBPTT cut where the second segment starts
    vg = jbptt.value_and_grad(model.cell, model.loss_fn)
    (L, h_T), g = vg(params, h0, xs, ys, w, **seq)
    ref = jax.value_and_grad(jbptt.loss(model.cell, model.loss_fn), has_aux=True)
    (L_ref, h_ref), g_ref = ref(params, h0, xs, ys, w, **seq)
    assert rel_err(L, L_ref) <= 1e-12 and tree_allclose(h_T, h_ref, 1e-12)
    assert tree_allclose(g, g_ref, 1e-10)
    (L1, h_mid), g1 = vg(
        params, h0, xs[:5], ys[:5], resets=resets[:5], reset_state=zero
    )
    (L2, h_end), g2 = vg(
        params, h_mid, xs[5:], ys[5:], resets=resets[5:], reset_state=zero
    )
    assert rel_err(L1 + L2, L) <= 1e-12 and tree_allclose(h_end, h_T, 1e-12)
    assert tree_allclose(jax.tree_util.tree_map(jnp.add, g1, g2), g, 1e-10)
    with pytest.raises(ValueError, match="reset_state"):
        vg(params, h0, xs, ys, resets=resets, reset_state=zero[0][0])
