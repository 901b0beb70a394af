r"""Exact RTRL for diagonal linear recurrences at ``O(|θ|)`` memory.

For a cell ``h_t = a_t ⊙ h_{t-1} + b_t`` whose gates ``(a_t, b_t) =
gates(θ, x_t)`` read the input only (:func:`jbptt.cells.diagonal`), unit
``j``'s state depends on θ only through ``a_t[j]`` and ``b_t[j]`` (Zucchet,
Meier, Schug, Mujika & Sacramento 2023, "Online learning of long-range
dependencies"). Differentiating the recurrence,

.. math::

    e_t = a_t ⊙ e_{t-1} + ∂(a_t ⊙ h_{t-1} + b_t)/∂θ \big|_{h_{t-1}},
    \qquad e_{-1} = 0,

with ``e_t = ∂h_t/∂θ`` itself: the state Jacobian ``D_t = diag(a_t)`` is
diagonal, so the influence of a parameter leaf keeps the shape it has,
per example, whenever each row ``j`` of the leaf feeds unit ``j`` only
(``nu_log [H]`` or ``B_re [H, I]`` of the LRU, ``W_z [H, I]`` of minGRU):
row ``j`` of ``e_t`` is ``∂h_t[j]/∂θ[j, …]``, and the immediate term for all
units is ONE vjp of ``θ ↦ a(θ, x_t) ⊙ h_{t-1} + b(θ, x_t)`` with cotangent
ones (row ``j`` of the summed vjp reaches unit ``j`` only). The gradient at
step ``t`` reads

.. math::

    g_t = ∂ℓ_t/∂θ \big|_{h_t} + \mathrm{Re} \textstyle\sum_j c_t[j]\, e_t[j],
    \qquad c_t = ∂ℓ_t/∂h_t

(JAX's convention for a complex state: a real loss changes by
``Re(Σ c·dh)``), which sums over a sequence to BPTT's gradient exactly.

Which leaves are per-unit is not read from shapes alone (a shared ``[H, I]``
projection feeding every unit has the same shape): :func:`layout` probes
``gates`` at trace time with concrete random params and input of the same
shapes (two draws), with tangents each in one row of the leaf (up to 16
rows), and calls the leaf per-unit only when no row moves another unit's
``(a, b)`` at either draw. A shared leaf keeps the full influence
``[H, *leaf.shape]`` per example (still exact); a leaf the gates do not
read (readout-only, like the LRU's ``C`` and ``D``) carries nothing.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jbptt._src import influence as flat
from jbptt._src import sequences, validation
from jbptt._src.cell import token_vocab

UNIT, SHARED, UNUSED = "unit", "shared", "unused"
tree_map = jax.tree_util.tree_map


class Layout(NamedTuple):
    """How each params leaf carries its influence, from one structural probe.

    Attributes:
      kinds: per params leaf (``jax.tree_util`` order): ``"unit"``,
        ``"shared"`` or ``"unused"``.
      H: the number of units (the state's last axis).
      dtype: the influence's dtype (the state's: complex for the LRU).
      sizes: per leaf, its number of entries.
    """

    kinds: tuple[str, ...]
    H: int
    dtype: Any
    sizes: tuple[int, ...]

    def numbers(self, B: int) -> int:
        """Carried numbers: ``B·Σ unit sizes + B·H·Σ shared sizes``."""
        unit = sum(n for k, n in zip(self.kinds, self.sizes, strict=True) if k == UNIT)
        shared = sum(
            n for k, n in zip(self.kinds, self.sizes, strict=True) if k == SHARED
        )
        return B * unit + B * self.H * shared

    def nbytes(self, B: int) -> int:
        """Carried bytes: :meth:`numbers` times the influence's item size."""
        return self.numbers(B) * np.dtype(self.dtype).itemsize


_CACHE: dict = {}


