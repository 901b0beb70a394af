r"""The forward and reverse pass of a diagonal cell over all steps at once.

A diagonal cell (:func:`jbptt.cells.diagonal`) is ``h_t = a_t ⊙ h_{t-1} +
b_t`` with ``(a_t, b_t) = gates(θ, x_t)`` read from the input only, and
``out_t = readout(θ, h_t, x_t)``. Its forward here is: the gates on all steps
(GEMMs), the elementwise recurrence as one scan, the readout on all steps.
Its reverse pass with link weights ``w`` (docs/design.md, "Diagonal
recurrences") is the same elementwise recurrence run backwards, because
``∂h_t/∂h_{t-1} = diag(a_t)``:

.. math::

    E_t = g_t + w_{t+1} a_{t+1} ⊙ E_{t+1}, \qquad E_{T-1} = g_{T-1} + \bar h_T,

with ``g_t = ∂ℓ_t/∂h_t`` through the readout and ``E_t`` the cotangent of
``h_t``; then ``∂L/∂a_t = E_t ⊙ h_{t-1}``, ``∂L/∂b_t = E_t`` and ONE vjp of
``gates`` (and one of ``readout``) over all steps gives the parameters'
gradients. JAX's complex convention (a vjp of ``a * h`` sends ``c`` to
``c * h`` and ``c * a``, no conjugate) holds for complex states.

Padding, resets and ``steps`` fold into the pairs ``(a_t, b_t)``: a padded
step is ``(1, 0)`` (the state is kept), a reset step ``(0, a_t h_reset +
b_t)``; in the adjoint a padded step passes the cotangent through unweighted
and a reset step sends ``w_t a_t ⊙ E_t`` to ``h_reset`` instead of
``h_{t-1}``, exactly as the generic reverse scan (:mod:`jbptt._src.scan`).

The recurrence, forward and adjoint, runs by one of the methods of
:mod:`jbptt._src.diagonal_solve` (``"auto"``: the one measured fastest on the
backend).

The sequential method runs forward and reverse chunk by chunk
(:func:`chunk_steps`) and keeps for the reverse pass only the state entering
each chunk: the reverse pass recomputes a chunk's gates, states and readout
from its inputs, so value+grad keeps no ``[T, ...]`` array but the outputs
(``saved.res`` is a :class:`Chunked`; ``saved.hs`` still holds every state
for :func:`jbptt.forward`'s callers, and XLA drops it when nothing reads it).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jbptt._src import dtypes, sequences
from jbptt._src.diagonal_solve import (
    AUTO_HOW,
    resolve_method,
    sequential,
    solve,
    solve_reverse,
)

tree_map = jax.tree_util.tree_map


class Saved(NamedTuple):
    """What the reverse pass reads from the forward (the fields of
    :class:`jbptt._src.scan.Residuals`; ``res`` and ``steps`` stay ``None``:
    ``steps`` is folded into ``mask``)."""

    h0: Any
    xs: jax.Array
    hs: jax.Array
    res: Any = None
    mask: Any = None
    resets: Any = None
    h_reset: Any = None
    steps: Any = None


def check_cell(cell, strategy: str = "DiagonalScan") -> None:
    """A ``TypeError`` naming ``cell`` unless it is diagonal or a stack of
    diagonal cells."""
    stacked = getattr(cell, "diagonal_layers", None) is not None
    if getattr(cell, "diagonal", None) is None and not stacked:
        name = getattr(cell, "name", type(cell).__name__)
        raise TypeError(
            f"{strategy} runs diagonal cells only (cell.diagonal is not None: "
            "cells.diagonal, cells.lru, cells.min_gru, cells.min_lstm, or a "
            f"cells.stack of them), got {name}, whose cell.diagonal is None; "
            "use jbptt.ReverseScan() for it."
        )


# ------------------------------------------------------- forward, reverse ---


def _full(ab, shape):
    return tuple(jnp.broadcast_to(v, shape) for v in ab)


def _bcast(v, shape):  # [T] or [T, *batch] against [T, *batch, H]
    v = jnp.asarray(v)
    return v.reshape(v.shape + (1,) * (len(shape) - v.ndim))


def with_steps(mask, steps, shape):
    """The padding mask with the steps from ``steps`` on padded too."""
    if steps is None:
        return mask
    run = jnp.arange(shape[0]) < steps  # [T]
    run = jnp.broadcast_to(run.reshape((-1,) + (1,) * (len(shape) - 2)), shape[:-1])
    return run if mask is None else run & mask


def _fold(a, b, mask, resets, h_reset):
    """``(a, b)`` with resets (``(0, a h_reset + b)``) and padding (``(1, 0)``)."""
    if resets is not None:
        r = _bcast(resets, a.shape)
        b = jnp.where(r, a * h_reset[None] + b, b)
        a = jnp.where(r, jnp.zeros((), a.dtype), a)
    if mask is not None:
        m = _bcast(mask, a.shape)
        a = jnp.where(m, a, jnp.ones((), a.dtype))
        b = jnp.where(m, b, jnp.zeros((), b.dtype))
    return a, b


def forward(
    cell, params, h0, xs, mask=None, resets=None, h_reset=None, steps=None,
    how=AUTO_HOW, chunk_bytes=None,
):  # fmt: skip
    """``(h_T, outs, saved)`` of a diagonal cell over all steps.

    ``steps`` (``rnn_scan(steps=)``) pads the steps from ``steps`` on: they
    keep the state and output zeros, as the per-step loop's early stop does.
    The sequential method runs in chunks of ``how[1]`` steps, or where that
    is ``None`` of about ``chunk_bytes`` of states (:func:`chunk_steps`).
    """
    gates, readout = cell.diagonal
    shape = (xs.shape[0], *h0.shape)
    mask = with_steps(mask, steps, shape)
    if resolve_method(how[0]) == "sequential":
        itemsize = jnp.dtype(h0.dtype).itemsize
        C = how[1] or chunk_steps(shape[0], math.prod(h0.shape), itemsize, chunk_bytes)
        C = min(C, shape[0])
        return _forward_chunked(cell, params, h0, xs, mask, resets, h_reset, C)
    # In one dtype the vjps of the gates and the readout are kept for the
    # reverse pass (no second evaluation of either); in mixed precision the
    # reverse pass differentiates them again in the params' dtype.
    keep = (dtypes.float_dtype(params) or xs.dtype) == xs.dtype
    p = params if keep else dtypes.cast(params, xs.dtype)  # the compute copy
    full_gates = lambda p_, x: _full(gates(p_, x), shape)  # noqa: E731
    if keep:
        (a, b), gates_vjp = jax.vjp(full_gates, p, xs)
    else:
        a, b = full_gates(p, xs)
    hs = solve(*_fold(a, b, mask, resets, h_reset), h0, how)
    if keep:
        outs, readout_vjp = jax.vjp(readout, p, hs, xs)
        kept = Kept(a, jnp.zeros((0,), b.dtype), gates_vjp, readout_vjp)
    else:
        outs, kept = readout(p, hs, xs), None
    if mask is not None:
        outs = sequences.zero_padding(mask, outs)
    return hs[-1], outs, Saved(h0, xs, hs, kept, mask, resets, h_reset)


def _like(ct, primal):
    """A cotangent in its primal's dtype (a real primal takes the real part)."""
    if jnp.iscomplexobj(ct) and not jnp.iscomplexobj(primal):
        ct = jnp.real(ct)
    return ct.astype(primal.dtype)


