"""jbptt.value_and_grad (hand-derived reverse scan) against jax.value_and_grad
of the same forward, for every cell, batch shape and link weights."""

import functools

import chex
import jax
import jax.numpy as jnp
import pytest
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import jbptt
from jbptt import truncation
from tests.helpers import CELLS, problem, random_w, rel_err

BATCHES = {"unbatched": (), "batched": (3,)}


def reference(model, argnums=(0, 1)):
    forward = jbptt.loss(model.cell, model.loss_fn)
    return jax.jit(jax.value_and_grad(forward, argnums=argnums, has_aux=True))


def ours(model, argnums=(0, 1)):
    return jax.jit(jbptt.value_and_grad(model.cell, model.loss_fn, argnums=argnums))


class MatchesAutodiff(chex.TestCase):
    """The core gradient check, run on jbptt's side both jitted and eagerly."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(
        cell_name=list(CELLS), batch=list(BATCHES), w_kind=["full", "random"]
    )
    def test_matches_autodiff(self, cell_name, batch, w_kind):
        model, params, h0, xs, ys = problem(CELLS[cell_name](), batch=BATCHES[batch])
        w = None if w_kind == "full" else random_w(xs.shape[0])
        (L_ref, hT_ref), g_ref = reference(model)(params, h0, xs, ys, w)
        grad_fn = jbptt.value_and_grad(model.cell, model.loss_fn, argnums=(0, 1))
        grad_fn = self.variant(grad_fn)
        (L, hT), g = grad_fn(params, h0, xs, ys, w)
        chex.assert_shape(L, ())
        chex.assert_trees_all_equal_shapes_and_dtypes(hT, h0)
        chex.assert_trees_all_equal_shapes_and_dtypes(g, g_ref)
        assert rel_err(L, L_ref) <= 1e-12
        assert rel_err(hT, hT_ref) <= 1e-12
        assert rel_err(g, g_ref) <= 1e-10


@pytest.mark.parametrize("cell_name", ["elman_tanh", "lstm", "gru", "flax_gru"])
def test_cross_entropy_readout(cell_name):
    model, params, h0, xs, ys = problem(CELLS[cell_name](), loss="xent", O=4)
    w = random_w(xs.shape[0], seed=3)
    _, g_ref = reference(model, 0)(params, h0, xs, ys, w)
    _, g = ours(model, 0)(params, h0, xs, ys, w)
    assert rel_err(g, g_ref) <= 1e-10


def test_full_bptt_weights_equal_default():
    model, params, h0, xs, ys = problem(CELLS["lstm"]())
    grad_fn = jbptt.value_and_grad(model.cell, model.loss_fn)
    _, g_none = grad_fn(params, h0, xs, ys)
    _, g_full = grad_fn(params, h0, xs, ys, truncation.full(xs.shape[0]))
    chex.assert_trees_all_equal(g_full, g_none)  # bit for bit
    assert rel_err(g_full, g_none) == 0.0


def test_zero_weights_truncate_everything():
    """With w ≡ 0 each step's loss only reaches its own step's weights."""
    model, params, h0, xs, ys = problem(CELLS["elman_tanh"]())
    T = xs.shape[0]
    _, (g, dh0) = ours(model)(params, h0, xs, ys, jnp.zeros(T))
    assert float(jnp.max(jnp.abs(dh0))) == 0.0

    def one_step_losses(p):  # every step's input state treated as a constant
        forward = jbptt.loss(model.cell, model.loss_fn)
        _, hs = jax.lax.scan(lambda h, x: model.cell.step(params, h, x), h0, xs[:-1])
        h_prev = jnp.concatenate([h0[None], hs])
        return sum(
            forward(p, h_prev[t], xs[t : t + 1], ys[t : t + 1])[0] for t in range(T)
        )

    assert rel_err(g, jax.jit(jax.grad(one_step_losses))(params)) <= 1e-10


@pytest.mark.parametrize("cell_name", ["elman_tanh", "lstm", "gru", "from_fn"])
def test_check_grads_against_finite_differences(cell_name):
    model, params, h0, xs, ys = problem(CELLS[cell_name](), T=5, batch=(2,))

    def f(p, h):
        h_T, outs = jbptt.rnn_scan(model.cell, p, h, xs)
        ls = jax.vmap(model.loss_fn, (None, 0, 0))(p, outs, ys)
        return jnp.sum(ls) + jnp.sum(jax.tree_util.tree_leaves(h_T)[0] ** 2)

    check_grads(jax.jit(f), (params, h0), order=1, modes=["rev"])


@pytest.mark.parametrize("cell_name", ["elman_relu", "lstm", "flax_lstm"])
def test_jit_equals_eager(cell_name):
    model, params, h0, xs, ys = problem(CELLS[cell_name]())
    w = random_w(xs.shape[0])
    grad_fn = jbptt.value_and_grad(model.cell, model.loss_fn)
    eager = grad_fn(params, h0, xs, ys, w)
    jitted = jax.jit(grad_fn)(params, h0, xs, ys, w)
    assert rel_err(jitted, eager) <= 1e-12


@pytest.mark.parametrize("cell_name", ["elman_tanh", "gru", "from_fn"])
def test_vmap_over_link_weights(cell_name):
    model, params, h0, xs, ys = problem(CELLS[cell_name]())
    T = xs.shape[0]
    ws = jnp.stack([truncation.full(T), truncation.tbptt(T, 2), random_w(T)])
    grad_fn = jbptt.value_and_grad(model.cell, model.loss_fn)
    batched = jax.jit(jax.vmap(grad_fn, in_axes=(None, None, None, None, 0)))
    (_, _), g_batched = batched(params, h0, xs, ys, ws)
    for i in range(ws.shape[0]):
        _, g_i = grad_fn(params, h0, xs, ys, ws[i])
        g_row = jax.tree_util.tree_map(lambda a, i=i: a[i], g_batched)
        assert rel_err(g_row, g_i) <= 1e-12


@pytest.mark.parametrize("cell_name", ["elman_tanh", "lstm", "flax_gru"])
def test_grad_of_vmap_equals_vmap_of_grad(cell_name):
    """Unbatched sequences vmapped over a batch axis vs the gradient of the sum."""
    model, params, h0, xs, ys = problem(CELLS[cell_name](), batch=(3,))
    # batch axis first for vmap: [B, T, ...]
    xs_b, ys_b = jnp.swapaxes(xs, 0, 1), jnp.swapaxes(ys, 0, 1)
    h0_b = h0
    w = random_w(xs.shape[0])
    grad_fn = jbptt.value_and_grad(model.cell, model.loss_fn)

    def loss_one(p, h, x, y):
        h_T, outs = jbptt.rnn_scan(model.cell, p, h, x, w)
        return jnp.sum(jax.vmap(model.loss_fn, (None, 0, 0))(p, outs, y))

    grads = jax.jit(jax.vmap(lambda h, x, y: grad_fn(params, h, x, y, w)[1]))(
        h0_b, xs_b, ys_b
    )
    vmap_of_grad = jax.tree_util.tree_map(lambda a: a.sum(0), grads)
    grad_of_vmap = jax.jit(
        jax.grad(
            lambda p: jnp.sum(jax.vmap(loss_one, (None, 0, 0, 0))(p, h0_b, xs_b, ys_b))
        )
    )(params)
    assert rel_err(grad_of_vmap, vmap_of_grad) <= 1e-10


def test_gradient_wrt_h0_and_final_state_cotangent():
    """A loss on h_T flows back into h0 through all links (and w[0])."""
    model, params, h0, xs, ys = problem(CELLS["gru"]())
    w = random_w(xs.shape[0]).at[0].set(0.5)

    def f(p, h, use_rnn_scan):
        if use_rnn_scan:
            h_T, _ = jbptt.rnn_scan(model.cell, p, h, xs, w)
        else:
            _, h_T = jbptt.loss(model.cell, model.loss_fn)(p, h, xs, ys, w)
        return jnp.sum(jnp.sin(h_T))

    g = jax.grad(f, argnums=(0, 1))
    assert rel_err(g(params, h0, True), g(params, h0, False)) <= 1e-10


# 6 random problems: test_matches_autodiff already covers every cell, batch shape
# and weight kind on a fixed problem; this one varies the shapes.
@settings(max_examples=6, deadline=None)
@given(
    T=st.integers(1, 9),
    batch=st.sampled_from([(), (1,), (2,), (2, 3)]),
    I=st.integers(1, 4),
    H=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    cell_name=st.sampled_from(["elman_tanh", "elman_relu", "lstm", "gru"]),
)
def test_property_core_equality(T, batch, I, H, seed, cell_name):
    model, params, h0, xs, ys = problem(
        CELLS[cell_name](), T=T, batch=batch, I=I, H=H, seed=seed
    )
    w = random_w(T, seed=seed + 1)
    (L_ref, _), g_ref = reference(model)(params, h0, xs, ys, w)
    (L, _), g = ours(model)(params, h0, xs, ys, w)
    assert rel_err(L, L_ref) <= 1e-12
    assert rel_err(g, g_ref) <= 1e-10


def test_packed_reverse_carry_round_trips_and_skips_unpackable_states():
    from jbptt._src.scan import _packer

    c, h = jnp.arange(6.0).reshape(2, 3), -jnp.arange(8.0).reshape(2, 4)
    pack, unpack = _packer((c, h))
    packed = pack((c, h))
    assert packed.shape == (2, 7)
    c2, h2 = unpack(packed)
    assert (c2 == c).all() and (h2 == h).all()
    for state in (h, (c, h.astype(jnp.float32)), (c, jnp.ones((3, 4)))):
        pack, unpack = _packer(state)  # one leaf, mixed dtypes, batch shapes
        assert pack(state) is state and unpack(state) is state


@pytest.mark.parametrize("cell_name", ["lstm", "gru"])
def test_forward_scan_states_match_the_step(cell_name):
    """LSTM reads its states back from packed residuals; GRU stacks them."""
    model, params, h0, xs, _ = problem(CELLS[cell_name](), T=5, batch=(2,))
    cell = model.cell  # the readout model's scoped cell keeps the rules' states
    assert (cell.rules.states is not None) == (cell_name == "lstm")
    h_T, outs, residuals = jbptt.forward(cell, params, h0, xs)
    hs = residuals.hs
    h, steps = h0, []
    for x in xs:
        h, _ = cell.step(params, h, x)
        steps.append(h)
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *steps)
    flat = jax.tree_util.tree_leaves
    for got, want in zip(flat(hs), flat(stacked), strict=True):
        assert rel_err(got, want) < 1e-12
    assert jax.tree_util.tree_all(
        jax.tree_util.tree_map(lambda a, b: (a == b[-1]).all(), h_T, hs)
    )


@pytest.mark.parametrize("cell_name", ["elman_tanh", "lstm", "gru", "from_fn"])
def test_steps_runs_the_leading_steps_only(cell_name):
    # rnn_scan(steps=n) in a buffer of T equals rnn_scan over xs[:n]: values,
    # final state and gradients (params, h0), with per-sequence link weights
    # and a reset, n traced under jit; outputs after n are zero.
    model, params, h0, xs, ys = problem(CELLS[cell_name](), T=9)
    cell, T = model.cell, xs.shape[0]
    w = random_w(T)[:, None] * jnp.ones((T, 3)).at[4, 1].set(0.0)
    resets = jnp.zeros((T, 3), bool).at[2, 0].set(True)

    def loss(p, h, n, full):
        kw = dict(resets=resets[:n] if full else resets)
        x, w_ = (xs[:n], w[:n]) if full else (xs, w)
        h_T, outs = jbptt.rnn_scan(cell, p, h, x, w_, steps=None if full else n, **kw)
        leaves = jax.tree_util.tree_leaves(h_T)
        return jnp.sum(jnp.sin(outs)) + sum(jnp.sum(a**2) for a in leaves), outs

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True),
                   static_argnums=3)  # fmt: skip
    for n in (1, 5, T):
        (L, outs), g = grad(params, h0, n, False)
        (L_ref, outs_ref), g_ref = jax.value_and_grad(
            loss, argnums=(0, 1), has_aux=True
        )(params, h0, n, True)
        assert rel_err(L, L_ref) <= 1e-12
        assert rel_err(g, g_ref) <= 1e-10
        assert rel_err(outs[:n], outs_ref) <= 1e-12
        if n < T:
            assert float(jnp.max(jnp.abs(outs[n:]))) == 0.0


def test_steps_refuses_what_it_cannot_run():
    model, params, h0, xs, _ = problem(CELLS["elman_tanh"]())
    scan = functools.partial(jbptt.rnn_scan, model.cell, params, h0, xs)
    with pytest.raises(ValueError, match=r"steps must be in \[1, T = 7\], got 0"):
        scan(steps=0)
    with pytest.raises(ValueError, match=r"steps must be in \[1, T = 7\], got 8"):
        scan(steps=8)
    with pytest.raises(TypeError, match="steps must be an int scalar"):
        scan(steps=2.5)
    with pytest.raises(TypeError, match="steps must be an int scalar"):
        scan(steps=jnp.ones(2, int))
    needs = r"steps= runs .* it needs adjoint=jbptt\.ReverseScan\(\) \(no checkpoint\)"
    with pytest.raises(ValueError, match=needs):
        scan(steps=3, adjoint=jbptt.ReverseScan(checkpoint="sqrt"))
    with pytest.raises(ValueError, match=needs):
        scan(steps=3, adjoint=jbptt.Autodiff())
    with pytest.raises(ValueError, match=needs):
        scan(steps=3, adjoint=jbptt.Budget(2))


# ------------------------------------------------- the adjoint= strategies ---


def _same(a, b):
    """Bitwise equal pytrees (the old keywords run the very same strategy)."""
    return all(
        bool(jnp.array_equal(x, y))
        for x, y in zip(
            jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True
        )
    )


@pytest.mark.parametrize(
    "old, new",
    [
        (dict(checkpoint="sqrt"), jbptt.ReverseScan(checkpoint="sqrt")),
        (dict(checkpoint=3), jbptt.ReverseScan(checkpoint=3)),
        (dict(mode="scan"), jbptt.ReverseScan()),
        (dict(mode="autodiff"), jbptt.Autodiff()),
        (dict(checkpoint=4, mode="autodiff"), jbptt.Autodiff(checkpoint=4)),
        (dict(checkpoint=jbptt.Budget(3)), jbptt.Budget(3)),
    ],
    ids=lambda v: repr(v),
)
def test_old_keywords_warn_and_give_the_same_result(old, new):
    model, params, h0, xs, ys = problem(CELLS["lstm"](), T=9, batch=(2,))
    w = random_w(xs.shape[0])
    spelling = "adjoint=jbptt." + repr(new).replace("(", r"\(").replace(")", r"\)")
    with pytest.warns(DeprecationWarning, match=spelling):
        vg_old = jbptt.value_and_grad(model.cell, model.loss_fn, **old)
    vg_new = jbptt.value_and_grad(model.cell, model.loss_fn, adjoint=new)
    assert _same(vg_old(params, h0, xs, ys, w), vg_new(params, h0, xs, ys, w))

    p = params

    def f(p, **kw):
        h_T, outs = jbptt.rnn_scan(model.cell, p, h0, xs, w, **kw)
        return jnp.sum(outs**2) + jnp.sum(jax.tree_util.tree_leaves(h_T)[0])

    with pytest.warns(DeprecationWarning, match=spelling):
        g_old = jax.grad(functools.partial(f, **old))(p)
    g_new = jax.grad(functools.partial(f, adjoint=new))(p)
    assert _same(g_old, g_new)


@pytest.mark.parametrize(
    "adjoint",
    [
        jbptt.ReverseScan(checkpoint="sqrt"),
        jbptt.ReverseScan(checkpoint=4),
        jbptt.Autodiff(),
        jbptt.Autodiff(checkpoint=3),
        jbptt.Budget(3),
        jbptt.Budget(2, 2),
    ],
    ids=repr,
)
def test_every_adjoint_gives_the_same_gradient(adjoint):
    # value_and_grad, rnn_scan and grads_for_weights all take the strategy.
    model, params, h0, xs, ys = problem(CELLS["gru"](), T=10, batch=(2,))
    seq = dict(
        lengths=jnp.array([10, 6]), resets=jnp.zeros((10, 2), bool).at[4, 0].set(True)
    )
    w = random_w(xs.shape[0])
    ref = jbptt.value_and_grad(model.cell, model.loss_fn, argnums=(0, 1))
    got = jbptt.value_and_grad(
        model.cell, model.loss_fn, argnums=(0, 1), adjoint=adjoint
    )
    (L0, h0_T), g0 = ref(params, h0, xs, ys, w, **seq)
    (L1, h1_T), g1 = got(params, h0, xs, ys, w, **seq)
    assert rel_err((L1, h1_T), (L0, h0_T)) <= 1e-12 and rel_err(g1, g0) <= 1e-10

    p = params

    def f(p, **kw):
        h_T, outs = jbptt.rnn_scan(model.cell, p, h0, xs, w, **seq, **kw)
        return jnp.sum(jnp.sin(outs)) + jnp.sum(h_T**2)

    assert rel_err(jax.grad(f)(p, adjoint=adjoint), jax.grad(f)(p)) <= 1e-10

    ws = jnp.stack([w, jnp.ones_like(w), truncation.tbptt(10, 3)])
    args = (model.cell, model.loss_fn, params, h0, xs, ys, ws)
    (L, h_T), g = jbptt.grads_for_weights(*args, adjoint=adjoint, **seq)
    (L_ref, h_ref), g_ref = jbptt.grads_for_weights(*args, **seq)
    assert rel_err((L, h_T), (L_ref, h_ref)) <= 1e-12 and rel_err(g, g_ref) <= 1e-10


def test_bad_adjoint_values_name_adjoint():
    model, params, h0, xs, ys = problem(CELLS["elman_tanh"]())
    vg = functools.partial(jbptt.value_and_grad, model.cell, model.loss_fn)
    with pytest.raises(TypeError, match="adjoint must be a reverse-pass strategy"):
        vg(adjoint="sqrt")
    with pytest.raises(TypeError, match="adjoint must be"):
        jbptt.rnn_scan(model.cell, params, h0, xs, adjoint="autodiff")
    with pytest.raises(ValueError, match="adjoint= replaces checkpoint= and mode="):
        vg(adjoint=jbptt.Autodiff(), mode="autodiff")
    with pytest.raises(ValueError, match="checkpoint must be None, 'sqrt'"):
        vg(adjoint=jbptt.ReverseScan(checkpoint=0))
    with pytest.raises(ValueError, match="Budget.max_states"):
        vg(adjoint=jbptt.Budget(1))
    with pytest.raises(ValueError, match="runs in the dtype of xs"):
        vg(adjoint=jbptt.Budget(3), compute_dtype=jnp.float32)