def layout(cell, params, x_b) -> Layout:
    """The per-leaf :class:`Layout` of ``cell.diagonal.gates`` for params of
    these shapes and one example's input ``x_b [I]``. Runs eagerly on shapes
    only (so it works inside ``jit``), once per cell and shapes."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    shapes = tuple((tuple(np.shape(a)), str(jnp.result_type(a))) for a in leaves)
    key = (cell, treedef, shapes, tuple(x_b.shape), str(x_b.dtype))
    if key not in _CACHE:
        # two random points, so an accidental zero (a saturated or
        # rectified gate) neither hides a leaf nor a unit it reaches
        vocab = token_vocab(cell)
        a, b = (_checked_probe(cell, treedef, shapes, x_b, s, vocab) for s in (0, 1))
        _CACHE[key] = a._replace(
            kinds=tuple(_merge(u, v) for u, v in zip(a.kinds, b.kinds, strict=True))
        )
    return _CACHE[key]


def _checked_probe(cell, treedef, shapes, x_b, seed: int, vocab) -> Layout:
    try:
        return _probe(cell.diagonal.gates, treedef, shapes, x_b, seed, vocab)
    except TypeError as e:
        if "jvp" not in str(e):
            raise
        raise TypeError(
            f"rtrl() differentiates the gates of {cell.name!r} in forward mode "
            "(jax.jvp: which params feed one unit each, and the influence of "
            f"shared ones), and they do not allow it: {e} "
            "Define that function with jax.custom_jvp, or train this cell with a "
            "reverse-mode estimator (TBPTT, ARTBP, BPTT)."
        ) from e


def _merge(u: str, v: str) -> str:
    if SHARED in (u, v):
        return SHARED
    return UNIT if UNIT in (u, v) else UNUSED


def _probe(gates, treedef, shapes, x_b, seed: int, vocab=None) -> Layout:
    rng = np.random.default_rng(seed)
    probe = [0.5 * rng.normal(size=s).astype(d) for s, d in shapes]
    if vocab is None:
        x = rng.normal(size=x_b.shape).astype(x_b.dtype)
    else:  # a token cell reads ids: a random real would look up a NaN row
        x = rng.integers(0, vocab, size=x_b.shape).astype(x_b.dtype)

    def ab(*ls):
        a, b = gates(jax.tree_util.tree_unflatten(treedef, ls), x)
        shape = jnp.broadcast_shapes(a.shape, b.shape)
        return jnp.broadcast_to(a, shape), jnp.broadcast_to(b, shape)

    def tangent_out(k, t_k):  # t_k [R, *leaf]: R tangents of leaf k at once
        def one(t):
            ts = [jnp.zeros(s, d) for s, d in shapes]
            ts[k] = t
            return jax.jvp(ab, tuple(probe), tuple(ts))[1]

        with jax.ensure_compile_time_eval():  # concrete even inside a trace
            da, db = jax.vmap(one)(jnp.asarray(t_k))
            return (np.asarray(da) != 0) | (np.asarray(db) != 0)  # [R, H] moved

    with jax.ensure_compile_time_eval():
        a0 = np.asarray(ab(*probe)[0])
    H = a0.shape[-1]
    kinds = tuple(
        _kind(tangent_out, k, s, d, H, rng) for k, (s, d) in enumerate(shapes)
    )
    dtype = jnp.result_type(a0.dtype, *(d for _, d in shapes))
    sizes = tuple(int(np.prod(s)) for s, _ in shapes)
    return Layout(kinds, H, dtype, sizes)


def _kind(tangent_out, k, shape, dtype, H, rng) -> str:
    if not tangent_out(k, rng.normal(size=(1, *shape)).astype(dtype)).any():
        return UNUSED
    if len(shape) == 0 or shape[0] != H:
        return SHARED
    # up to 16 rows spread over the units, each tangent in one row only: a
    # row that moves any unit but its own makes the leaf shared (a row that
    # moves nothing at this point is no evidence either way)
    rows = np.unique(np.linspace(0, H - 1, min(H, 16)).astype(int))
    t = np.zeros((rows.size, *shape), dtype)
    t[np.arange(rows.size), rows] = rng.normal(size=(rows.size, *shape[1:]))
    moved = tangent_out(k, t)
    moved[np.arange(rows.size), rows] = False
    return SHARED if moved.any() else UNIT


# --------------------------------------------------------------------------
# The influence: one array per params leaf (None for unused leaves).


def zeros(lay: Layout, params, B: int):
    """``e_{-1} = 0``: ``[B, *leaf]`` per unit leaf, ``[B, H, *leaf]`` per
    shared leaf, ``None`` for unused leaves (a tuple in leaf order)."""
    leaves = jax.tree_util.tree_leaves(params)
    return tuple(
        _zeros_leaf(k, np.shape(a), B, lay)
        for k, a in zip(lay.kinds, leaves, strict=True)
    )


def _zeros_leaf(kind, shape, B, lay):
    if kind == UNIT:
        return jnp.zeros((B,) + shape, lay.dtype)
    if kind == SHARED:
        return jnp.zeros((B, lay.H) + shape, lay.dtype)
    return None


def _as_complex_or_real(fn, complex_out: bool):
    """``fn``'s output split into real parts when complex (so that jax's real
    vjp and jacfwd give both the real and the imaginary derivative)."""
    if not complex_out:
        return fn
    return lambda *a: (lambda o: (jnp.real(o), jnp.imag(o)))(fn(*a))


def _immediate_units(gates, params, h_b, x_b, cplx):
    """Σ_j ∂(a ⊙ h_{t-1} + b)[j]/∂θ for one example: one vjp with cotangent
    ones; row j of a per-unit leaf is unit j's derivative."""
    return units_vjp(lambda p: affine_state(gates, p, h_b, x_b), params, cplx)