def _link_factors(a, w, r: Saved):
    """``(c, w_reset)``: ``c_t`` the factor of ``E_t`` in ``E_{t-1}``
    (``w_t a_t``, cut at resets, 1 at padded steps) and ``w_t ⊙ resets_t``."""
    w = _bcast(w, a.shape).astype(jnp.real(a).dtype)
    w_reset = None
    if r.resets is not None:
        reset = _bcast(r.resets, a.shape)
        w, w_reset = jnp.where(reset, 0, w), jnp.where(reset, w, 0)
    c = w * a
    if r.mask is not None:
        c = jnp.where(_bcast(r.mask, a.shape), c, jnp.ones((), c.dtype))
    return c, w_reset


class Kept(NamedTuple):
    """The forward's vjps, kept for the reverse pass (one dtype only)."""

    a: jax.Array  # the gates' a_t, broadcast to the states' shape
    b_dtype: jax.Array  # an empty array in the dtype of b_t
    gates_vjp: Any
    readout_vjp: Any


def _vjps(cell, params, r: Saved):
    """``(a, a_p, b_p, gates_vjp, readout_vjp)``: ``a`` in the compute dtype,
    ``a_p``/``b_p`` carrying the dtypes of the gates' outputs in the params'
    dtype, and the vjps of the gates and the readout over all steps."""
    if r.res is not None:
        k = r.res
        return k.a, k.a, k.b_dtype, k.gates_vjp, k.readout_vjp
    gates, readout = cell.diagonal
    pdt = dtypes.float_dtype(params) or r.xs.dtype
    states, xs_p = dtypes.cast((r.hs, r.xs), pdt)
    _, readout_vjp = jax.vjp(readout, params, states, xs_p)
    full_gates = lambda p_, x: _full(gates(p_, x), r.hs.shape)  # noqa: E731
    (a_p, b_p), gates_vjp = jax.vjp(full_gates, params, xs_p)
    a = full_gates(dtypes.cast(params, r.xs.dtype), r.xs)[0]
    return a, a_p, b_p, gates_vjp, readout_vjp


