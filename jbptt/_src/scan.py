"""The core: the recurrence's forward scan and its reverse scan with link
weights (docs/design.md, "The one equation")::

    δ_t = ∂ℓ_t/∂h_t + w_{t+1} · (∂h_{t+1}/∂h_t)ᵀ δ_{t+1}
    ĝ   = Σ_t (∂f/∂θ at t)ᵀ δ_t        (+ the loss's own ∂ℓ_t/∂θ, by autodiff)

``w[0]`` scales the gradient into ``h0``. Two public pieces,
:func:`forward` and :func:`backward`, meet in an explicit
:class:`Residuals`; everything else (``rnn_scan``, ``value_and_grad``,
``grads_for_weights``, the sweep's shared forward, the diagnostics,
checkpointed segments) is built from them. Whether a cell runs the
hand-derived path (:class:`~jbptt.cells.ReverseRules`) or the generic
per-step ``jax.vjp`` is decided in one place, :func:`_path`.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jbptt._src import validation
from jbptt._src.cell import Cell

tree_map = jax.tree_util.tree_map

# Loop unrolling of the forward and reverse scans of the rules path
# (measured by benchmarks/bench_grad.py; see benchmarks/RESULTS.md).
UNROLL = 1


class Residuals(NamedTuple):
    """What :func:`backward` needs from :func:`forward`.

    Attributes:
      h0: the initial state.
      xs: the inputs ``[T, ..., I]``.
      hs: the states ``h_1..h_T`` stacked on a leading ``[T]`` axis.
      res: the hand-derived path's per-step residuals (stacked), or ``None``
        for cells that go through the generic per-step ``jax.vjp``.
    """

    h0: Any
    xs: jax.Array
    hs: Any
    res: Any = None


def _scale(w_t, tree):
    return tree_map(lambda a: (w_t * a).astype(a.dtype), tree)


def states_before(residuals: Residuals):
    """States ``h_{t-1}`` for t = 0..T-1: ``h0`` followed by ``hs[:-1]``."""
    return tree_map(
        lambda a0, a: jnp.concatenate([a0[None], a[:-1]]), residuals.h0, residuals.hs
    )


def _last(hs):
    return tree_map(lambda a: a[-1], hs)


# ------------------------------------------------- hand-derived rules path ---


def _forward_rules(cell: Cell, params, h0, xs):
    rules = cell.rules
    xz = rules.project(params, xs)  # [T, ..., G]: all input projections, one GEMM

    def body(h, xz_t):
        h, res = rules.forward(params, h, xz_t)
        return h, (res if rules.states else (h, res))

    h_T, stacked = jax.lax.scan(body, h0, xz, unroll=UNROLL)
    hs, res = (rules.states(stacked), stacked) if rules.states else stacked
    return h_T, rules.output(hs), Residuals(h0, xs, hs, res)


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


def _backward_rules(cell: Cell, params, r: Residuals, w, dh_T, douts):
    rules = cell.rules
    hs_prev = states_before(r)
    pack, unpack = _packer(dh_T)

    def body(dh, inp):  # dh: cotangent reaching h_t from later steps, scaled
        h_prev, h, res_t, dout_t, w_t = inp
        dh_prev, dlin_t = rules.backward(params, h_prev, h, res_t, unpack(dh), dout_t)
        return _scale(w_t, pack(dh_prev)), dlin_t  # × w_t: the link t → t-1

    dh0, dlins = jax.lax.scan(
        body, pack(dh_T), (hs_prev, r.hs, r.res, douts, w), reverse=True, unroll=UNROLL
    )
    # All weight (and input) gradients at once: vjp of the linear map = GEMMs.
    args = (hs_prev, r.hs) if rules.linear_states else (hs_prev,)
    _, linear_vjp = jax.vjp(lambda p, x: rules.linear(p, x, *args), params, r.xs)
    dparams, dxs = linear_vjp(dlins)
    return dparams, unpack(dh0), dxs


def _transpose_rules(cell: Cell, params, h_prev, h, res_t, x_t, d):
    dout0 = jnp.zeros_like(cell.rules.output(h))
    return cell.rules.backward(params, h_prev, h, res_t, d, dout0)[0]


# ------------------------------------------------- generic per-step path ---


def _forward_generic(cell: Cell, params, h0, xs):
    def body(h, x_t):
        h, out = cell.step(params, h, x_t)
        return h, (h, out)

    h_T, (hs, outs) = jax.lax.scan(body, h0, xs)
    return h_T, outs, Residuals(h0, xs, hs, None)


def _backward_generic(cell: Cell, params, r: Residuals, w, dh_T, douts):
    def body(carry, inp):
        dh, dparams = carry
        h_prev, x_t, dout_t, w_t = inp
        _, step_vjp = jax.vjp(cell.step, params, h_prev, x_t)
        dp_t, dh_prev, dx_t = step_vjp((dh, dout_t))
        dparams = tree_map(jnp.add, dparams, dp_t)
        return (_scale(w_t, dh_prev), dparams), dx_t

    zeros = tree_map(jnp.zeros_like, params)
    (dh0, dparams), dxs = jax.lax.scan(
        body, (dh_T, zeros), (states_before(r), r.xs, douts, w), reverse=True
    )
    return dparams, dh0, dxs


def _transpose_generic(cell: Cell, params, h_prev, h, res_t, x_t, d):
    _, vjp = jax.vjp(lambda hp: cell.step(params, hp, x_t)[0], h_prev)
    return vjp(d)[0]


class _Path(NamedTuple):
    forward: Callable
    backward: Callable
    transpose: Callable


_RULES = _Path(_forward_rules, _backward_rules, _transpose_rules)
_GENERIC = _Path(_forward_generic, _backward_generic, _transpose_generic)


def _path(cell: Cell) -> _Path:
    """The one place where the hand-derived and generic paths part."""
    return _GENERIC if cell.rules is None else _RULES


# ------------------------------------------------------------ public core ---


def forward(cell: Cell, params, h0, xs):
    """Run ``cell`` over ``xs`` and keep what the reverse scan needs.

    Args:
      cell: a :class:`jbptt.cells.Cell`.
      params: the cell's params (pytree of arrays).
      h0: initial state, batch shape matching ``xs``.
      xs: inputs ``[T, I]`` or ``[T, B, I]`` (time-major).

    Returns:
      ``(h_T, outs, residuals)``: the final state, the step outputs
      ``[T, ..., H]`` and a :class:`Residuals` for :func:`backward`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> cell = jbptt.cells.lstm()
      >>> p = cell.init(jax.random.key(0), 2, 3)
      >>> h0, xs = cell.initial_state(p), jnp.ones((5, 2))
      >>> h_T, outs, res = jbptt.forward(cell, p, h0, xs)
      >>> outs.shape, res.hs[1].shape  # LSTM states are (c, h)
      ((5, 3), (5, 3))
    """
    validation.check_scan_args(cell, params, h0, xs, None)
    return _path(cell).forward(cell, params, h0, xs)


def backward(cell: Cell, params, residuals: Residuals, w, dh_T, douts):
    """The reverse scan with link weights ``w`` (docs/design.md, "The one equation").

    Args:
      cell: the cell given to :func:`forward`.
      params: the params given to :func:`forward`.
      residuals: the :class:`Residuals` returned by :func:`forward`.
      w: link weights ``[T]``: ``w[t]`` scales the gradient from step t into
        h_{t-1}, ``w[0]`` the one into ``h0`` (ones: full BPTT).
      dh_T: cotangent of the final state (``None``: zero).
      douts: cotangents of the step outputs, shaped like ``outs``.

    Returns:
      ``(dparams, dh0, dxs)``: the cell's parameter gradient (without the
      loss's own ∂ℓ/∂θ), the cotangent of ``h0`` (scaled by ``w[0]``) and of
      ``xs``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> cell = jbptt.cells.elman()
      >>> p = cell.init(jax.random.key(0), 2, 3)
      >>> xs = jnp.ones((6, 2))
      >>> h_T, outs, res = jbptt.forward(cell, p, cell.initial_state(p), xs)
      >>> douts = 2 * outs  # L = Σ_t ‖out_t‖²
      >>> dp, dh0, dxs = jbptt.backward(cell, p, res, jnp.ones(6), None, douts)
      >>> loss = lambda p: jnp.sum(jbptt.rnn_scan(cell, p, res.h0, xs)[1] ** 2)
      >>> ref = jax.grad(loss)(p)
      >>> bool(jnp.allclose(dp["W"], ref["W"]))
      True
    """
    if not isinstance(residuals, Residuals):
        raise TypeError(
            "residuals must be the jbptt.Residuals returned by jbptt.forward, got "
            f"{type(residuals).__name__}."
        )
    T = residuals.xs.shape[0]
    w = validation.check_w(w, T, residuals.xs.dtype)
    if dh_T is None:
        dh_T = tree_map(jnp.zeros_like, residuals.h0)
    return _backward(cell, params, residuals, w, dh_T, douts)


def _backward(cell: Cell, params, residuals: Residuals, w, dh_T, douts):
    # Symbolic zeros arrive as zeros here; make dtypes match the primal.
    dh_T = tree_map(lambda g, a: g.astype(a.dtype), dh_T, residuals.h0)
    return _path(cell).backward(cell, params, residuals, w, dh_T, douts)


def step_transpose(cell: Cell, params):
    """``(h_prev, h, res_t, x_t, d) -> J_tᵀ d``, one step's state Jacobian
    transposed (``J_t = ∂h_t/∂h_{t-1}``), unscaled by any link weight.

    ``res_t`` is step t of :attr:`Residuals.res` (``None`` on the generic
    path). Used by :mod:`jbptt.diagnostics` to follow cotangents lag by lag.
    """
    transpose = _path(cell).transpose
    return functools.partial(transpose, cell, params)


# ------------------------------------------------------------- custom_vjp ---


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _rnn_scan(cell: Cell, params, h0, xs, w):
    h_T, outs, _ = _path(cell).forward(cell, params, h0, xs)
    return h_T, outs


def _rnn_scan_fwd(cell: Cell, params, h0, xs, w):
    h_T, outs, residuals = _path(cell).forward(cell, params, h0, xs)
    return (h_T, outs), (params, residuals, w)


def _rnn_scan_bwd(cell: Cell, saved, cotangents):
    params, residuals, w = saved
    dh_T, douts = cotangents
    dparams, dh0, dxs = _backward(cell, params, residuals, w, dh_T, douts)
    return dparams, dh0, dxs, jnp.zeros_like(w)


_rnn_scan.defvjp(_rnn_scan_fwd, _rnn_scan_bwd)


def rnn_scan(cell: Cell, params, h0, xs, w=None, *, checkpoint=None):
    """Run ``cell`` over ``xs``; its gradient is jbptt's reverse scan with ``w``.

    Differentiating any function of the outputs with ``jax.grad`` runs the
    explicit reverse scan (docs/design.md) with link weights ``w``: the forward
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
