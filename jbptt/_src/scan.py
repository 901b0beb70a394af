"""`rnn_scan`: the recurrence as a ``jax.custom_vjp`` whose backward is the
explicit reverse scan with link weights (DESIGN.md, "The one equation")::

    δ_t = ∂ℓ_t/∂h_t + w_{t+1} · (∂h_{t+1}/∂h_t)ᵀ δ_{t+1}
    ĝ   = Σ_t (∂f/∂θ at t)ᵀ δ_t        (+ the loss's own ∂ℓ_t/∂θ, by autodiff)

``w[0]`` scales the gradient into ``h0``. Cells with :class:`ReverseRules`
use the hand-derived step; others a per-step ``jax.vjp``.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp

from jbptt._src import validation
from jbptt._src.cell import Cell

tree_map = jax.tree_util.tree_map

# Loop unrolling of the forward and reverse scans of the rules path
# (measured by benchmarks/bench_grad.py; see benchmarks/RESULTS.md).
UNROLL = 1


def _scale(w_t, tree):
    return tree_map(lambda a: (w_t * a).astype(a.dtype), tree)


def _shift_in(h0, hs):
    """States h_{t-1} for t = 0..T-1: ``h0`` followed by ``hs[:-1]``."""
    return tree_map(lambda a0, a: jnp.concatenate([a0[None], a[:-1]]), h0, hs)


def _last(hs):
    return tree_map(lambda a: a[-1], hs)


# ---------------------------------------------------------------- forward ---


def _forward_rules(cell: Cell, params, h0, xs):
    rules = cell.rules
    xz = rules.project(params, xs)  # [T, ..., G]: all input projections, one GEMM

    def body(h, xz_t):
        h, res = rules.forward(params, h, xz_t)
        return h, (res if rules.states else (h, res))

    h_T, stacked = jax.lax.scan(body, h0, xz, unroll=UNROLL)
    hs, res = (rules.states(stacked), stacked) if rules.states else stacked
    return h_T, rules.output(hs), (hs, res)


def _forward_generic(cell: Cell, params, h0, xs):
    def body(h, x_t):
        h, out = cell.step(params, h, x_t)
        return h, (h, out)

    h_T, (hs, outs) = jax.lax.scan(body, h0, xs)
    return h_T, outs, hs


# --------------------------------------------------------------- backward ---


def _packer(tree):
    """(pack, unpack) between a state pytree and one array along the last axis.

    A multi-leaf state (e.g. the LSTM's ``(c, h)``) is carried through the
    reverse scan as one array: one carry buffer instead of one per leaf,
    which spares XLA a copy per leaf and step. Identity for one leaf, or
    when the leaves cannot be concatenated (different dtypes or batch shapes).
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    same = {(a.dtype, a.shape[:-1]) for a in leaves}
    if len(leaves) < 2 or len(same) != 1 or any(a.ndim == 0 for a in leaves):
        return (lambda t: t), (lambda t: t)
    splits = list(itertools.accumulate(a.shape[-1] for a in leaves))[:-1]

    def pack(t):
        return jnp.concatenate(jax.tree_util.tree_leaves(t), axis=-1)

    def unpack(a):
        return jax.tree_util.tree_unflatten(treedef, jnp.split(a, splits, axis=-1))

    return pack, unpack


def _backward_rules(cell: Cell, params, h0, xs, w, hs, res, dh_T, douts):
    rules = cell.rules
    hs_prev = _shift_in(h0, hs)
    pack, unpack = _packer(dh_T)

    def body(dh, inp):  # dh: cotangent reaching h_t from later steps, scaled
        h_prev, h, res_t, dout_t, w_t = inp
        dh_prev, dlin_t = rules.backward(params, h_prev, h, res_t, unpack(dh), dout_t)
        return _scale(w_t, pack(dh_prev)), dlin_t  # × w_t: the link t → t-1

    dh0, dlins = jax.lax.scan(
        body, pack(dh_T), (hs_prev, hs, res, douts, w), reverse=True, unroll=UNROLL
    )
    dh0 = unpack(dh0)
    # All weight (and input) gradients at once: vjp of the linear map = GEMMs.
    _, linear_vjp = jax.vjp(lambda p, x: rules.linear(p, x, hs_prev), params, xs)
    dparams, dxs = linear_vjp(dlins)
    return dparams, dh0, dxs


def _backward_generic(cell: Cell, params, h0, xs, w, hs, dh_T, douts):
    hs_prev = _shift_in(h0, hs)

    def body(carry, inp):
        dh, dparams = carry
        h_prev, x_t, dout_t, w_t = inp
        _, step_vjp = jax.vjp(cell.step, params, h_prev, x_t)
        dp_t, dh_prev, dx_t = step_vjp((dh, dout_t))
        dparams = tree_map(jnp.add, dparams, dp_t)
        return (_scale(w_t, dh_prev), dparams), dx_t

    zeros = tree_map(jnp.zeros_like, params)
    (dh0, dparams), dxs = jax.lax.scan(
        body, (dh_T, zeros), (hs_prev, xs, douts, w), reverse=True
    )
    return dparams, dh0, dxs


# ------------------------------------------------------------- custom_vjp ---


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _rnn_scan(cell: Cell, params, h0, xs, w):
    if cell.rules is None:
        h_T, outs, _ = _forward_generic(cell, params, h0, xs)
    else:
        h_T, outs, _ = _forward_rules(cell, params, h0, xs)
    return h_T, outs


def _rnn_scan_fwd(cell: Cell, params, h0, xs, w):
    if cell.rules is None:
        h_T, outs, hs = _forward_generic(cell, params, h0, xs)
        return (h_T, outs), (params, h0, xs, w, hs, None)
    h_T, outs, (hs, res) = _forward_rules(cell, params, h0, xs)
    return (h_T, outs), (params, h0, xs, w, hs, res)


def _rnn_scan_bwd(cell: Cell, saved, cotangents):
    params, h0, xs, w, hs, res = saved
    dh_T, douts = cotangents
    # Symbolic zeros arrive as zeros here; make dtypes match the primal.
    dh_T = tree_map(lambda g, a: g.astype(a.dtype), dh_T, h0)
    if cell.rules is None:
        grads = _backward_generic(cell, params, h0, xs, w, hs, dh_T, douts)
    else:
        grads = _backward_rules(cell, params, h0, xs, w, hs, res, dh_T, douts)
    dparams, dh0, dxs = grads
    return dparams, dh0, dxs, jnp.zeros_like(w)


_rnn_scan.defvjp(_rnn_scan_fwd, _rnn_scan_bwd)


def rnn_scan(cell: Cell, params, h0, xs, w=None, *, checkpoint=None):
    """Run ``cell`` over ``xs``; its gradient is jbptt's reverse scan with ``w``.

    Differentiating any function of the outputs with ``jax.grad`` runs the
    explicit reverse scan of DESIGN.md with link weights ``w``: the forward
    values do not depend on ``w``, only the backward does.

    Args:
      cell: a :class:`jbptt.cells.Cell`.
      params: the cell's params (pytree of arrays).
      h0: initial state, batch shape matching ``xs``.
      xs: inputs ``[T, I]`` or ``[T, B, I]`` (time-major).
      w: link weights ``[T]`` (default: ones, i.e. full BPTT). ``w[t]`` scales
        the gradient from step t into h_{t-1}; ``w[0]`` the one into ``h0``.
        ``w`` is a constant of the backward: its own cotangent is zero.
      checkpoint: ``None`` (default) keeps every step's state for the
        backward; ``"sqrt"`` keeps only the states at the starts of about √T
        segments of about √T steps and recomputes each segment's forward
        during the backward (O(√T) stored states for ~1 extra forward); an
        int sets the segment length. Values and gradients are unchanged.

    Returns:
      ``(h_T, outs)`` with ``outs`` of shape ``[T, ..., H]``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt import cells, truncation
      >>> cell = cells.elman("tanh")
      >>> p = cell.init(jax.random.key(0), 2, 3)
      >>> xs = jnp.ones((6, 2))
      >>> def f(p, w):
      ...     h_T, outs = jbptt.rnn_scan(cell, p, cell.initial_state(p), xs, w)
      ...     return jnp.sum(outs ** 2)
      >>> g = jax.grad(f)(p, truncation.tbptt(6, 2))  # TBPTT(2) gradient
      >>> g["W"].shape
      (3, 3)
    """
    w = validation.check_scan_args(cell, params, h0, xs, w)
    T = xs.shape[0]
    S = segment_length(T, checkpoint)
    if S is None:
        return _rnn_scan(cell, params, h0, xs, w)

    def segment(h, inp):
        xs_s, w_s = inp
        return _rnn_scan(cell, params, h, xs_s, w_s)

    h_T, (head, body) = scan_segments(segment, h0, (xs, w), T, S)
    outs = tree_map(lambda a: a.reshape(-1, *a.shape[2:]), body)
    if head is not None:
        outs = tree_map(lambda a, b: jnp.concatenate([a, b]), head, outs)
    return h_T, outs


# ---------------------------------------------------------- checkpointing ---


def segment_length(T: int, checkpoint) -> int | None:
    """Segment length for ``checkpoint`` (``None``: no checkpointing).

    ``"sqrt"`` gives ⌈√T⌉, which stores ⌊T/S⌋ + 1 ≈ √T segment-start states
    and at most S steps of residuals at a time: O(√T) in all.
    """
    if checkpoint is None:
        return None
    if checkpoint == "sqrt":
        S = max(1, math.isqrt(T - 1) + 1)  # ⌈√T⌉
    elif isinstance(checkpoint, int) and not isinstance(checkpoint, bool):
        if checkpoint < 1:
            raise ValueError(
                f"checkpoint must be None, 'sqrt' or a segment length ≥ 1, "
                f"got {checkpoint}."
            )
        S = checkpoint
    else:
        raise ValueError(
            f"checkpoint must be None, 'sqrt' or a segment length (int ≥ 1), "
            f"got {checkpoint!r}."
        )
    return None if S >= T else S


def scan_segments(segment, carry, xs, T: int, S: int):
    """Run ``segment(carry, xs_seg) -> (carry, out)`` over consecutive segments.

    The first ``T mod S`` steps form a head segment, the rest ``T // S``
    segments of ``S`` steps scanned in an outer ``lax.scan``. Each segment is
    wrapped in ``jax.checkpoint``, so differentiating stores only the carries
    at segment starts and re-runs a segment's forward (with its residuals)
    just before its reverse scan. The outer scan runs over segment indices
    and slices ``xs`` inside the segment, so the inputs are read in place
    rather than saved again as per-segment residuals.

    Returns:
      ``(carry, (out_head, outs))``: ``out_head`` is ``None`` when ``S``
      divides ``T``; ``outs`` stacks the other segments' outputs ``[T // S, ...]``.
    """
    r, n = T % S, T // S
    out_head = None
    if r:
        head = jax.checkpoint(segment, prevent_cse=False)
        carry, out_head = head(carry, tree_map(lambda a: a[:r], xs))

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def body(carry, k):
        start = r + k * S
        xs_k = tree_map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, S), xs)
        return segment(carry, xs_k)

    carry, outs = jax.lax.scan(body, carry, jnp.arange(n))
    return carry, (out_head, outs)