def backward(cell, params, r: Saved, w, dh_T, douts, how=AUTO_HOW):
    """The reverse pass of :func:`forward` with link weights ``w``.

    Returns ``(dparams, dh0, dxs, dh_reset)`` as
    :func:`jbptt._src.scan.backward_unchecked` does.
    """
    if isinstance(r.res, Chunked) and r.res.steps == r.xs.shape[0]:
        return _backward_chunked(cell, params, r, w, dh_T, douts)
    if isinstance(r.res, Chunked):  # a window of a longer sequence: from hs
        r = r._replace(res=None)
    xs, hs = r.xs, r.hs
    if r.mask is not None:
        douts = sequences.zero_padding(r.mask, douts)
    a, a_p, b_p, gates_vjp, readout_vjp = _vjps(cell, params, r)
    # One vjp of the readout over all steps (in the params' dtype): g_t.
    dp_out, g, dx_out = readout_vjp(dtypes.cast(douts, a_p.real.dtype))
    c, w_reset = _link_factors(a, w, r)
    # E_{t-1} = g_{t-1} + c_t E_t: the coefficient of E_{t+1} at t is c_{t+1}.
    c_next = jnp.concatenate([c[1:], jnp.ones_like(c[:1])])
    E = solve_reverse(c_next, g.astype(hs.dtype), dh_T, how)
    delta = E if r.mask is None else sequences.zero_padding(r.mask, E)
    h_in = _entering(hs, r.h0, r.resets, r.h_reset)
    if r.resets is not None:
        dh_reset = jnp.sum(w_reset * a * delta, axis=0)
    # One vjp of the gates over all steps: ∂L/∂a_t = E_t h_{t-1}, ∂L/∂b_t = E_t.
    dp_in, dx_in = gates_vjp((_like(delta * h_in, a_p), _like(delta, b_p)))
    dparams = tree_map(jnp.add, dp_out, dp_in)
    dxs = (dx_out + dx_in).astype(xs.dtype)
    return dparams, c[0] * E[0], dxs, (dh_reset if r.resets is not None else None)


# ------------------------------------------------ the chunked sequential ---
#
# The sequential method runs forward and reverse over chunks of C steps and
# keeps for the reverse pass only the state entering each chunk: each chunk's
# gates, states and readout are recomputed in the reverse pass from its inputs
# and that state, so no [T, ...] array is kept but the outputs (and the
# inputs' cotangent). A chunk holds about CHUNK_BYTES of states (C · |h0| ·
# itemsize): large enough that its gate GEMMs are efficient and the loop over
# chunks costs little per step, small enough to stay in cache. K link-weight
# vectors (backward_many) run their K adjoints on each chunk side by side, a
# K times larger working set, so their forward takes chunks of
# SWEEP_CHUNK_ELEMENTS state numbers (half of CHUNK_BYTES in float32, all of
# it in complex64: the fastest measured for both). The recomputation is one
# more sequential loop over T steps; where the state is small that loop is
# most of what value+grad costs, so a sequence of at most WHOLE_ELEMENTS
# state numbers runs as one chunk, where XLA shares the forward's states with
# the reverse pass instead of recomputing them (measured:
# benchmarks/log/2026-12-07-diagonal-chunked.md and
# 2026-12-07-diagonal-chunk-bytes.md).