def affine_state(gates, params, h_b, x_b):
    a, b = gates(params, x_b)
    return a * h_b + b


def units_vjp(fn, params, cplx):
    """Row j of ``∂fn(θ)[j]/∂θ`` for per-unit leaves (``fn(θ) [H]``): one vjp
    with cotangent ones, two (real and imaginary parts) when complex."""
    g = _as_complex_or_real(fn, cplx)
    out, pull = jax.vjp(g, params)
    if not cplx:
        return pull(jnp.ones_like(out))[0]
    one, zero = jnp.ones_like(out[0]), jnp.zeros_like(out[0])
    re, im = pull((one, zero))[0], pull((zero, one))[0]
    return tree_map(lambda r, i: r + 1j * i, re, im)


def _immediate_shared(gates, params, k, h_b, x_b, cplx):
    """``∂(a ⊙ h_{t-1} + b)/∂θ_k``, ``[H, *leaf]``, for one example (forward
    mode over the leaf's entries; exact for any leaf)."""
    return leaf_jac(lambda p: affine_state(gates, p, h_b, x_b), params, k, cplx)


def leaf_jac(fn, params, k, cplx):
    """``∂fn(θ)/∂θ_k``, ``[H, *leaf]`` (forward mode over the leaf)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)

    def f(leaf):
        ls = list(leaves)
        ls[k] = leaf
        return fn(jax.tree_util.tree_unflatten(treedef, ls))

    jac = jax.jacfwd(_as_complex_or_real(f, cplx))(leaves[k])
    return jac[0] + 1j * jac[1] if cplx else jac


def update(lay: Layout, gates, params, infl, H_prev, X):
    """``e_t = a_t ⊙ e_{t-1} + ∂(a_t ⊙ h_{t-1} + b_t)/∂θ`` for every leaf.

    Args:
      lay: the :class:`Layout`.
      gates: the cell's gates.
      params: the params.
      infl: ``e_{t-1}`` (:func:`zeros`).
      H_prev: ``h_{t-1}`` per example ``[B, H]``.
      X: the inputs per example ``[B, I]``.

    Returns:
      ``e_t``, the same structure as ``infl``.
    """
    cplx = jnp.issubdtype(lay.dtype, jnp.complexfloating)
    a, b = gates(params, X)
    a = jnp.broadcast_to(a, jnp.broadcast_shapes(a.shape, b.shape))  # [B, H]
    units = jax.vmap(_immediate_units, in_axes=(None, None, 0, 0, None))(
        gates, params, H_prev, X, cplx
    )
    new = []
    for k, (kind, e, f) in enumerate(
        zip(lay.kinds, infl, jax.tree_util.tree_leaves(units), strict=True)
    ):
        if kind == UNUSED:
            new.append(None)
            continue
        if kind == SHARED:
            f = jax.vmap(_immediate_shared, in_axes=(None, None, None, 0, 0, None))(
                gates, params, k, H_prev, X, cplx
            )
        a_e = a.reshape(a.shape + (1,) * (e.ndim - 2))  # unit j's row of e
        new.append((a_e * e + f).astype(e.dtype))
    return tuple(new)


def read(lay: Layout, params, infl, c):
    """``Re Σ_b Σ_j c[b, j] e[b, j]`` per leaf, a pytree like ``params``
    (zeros for unused leaves). ``c [B, H]`` is ``∂ℓ_t/∂h_t``."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    out = []
    for kind, e, p in zip(lay.kinds, infl, leaves, strict=True):
        if kind == UNUSED:
            out.append(jnp.zeros_like(p))
            continue
        e3 = e.reshape(e.shape[:2] + (-1,))  # [B, H, n]
        if kind == UNIT and e3.shape[0] <= UNROLLED_BATCH:
            g = _sum_over_examples(c, e3)
        else:  # a dot_general: XLA:CPU reduces a leading axis slowly
            spec = "bj,bjn->jn" if kind == UNIT else "bj,bjn->n"
            g = jnp.real(jnp.einsum(spec, c.astype(e.dtype), e3))
        out.append(g.reshape(np.shape(p)).astype(p.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


# A unit leaf's read-out Re Σ_b c[b, j] e[b, j, n] is written as B terms
# added elementwise up to this many examples: XLA:CPU fuses them (with the
# update that produced e) into one pass over e, where the einsum it
# replaced ran as a batched product of [1, B] by [B, n] per unit, slower
# than the update itself (benchmarks/log/2026-12-07-diagonal-chunked.md).
UNROLLED_BATCH = 32


def _sum_over_examples(c, e3):
    """``Re Σ_b c[b, :, None] e3[b]`` (``c [B, H]``, ``e3 [B, H, n]``), the
    real part taken term by term (``Re c Re e − Im c Im e``)."""
    total = None
    for b in range(e3.shape[0]):
        c_b, e_b = c[b, :, None], e3[b]
        if jnp.iscomplexobj(e_b):
            c_b = c_b.astype(e_b.dtype)
            term = jnp.real(c_b) * jnp.real(e_b) - jnp.imag(c_b) * jnp.imag(e_b)
        else:
            term = c_b.astype(e_b.dtype) * e_b
        total = term if total is None else total + term
    return total


# --------------------------------------------------------------------------
# One step of the estimator, and what it carries.


def per_example(x_t):
    batch_shape = tuple(x_t.shape[:-1])
    B = int(np.prod(batch_shape))
    return batch_shape, B, x_t.reshape((B,) + x_t.shape[-1:])


def init_influence(cell, params, h0, x, max_bytes: int, name: str):
    """``e_{-1} = 0`` for a batch shaped like ``x [*batch, I]`` (checked
    against ``max_bytes`` at trace time)."""
    batch_shape, B, X = per_example(x)
    check_params(params)
    validation.check_h0(cell, params, h0, batch_shape)
    lay = layout(cell, params, X[0])
    fp = footprint(cell, params, h0, x)
    flat.check_bytes(name, fp, max_bytes, "the diagonal influence (B·|θ| numbers)")
    return zeros(lay, params, B)


def restart(reset, h_reset, h, infl):
    """Sequences starting an episode (``reset [*batch]``): state ``h_reset``,
    influence zero."""
    r = jnp.reshape(reset, (-1,))

    def zero(e):
        return jnp.where(r.reshape(r.shape + (1,) * (e.ndim - 1)), 0, e).astype(e.dtype)

    return sequences.select(reset, h_reset, h), tree_map(zero, infl)


def step(cell, loss_fn, params, h, infl, x_t, y_t):
    """One step: ``(h_t, e_t, ℓ_t, g_t)`` from ``h_{t-1}``, ``e_{t-1}``."""
    batch_shape, B, X = per_example(x_t)
    lay = layout(cell, params, X[0])
    gates, readout = cell.diagonal.gates, cell.diagonal.readout
    a, b = gates(params, x_t)
    h_new = a * h + b  # h_t = a_t ⊙ h_{t-1} + b_t

    def loss_at(p, hn):  # ℓ_t through the readout, h_t held
        return loss_fn(p, readout(p, hn, x_t), y_t)

    loss, (g_direct, c) = jax.value_and_grad(loss_at, argnums=(0, 1))(params, h_new)
    infl = update(lay, gates, params, infl, h.reshape(B, lay.H), X)
    g = tree_map(jnp.add, g_direct, read(lay, params, infl, c.reshape(B, lay.H)))
    return h_new, infl, loss, g


class DiagonalFootprint(NamedTuple):
    """:class:`~jbptt._src.influence.Footprint` of the diagonal influence,
    with what it is.

    Attributes:
      state_bytes: carried bytes, :meth:`Layout.nbytes`.
      work_bytes: one step's immediate term (as many numbers again); with
        windows of ``w`` steps (:func:`jbptt.forward_mode.rtrl`'s
        ``window``), about ``8·w·B·H`` numbers of the state's dtype more: a
        window's gates ``a, b``, states ``h_{s-1}, h_s``, products ``P_s``
        and their cotangents.
      flops_per_step: about 4 per carried number (multiply, add, read-out).
      what: a sentence: exact, and the memory formula with its numbers.
    """

    state_bytes: int
    work_bytes: int
    flops_per_step: float
    what: str


WINDOW_ARRAYS = 8  # a window's [w, B, H] arrays, about (DiagonalFootprint)


def window_bytes(lay: Layout, B: int, window: int) -> int:
    """What windows of ``window`` steps work in besides the step's term:
    about ``WINDOW_ARRAYS·window·B·H`` numbers of the state's dtype (0 for
    step by step)."""
    if window <= 1:
        return 0
    return WINDOW_ARRAYS * window * B * lay.H * np.dtype(lay.dtype).itemsize


def footprint(cell, params, h0, x, window: int = 1) -> DiagonalFootprint:
    """The :class:`DiagonalFootprint` of ``cell`` on a batch shaped like
    ``x [*batch, I]``, stepping ``window`` steps at once."""
    _, B, X = per_example(x)
    lay = layout(cell, params, X[0])
    n = lay.numbers(B)
    unit, shared = (
        sum(n for k, n in zip(lay.kinds, lay.sizes, strict=True) if k == kind)
        for kind in (UNIT, SHARED)
    )
    size = np.dtype(lay.dtype).itemsize
    what = (
        f"exact (diagonal influence): B·Σ per-unit + B·H·Σ shared = {B}·{unit} + "
        f"{B}·{lay.H}·{shared} = {n:,} numbers × {size} bytes "
        f"({np.dtype(lay.dtype).name}) = {lay.nbytes(B):,} bytes"
    )
    extra = window_bytes(lay, B, window)
    if extra:
        what += (
            f"; windows of {window} steps work in about "
            f"{WINDOW_ARRAYS}·{window}·{B}·{lay.H} numbers = {extra:,} bytes more"
        )
    return DiagonalFootprint(lay.nbytes(B), lay.nbytes(B) + extra, float(4 * n), what)


def check_params(params) -> None:
    """Params must be real floating arrays (the influence is their derivative)."""
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves or not all(
        jnp.issubdtype(jnp.result_type(a), jnp.floating) for a in leaves
    ):
        raise TypeError("params must be a non-empty pytree of floating arrays.")


def parts(name: str, max_bytes: int, dense, state_cls, window: int = 1):
    """``init``, ``step`` and ``footprint`` that take the diagonal influence
    on a diagonal cell (``cell.diagonal`` set) and ``dense``'s otherwise;
    ``state_cls(h, influence)`` builds the carry; ``window``: the steps
    taken at once where params stay fixed (in ``footprint``'s work)."""
    dense_init, dense_step, dense_cost = dense

    def init(cell, params, h0, x):
        if cell_is_diagonal(cell):
            return state_cls(h0, init_influence(cell, params, h0, x, max_bytes, name))
        return dense_init(cell, params, h0, x)

    def step_(cell, loss_fn, key, params, state, x_t, y_t, reset=None, h_reset=None):
        if not cell_is_diagonal(cell):
            return dense_step(
                cell, loss_fn, key, params, state, x_t, y_t, reset, h_reset
            )
        h, infl = state
        if reset is not None:  # episode start: h_{t-1} := h_reset, e_{t-1} := 0
            h, infl = restart(reset, h_reset, h, infl)
        h, infl, loss, g = step(cell, loss_fn, params, h, infl, x_t, y_t)
        return state_cls(h, infl), (loss, g)

    def cost(cell, params, h0, x):
        if cell_is_diagonal(cell):
            return footprint(cell, params, h0, x, window)
        return dense_cost(cell, params, h0, x)

    return init, step_, cost


def cell_is_diagonal(cell) -> bool:
    """Whether ``cell`` carries diagonal rules (``cell.diagonal``)."""
    return getattr(cell, "diagonal", None) is not None


def check_real_state(name: str, cell, h) -> None:
    """The flat influence (dense RTRL, UORO, SnAp-1) needs a real state."""
    if any(jnp.iscomplexobj(a) for a in jax.tree_util.tree_leaves(h)):
        hint = "; rtrl() is exact on it" if cell_is_diagonal(cell) else ""
        raise TypeError(
            f"{name}: the flat influence needs a real state, got a complex state "
            f"from {cell.name}{hint}."
        )


_WHAT = {
    "rtrl": "exact (the full influence matrix J, B·S·P numbers)",
    "uoro": "unbiased (a rank-one influence, B·(S + P) numbers)",
    "snap1": "biased unless D_t is diagonal on the pattern (B·k·P numbers)",
}


def report(name: str, cell, fp) -> str:
    """One line: what the influence is (exact or not) and its carried bytes
    (:meth:`~jbptt.forward_mode.OnlineEstimator.cost_report`)."""
    what = getattr(fp, "what", None) or _WHAT.get(name, name)
    return f"{name} on {cell.name}: {what}; carries {int(fp.state_bytes):,} bytes"