CHUNK_BYTES = 2**19
SWEEP_CHUNK_ELEMENTS = 2**16
WHOLE_ELEMENTS = 2**18


@jax.tree_util.register_pytree_node_class
class Chunked:
    """The chunked path's residual: ``starts[k]``, the state entering chunk
    k of ``length`` steps, for a sequence of ``steps`` steps (static)."""

    def __init__(self, starts, length: int, steps: int):
        self.starts, self.length, self.steps = starts, length, steps

    def tree_flatten(self):
        return (self.starts,), (self.length, self.steps)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0], *aux)


def chunk_steps(T: int, state_size: int, itemsize: int = 4, chunk_bytes=None) -> int:
    """The chunk length C of the chunked path: T when the sequence holds at
    most ``WHOLE_ELEMENTS`` state numbers, else about ``chunk_bytes``
    (``None``: ``CHUNK_BYTES``) of states of ``state_size`` numbers of
    ``itemsize`` bytes per chunk."""
    if T * state_size <= WHOLE_ELEMENTS:
        return T
    chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    return max(1, min(T, -(-chunk_bytes // max(1, state_size * itemsize))))


def chunks(v, C, fill=None):
    """``[T, ...]`` → ``[n, C, ...]``, the tail padded with ``fill`` (``None``:
    the last step repeated, so that the gates see a real input)."""
    if v is None:
        return None
    T = v.shape[0]
    n = -(-T // C)
    pad = n * C - T
    if pad:
        tail = v[-1:] if fill is None else jnp.full((1, *v.shape[1:]), fill, v.dtype)
        v = jnp.concatenate([v, jnp.broadcast_to(tail, (pad, *v.shape[1:]))])
    return v.reshape(n, C, *v.shape[1:])


def unchunk(tree, T):
    """``[n, C, ...]`` → ``[T, ...]``: :func:`chunks` undone, the padding dropped."""
    return tree_map(lambda v: v.reshape(-1, *v.shape[2:])[:T], tree)


def _padded_mask(mask, T, C):
    """The mask in chunks, false on the padding (``None`` when no step is)."""
    if mask is None and T % C == 0:
        return None
    if mask is None:
        mask = jnp.ones((T,), bool)
    return chunks(mask, C, False)


def _forward_chunked(cell, params, h0, xs, mask, resets, h_reset, C):
    """:func:`forward` by the sequential method in chunks of ``C`` steps;
    the saved ``res`` is a :class:`Chunked` (``mask`` has ``steps`` folded
    in)."""
    gates, readout = cell.diagonal
    T = xs.shape[0]
    p = dtypes.cast(params, xs.dtype)  # the compute copy (params in one dtype)

    def body(h, inp):
        x, m, r = inp
        a, b = _full(gates(p, x), (C, *h0.shape))
        hs = sequential(*_fold(a, b, m, r, h_reset), h)
        return hs[-1], (h, hs, readout(p, hs, x))

    inputs = (chunks(xs, C), _padded_mask(mask, T, C), chunks(resets, C, False))
    h_T, (starts, hs, outs) = jax.lax.scan(body, h0, inputs)
    hs, outs = unchunk(hs, T), unchunk(outs, T)
    if mask is not None:
        outs = sequences.zero_padding(mask, outs)
    saved = Saved(h0, xs, hs, Chunked(starts, C, T), mask, resets, h_reset)
    return h_T, outs, saved


def _chunk_vjps(cell, params, p, x, shape):
    """``(a, b, a_p, b_p, gates_vjp)`` of one chunk: ``a, b`` in the
    compute dtype (as the forward computed them), the vjp of the gates in
    the params' dtype and ``a_p, b_p`` its outputs (for their dtypes)."""
    gates = cell.diagonal.gates
    full_gates = lambda p_, x_: _full(gates(p_, x_), shape)  # noqa: E731
    pdt = dtypes.float_dtype(params) or x.dtype
    if pdt == x.dtype:
        (a, b), gates_vjp = jax.vjp(full_gates, params, x)
        return a, b, a, b, gates_vjp
    a, b = full_gates(p, x)
    (a_p, b_p), gates_vjp = jax.vjp(full_gates, params, dtypes.cast(x, pdt))
    return a, b, a_p, b_p, gates_vjp


def _entering(hs, h_start, rs, h_reset):
    """Each step's entering state ``h_{t−1}`` (``h_reset`` at resets)."""
    h_in = jnp.concatenate([h_start[None], hs[:-1]])
    if rs is None:
        return h_in
    return jnp.where(_bcast(rs, hs.shape), h_reset[None], h_in)


def _chunk_adjoint(a, hs, g, w_c, m, rs, h_start, h_reset, e):
    """One chunk's reverse recurrence for one link-weight vector ``w_c``
    from ``e`` (the cotangent its successor sends): ``(e_out, ∂L/∂a, ∂L/∂b,
    dh_reset or None)``."""
    c, w_reset = _link_factors(a, w_c, Saved(None, None, None, mask=m, resets=rs))
    c_next = jnp.concatenate([c[1:], jnp.ones_like(c[:1])])
    E = solve_reverse(c_next, g.astype(hs.dtype), e, ("sequential", None))
    delta = E if m is None else sequences.zero_padding(m, E)
    dr = None if rs is None else jnp.sum(w_reset * a * delta, axis=0)
    return c[0] * E[0], delta * _entering(hs, h_start, rs, h_reset), delta, dr


def _lead(v):
    """``v`` with a leading axis of 1 (the K axis), ``None`` kept."""
    return None if v is None else jnp.asarray(v)[None]


def _chunk_adjoint_many(a, hs, g, w_c, m, rs, h_start, h_reset, e):
    """:func:`_chunk_adjoint` for K link-weight vectors ``w_c [K, C, …]``
    from ``e [K, …]``, in one loop over the chunk's steps whose carry is
    ``s_t = c_t ⊙ E_t`` (so ``E_t = g_t + s_{t+1}``). Each step forms its K
    factors ``c_t`` from the shared ``a_t`` and reads the shared ``g_t``:
    no ``[K, C, …]`` array of factors is written, one pass fewer over the
    K adjoints. ``∂L/∂a, ∂L/∂b`` come out ``[C, K, …]``."""
    K = w_c.shape[0]
    w_t = jnp.moveaxis(w_c, 0, 1)  # [C, K, …]

    def body(s, inp):  # the K factors of one step: K leads, as T does
        a_t, g_t, w, reset, m_t = inp
        E = g_t[None] + s
        step = Saved(None, None, None, mask=_lead(m_t), resets=_lead(reset))
        c, _ = _link_factors(jnp.broadcast_to(a_t, (K, *a_t.shape)), w, step)
        return c * E, E

    g = g.astype(hs.dtype)
    e_out, E = jax.lax.scan(body, e, (a, g, w_t, rs, m), reverse=True)
    delta = E if m is None else jnp.where(_bcast(m, a.shape)[:, None], E, 0)
    h_in = _entering(hs, h_start, rs, h_reset)
    dr = None
    if rs is not None:  # ∂L/∂h_reset = Σ_t w_t [reset_t] a_t δ_t
        a_k = jnp.broadcast_to(a[:, None], (a.shape[0], *e.shape))
        at_resets = Saved(None, None, None, resets=rs[:, None])
        _, w_reset = _link_factors(a_k, w_t, at_resets)
        dr = jnp.sum(w_reset * a_k * delta, axis=0)
    return e_out, delta * h_in[:, None], delta, dr


def _backward_chunked(cell, params, r: Saved, w, dh_T, douts, many=False):
    """:func:`backward` of :func:`_forward_chunked`: chunk by chunk from the
    last, each chunk's forward recomputed from its starting state, its
    parameter gradient added to a running sum. ``many``: ``w`` is ``[K, T,
    …]`` and each chunk, recomputed once, runs the K reverse recurrences
    (the gates' vjp batched over K); returns the K parameter gradients."""
    readout = cell.diagonal.readout
    T, C = r.xs.shape[0], r.res.length
    shape = (C, *r.h0.shape)
    p = dtypes.cast(params, r.xs.dtype)
    pdt = dtypes.float_dtype(params) or r.xs.dtype
    if r.mask is not None:
        douts = sequences.zero_padding(r.mask, douts)

    def body(carry, inp):
        e, dp, dr = carry
        x, dout, w_c, m, rs, h_start = inp
        a, b, a_p, b_p, gates_vjp = _chunk_vjps(cell, params, p, x, shape)
        hs = sequential(*_fold(a, b, m, rs, r.h_reset), h_start)
        states, x_p = dtypes.cast((hs, x), pdt)
        _, readout_vjp = jax.vjp(readout, params, states, x_p)
        dp_out, g, dx_out = readout_vjp(dtypes.cast(dout, a_p.real.dtype))

        if many:  # over the K weight vectors: w_c [K, C, …], e [K, …]
            e, da, db, dr_c = _chunk_adjoint_many(
                a, hs, g, w_c, m, rs, h_start, r.h_reset, e
            )
            gates_vjp = jax.vmap(gates_vjp, in_axes=((1, 1),))
        else:
            e, da, db, dr_c = _chunk_adjoint(
                a, hs, g, w_c, m, rs, h_start, r.h_reset, e
            )
        dp_in, dx_in = gates_vjp((_like(da, a_p), _like(db, b_p)))
        dp = tree_map(lambda s, u, v: s + u + v, dp, dp_out, dp_in)
        dr = dr if dr_c is None else dr + dr_c
        dx = None if many else (dx_out + dx_in).astype(r.xs.dtype)
        return (e, dp, dr), dx

    lead = (w.shape[0],) if many else ()
    dr0 = None if r.resets is None else jnp.zeros(lead + r.h0.shape, r.h0.dtype)
    dp0 = tree_map(lambda v: jnp.zeros(lead + v.shape, v.dtype), params)
    e0 = jnp.broadcast_to(dh_T, lead + dh_T.shape)
    w = jnp.asarray(w)
    if many:  # [K, T, …] -> [n, K, C, …]
        w_chunks = jnp.moveaxis(jax.vmap(lambda v: chunks(v, C, 1))(w), 0, 1)
    else:
        w_chunks = chunks(w, C, 1)
    douts = tree_map(lambda d: chunks(d, C, 0), douts)
    inputs = (
        chunks(r.xs, C), douts, w_chunks,
        _padded_mask(r.mask, T, C), chunks(r.resets, C, False), r.res.starts,
    )  # fmt: skip
    (dh0, dparams, dh_reset), dxs = jax.lax.scan(
        body, (e0, dp0, dr0), inputs, reverse=True
    )
    if many:
        return dparams
    return dparams, dh0, unchunk(dxs, T), dh_reset


def backward_many(cell, params, r: Saved, ws, dh_T, douts, how=AUTO_HOW):
    """The parameter gradients of :func:`backward` for each row of ``ws``
    ``[K, T]`` (or ``[K, T, *batch]``), stacked over K.

    Over several chunks each chunk's forward is recomputed once for all K
    (then its K reverse recurrences, the gates' vjp batched over K), where K
    calls of :func:`backward` would recompute it K times; otherwise (one
    chunk, whose states XLA keeps from the forward, or another method) the
    K reverse passes run one after another (``jax.lax.map``), which
    measured faster there.
    """
    chunked = isinstance(r.res, Chunked) and r.res.steps == r.xs.shape[0]
    if chunked and r.res.starts.shape[0] > 1:
        return _backward_chunked(cell, params, r, ws, dh_T, douts, many=True)

    def one(w):
        return backward(cell, params, r, w, dh_T, douts, how)[0]

    return jax.lax.map(one, ws)


# ------------------------------------------------------------- custom_vjp ---


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def scan(cell, how, params, h0, xs, w, mask, resets, h_reset, steps):
    """``(h_T, outs)`` of a diagonal cell, whose ``jax.grad`` is
    :func:`backward` with link weights ``w`` (``how = (method, chunk)``)."""
    h_T, outs, _ = forward(cell, params, h0, xs, mask, resets, h_reset, steps, how)
    return h_T, outs


def _scan_fwd(cell, how, params, h0, xs, w, mask, resets, h_reset, steps):
    h_T, outs, saved = forward(cell, params, h0, xs, mask, resets, h_reset, steps, how)
    return (h_T, outs), (params, saved, w)


def _scan_bwd(cell, how, saved, cotangents):
    params, r, w = saved
    dh_T, douts = cotangents
    dh_T = dh_T.astype(r.h0.dtype)  # a symbolic zero arrives as zeros
    dparams, dh0, dxs, dh_reset = backward(cell, params, r, w, dh_T, douts, how)
    return dparams, dh0, dxs, jnp.zeros_like(w), None, None, dh_reset, None


scan.defvjp(_scan_fwd, _scan_bwd)
