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
per-step ``jax.vjp`` is decided in one place, :func:`cell_path`. How the
reverse pass is run over a whole sequence (all steps, in segments, under a
memory budget, or by JAX's autodiff) is chosen by the ``adjoint=`` strategy
(:mod:`jbptt._src.adjoint`), which builds on the pieces here.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jbptt._src import diagonal_scan, diagonal_stack, dtypes, loops, sequences
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
      mask: the padding mask ``[T, *batch]`` (bool, true on real steps), or
        ``None`` (every step is real).
      resets: ``[T, *batch]`` bool, true where an episode starts, or ``None``.
      h_reset: the state a reset restarts from (``h0``; a checkpointed
        segment passes the sequence's ``h0``), or ``None`` without resets.
      steps: how many leading steps were run (an int scalar, traced or
        not), or ``None`` for all T; the reverse scan runs those only.
    """

    h0: Any
    xs: jax.Array
    hs: Any
    res: Any = None
    mask: Any = None
    resets: Any = None
    h_reset: Any = None
    steps: Any = None


def _scale(w_t, tree):
    # w_t is a scalar (shared by the batch) or [*batch] (per sequence).
    return tree_map(lambda a: (sequences.bcast(w_t, a) * a).astype(a.dtype), tree)


def states_before(residuals: Residuals):
    """States ``h_{t-1}`` for t = 0..T-1: ``h0`` followed by ``hs[:-1]``."""
    return tree_map(
        lambda a0, a: jnp.concatenate([a0[None], a[:-1]]), residuals.h0, residuals.hs
    )


def step_inputs(residuals: Residuals):
    """The states entering each step's cell: :func:`states_before`, with
    ``h_reset`` in place of ``h_{t-1}`` where an episode starts."""
    hs_prev = states_before(residuals)
    if residuals.resets is None:
        return hs_prev
    h_reset = tree_map(lambda a: a[None], residuals.h_reset)
    return sequences.select(residuals.resets, h_reset, hs_prev)


def _last(hs):
    return tree_map(lambda a: a[-1], hs)


def _gates(mask, resets, w):
    """Per-step weights of the reverse scan for masks and resets.

    Returns ``(m, w_link, w_reset)``: ``m`` the float mask (or ``None``),
    ``w_link = w ⊙ (1 − resets)`` the weight of the link into h_{t-1},
    ``w_reset = w ⊙ resets`` the weight of the link into ``h_reset`` (or
    ``None``). Without resets ``w_link`` is ``w`` itself, ``[T]`` or ``[T, *batch]``.
    """
    m = None if mask is None else mask.astype(w.dtype)
    if resets is None:
        return m, w, None
    r = resets.astype(w.dtype)
    w = sequences.bcast(w, r) if w.ndim < r.ndim else w
    return m, w * (1 - r), w * r


# ------------------------------------------------- hand-derived rules path ---


def _forward_rules(
    cell: Cell, params, h0, xs, mask=None, resets=None, h_reset=None, steps=None
):
    rules = cell.rules
    params = dtypes.cast(params, xs.dtype)  # the compute copy
    xz = rules.project(params, xs)  # [T, ..., G]: all input projections, one GEMM
    stack_res_only = rules.states is not None and mask is None

    def body(h, inp):
        xz_t, m_t, r_t = inp
        h_in = h if r_t is None else sequences.select(r_t, h_reset, h)
        h_new, res = rules.forward(params, h_in, xz_t)
        if m_t is not None:  # padding: the state stays as it was
            h_new = sequences.select(m_t, h_new, h)
        return h_new, (res if stack_res_only else (h_new, res))

    h_T, stacked = loops.loop(body, h0, (xz, mask, resets), steps, unroll=UNROLL)
    hs, res = (rules.states(stacked), stacked) if stack_res_only else stacked
    outs = rules.output(hs)
    if mask is not None:
        outs = sequences.zero_padding(mask, outs)
    if steps is not None:  # the unrun steps' outputs are zero, as the states
        outs = sequences.zero_padding(jnp.arange(xs.shape[0]) < steps, outs)
    return h_T, outs, Residuals(h0, xs, hs, res, mask, resets, h_reset, steps)


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


def _reverse_body(vjp_step, pack, unpack, masked: bool):
    """One reverse step shared by both paths.

    ``vjp_step(inp, dh, dout_t) -> (dh_prev, out_t)`` is one step's
    Jacobian-transpose product (``dh_prev = J_tᵀ δ_t``, unscaled) plus what
    the scan stacks. With a mask, a padded sequence's cotangent is zeroed
    before the step (no gradient from it) and passed through to h_{t-1}
    instead; with resets, the part of J_tᵀ δ_t weighted by ``w_reset`` is
    accumulated for ``h_reset``. Without either this is exactly the plain
    ``δ_{t-1} = w_t J_tᵀ δ_t`` of the one equation.
    """

    def body(carry, inp):
        dh, acc = carry  # dh: cotangent reaching h_t from later steps, scaled
        step_inp, dout_t, w_t, wr_t, m_t = inp
        dh_in = dh if m_t is None else _scale(m_t, dh)
        dh_prev, out_t = vjp_step(step_inp, unpack(dh_in), dout_t)
        g = pack(dh_prev)
        new = _scale(w_t, g)  # × w_t: the link t → t-1
        if masked:
            new = tree_map(jnp.add, new, _scale(1 - m_t, dh))  # padding: pass
        if acc is not None:
            acc = tree_map(jnp.add, acc, _scale(wr_t, g))  # reset: into h_reset
        return (new, acc), out_t

    return body


def _reverse_scan(body, dh_T, pack, unpack, step_inps, douts, r: Residuals, w):
    m, w_link, w_reset = _gates(r.mask, r.resets, w)
    if m is not None:
        douts = sequences.zero_padding(r.mask, douts)
    acc0 = None if w_reset is None else tree_map(jnp.zeros_like, pack(dh_T))
    (dh0, acc), stacked = loops.loop(
        body,
        (pack(dh_T), acc0),
        (step_inps, douts, w_link, w_reset, m),
        r.steps,
        reverse=True,
        unroll=UNROLL,
    )
    return unpack(dh0), (None if acc is None else unpack(acc)), stacked


def _backward_rules(cell: Cell, params, r: Residuals, w, dh_T, douts):
    rules = cell.rules
    p = dtypes.cast(params, r.xs.dtype)  # compute copy for the sequential part
    hs_prev = step_inputs(r)
    pack, unpack = _packer(dh_T)

    def vjp_step(inp, dh, dout_t):
        h_prev, h, res_t = inp
        return rules.backward(p, h_prev, h, res_t, dh, dout_t)

    body = _reverse_body(vjp_step, pack, unpack, r.mask is not None)
    dh0, dh_reset, dlins = _reverse_scan(
        body, dh_T, pack, unpack, (hs_prev, r.hs, r.res), douts, r, w
    )
    # All weight (and input) gradients at once: vjp of the linear map = GEMMs,
    # in the params' dtype (mixed precision: accumulate over all steps there).
    # linear_states: linear also reads h_1..h_T (a stack's upper layers).
    pdt = dtypes.float_dtype(params) or r.xs.dtype
    states = (hs_prev, r.hs) if rules.linear_states else (hs_prev,)
    states, xs, dlins = dtypes.cast((states, r.xs, dlins), pdt)
    _, linear_vjp = jax.vjp(lambda p_, x: rules.linear(p_, x, *states), params, xs)
    dparams, dxs = linear_vjp(dlins)
    return dparams, dh0, dxs.astype(r.xs.dtype), dh_reset


def _transpose_rules(cell: Cell, params, h_prev, h, res_t, x_t, d):
    dout0 = jnp.zeros_like(cell.rules.output(h))
    return cell.rules.backward(params, h_prev, h, res_t, d, dout0)[0]


# ------------------------------------------------- generic per-step path ---


def _forward_generic(
    cell: Cell, params, h0, xs, mask=None, resets=None, h_reset=None, steps=None
):
    params = dtypes.cast(params, xs.dtype)

    def body(h, inp):
        x_t, m_t, r_t = inp
        h_in = h if r_t is None else sequences.select(r_t, h_reset, h)
        h_new, out = cell.step(params, h_in, x_t)
        if m_t is not None:  # padding: the state stays as it was
            h_new = sequences.select(m_t, h_new, h)
        return h_new, (h_new, out)

    h_T, (hs, outs) = loops.loop(body, h0, (xs, mask, resets), steps)
    if mask is not None:
        outs = sequences.zero_padding(mask, outs)
    return h_T, outs, Residuals(h0, xs, hs, None, mask, resets, h_reset, steps)


def _backward_generic(cell: Cell, params, r: Residuals, w, dh_T, douts):
    p = dtypes.cast(params, r.xs.dtype)
    pdt = dtypes.float_dtype(params) or r.xs.dtype
    identity = (lambda t: t), (lambda t: t)

    # The params' cotangent is accumulated in the carry, in the params' dtype.
    def vjp_step(inp, dh, dout_t):
        h_prev, x_t = inp
        _, step_vjp = jax.vjp(cell.step, p, h_prev, x_t)
        dp_t, dh_prev, dx_t = step_vjp((dh, dout_t))
        return dh_prev, (dtypes.cast(dp_t, pdt), dx_t)

    body = _reverse_body(vjp_step, *identity, r.mask is not None)

    def summing(carry, inp):
        (dh, acc), dparams = carry
        (dh, acc), (dp_t, dx_t) = body((dh, acc), inp)
        return ((dh, acc), tree_map(jnp.add, dparams, dp_t)), dx_t

    zeros = tree_map(jnp.zeros_like, params)
    m, w_link, w_reset = _gates(r.mask, r.resets, w)
    if m is not None:
        douts = sequences.zero_padding(r.mask, douts)
    acc0 = None if w_reset is None else tree_map(jnp.zeros_like, dh_T)
    ((dh0, acc), dparams), dxs = loops.loop(
        summing,
        ((dh_T, acc0), zeros),
        ((step_inputs(r), r.xs), douts, w_link, w_reset, m),
        r.steps,
        reverse=True,
    )
    return dparams, dh0, dxs, acc


def _transpose_generic(cell: Cell, params, h_prev, h, res_t, x_t, d):
    _, vjp = jax.vjp(lambda hp: cell.step(params, hp, x_t)[0], h_prev)
    return vjp(d)[0]


def _forward_diagonal(cell: Cell, params, h0, xs, *args):
    h_T, outs, saved = diagonal_scan.forward(cell, params, h0, xs, *args)
    return h_T, outs, Residuals(*saved)


class Path(NamedTuple):
    forward: Callable
    backward: Callable
    transpose: Callable


_RULES = Path(_forward_rules, _backward_rules, _transpose_rules)
_GENERIC = Path(_forward_generic, _backward_generic, _transpose_generic)
# Diagonal cells: the recurrence and its adjoint elementwise, by the scan
# fastest on the backend (jbptt._src.diagonal_scan), one vjp of the gates.
_DIAGONAL = Path(_forward_diagonal, diagonal_scan.backward, _transpose_generic)


def _forward_diagonal_stack(cell: Cell, params, h0, xs, *args):
    h_T, outs, saved = diagonal_stack.forward(cell, params, h0, xs, *args)
    return h_T, outs, Residuals(*saved)


# A stack of diagonal cells: the layers' diagonal passes, layer by layer.
_DIAGONAL_STACK = Path(
    _forward_diagonal_stack, diagonal_stack.backward, _transpose_generic
)


def cell_path(cell: Cell) -> Path:
    """The one place where the hand-derived, diagonal and generic paths part."""
    if cell.rules is not None:
        return _RULES
    if cell.diagonal is not None:
        return _DIAGONAL
    return _GENERIC if cell.diagonal_layers is None else _DIAGONAL_STACK


# ------------------------------------------------------------ public core ---


def forward(cell: Cell, params, h0, xs, *, lengths=None, resets=None, reset_state=None):
    """Run ``cell`` over ``xs`` and keep what the reverse scan needs.

    Args:
      cell: a :class:`jbptt.cells.Cell`.
      params: the cell's params (pytree of arrays).
      h0: initial state, batch shape matching ``xs``.
      xs: inputs ``[T, I]`` or ``[T, B, I]`` (time-major). Its dtype is the
        compute dtype; params may be kept in another floating dtype (mixed
        precision, see :func:`jbptt.value_and_grad`).
      lengths: ``None``, lengths ``[*batch]`` (ints in ``[1, T]``) or a bool
        mask ``[T, *batch]``: padded steps leave the state unchanged and
        output zeros, so ``h_T`` is each sequence's own last state.
      resets: ``None`` or bool ``[T, *batch]``, true where an episode starts:
        the state entering that step is ``h0`` (see :mod:`jbptt._src.sequences`).
      reset_state: what a reset restarts from, shaped like ``h0`` (default
        ``h0``); :func:`backward` then adds its cotangent to ``dh0``.

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
    xs = sequences.as_inputs(cell, params, xs)  # integer token ids -> float ids
    _, mask, resets = sequences.check_args(cell, params, h0, xs, None, lengths, resets)
    h_reset = sequences.reset_target(cell, params, h0, xs, resets, reset_state)
    return cell_path(cell).forward(cell, params, h0, xs, mask, resets, h_reset)


def backward(cell: Cell, params, residuals: Residuals, w, dh_T, douts):
    """The reverse scan with link weights ``w`` (docs/design.md, "The one equation").

    Args:
      cell: the cell given to :func:`forward`.
      params: the params given to :func:`forward`.
      residuals: the :class:`Residuals` returned by :func:`forward`.
      w: link weights ``[T]`` or, per sequence, ``[T, *batch]``: ``w[t]``
        scales the gradient from step t into h_{t-1}, ``w[0]`` the one into
        ``h0`` (ones: full BPTT).
      dh_T: cotangent of the final state (``None``: zero).
      douts: cotangents of the step outputs, shaped like ``outs``.

    Returns:
      ``(dparams, dh0, dxs)``: the cell's parameter gradient (without the
      loss's own ∂ℓ/∂θ), in the params' dtype; the cotangent of ``h0``
      (scaled by ``w[0]``, plus what resets send to it) and of ``xs``.

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
    xs = residuals.xs
    batch_shape = tuple(xs.shape[1:-1])
    w = sequences.check_link_weights(w, xs.shape[0], batch_shape, xs.dtype)
    if dh_T is None:
        dh_T = tree_map(jnp.zeros_like, residuals.h0)
    dparams, dh0, dxs, dh_reset = backward_unchecked(
        cell, params, residuals, w, dh_T, douts
    )
    if dh_reset is not None:
        dh0 = tree_map(jnp.add, dh0, dh_reset)
    return dparams, dh0, dxs


def backward_unchecked(cell: Cell, params, residuals: Residuals, w, dh_T, douts):
    """:func:`backward` without checks; returns ``(dparams, dh0, dxs,
    dh_reset)``, ``dh_reset`` the cotangent of ``residuals.h_reset`` (``None``
    without resets)."""
    # Symbolic zeros arrive as zeros here; make dtypes match the primal.
    dh_T = tree_map(lambda g, a: g.astype(a.dtype), dh_T, residuals.h0)
    return cell_path(cell).backward(cell, params, residuals, w, dh_T, douts)


def step_transpose(cell: Cell, params):
    """``(h_prev, h, res_t, x_t, d) -> J_tᵀ d``, one step's state Jacobian
    transposed (``J_t = ∂h_t/∂h_{t-1}``), unscaled by any link weight.

    ``res_t`` is step t of :attr:`Residuals.res` (``None`` on the generic
    path). Used by :mod:`jbptt.diagnostics` to follow cotangents lag by lag.
    """
    transpose = cell_path(cell).transpose
    return functools.partial(transpose, cell, params)


# ------------------------------------------------- the autodiff reference ---


def link(h, w_t):
    """Identity forward, backward scaled by ``w_t``: h + (w−1)(h − sg(h)).

    ``w_t`` is a scalar or ``[*batch]`` (one weight per sequence).
    """
    return tree_map(
        lambda a: (
            a
            + (sequences.bcast(w_t, a) - 1).astype(a.dtype)
            * (a - jax.lax.stop_gradient(a))
        ),
        h,
    )


def reference_scan(cell: Cell, params, h0, xs, w, mask=None, resets=None, h_reset=None):
    """The same forward as :func:`jbptt.rnn_scan` by a plain ``lax.scan`` of
    ``cell.step``: ``jax.grad`` of it is ordinary autodiff, and ``jax.jvp``
    works through it. Link weights enter as :func:`link` on the state
    entering each step's cell, which scales its backward by ``w_t`` and
    leaves the forward unchanged."""
    params = dtypes.cast(params, xs.dtype)

    def body(h, inp):
        x_t, w_t, m_t, r_t = inp
        h_in = h if r_t is None else sequences.select(r_t, h_reset, h)
        h_new, out = cell.step(params, link(h_in, w_t), x_t)
        if m_t is not None:
            h_new = sequences.select(m_t, h_new, h)
        return h_new, out

    h_T, outs = jax.lax.scan(body, h0, (xs, w, mask, resets))
    if mask is not None:
        outs = sequences.zero_padding(mask, outs)
    return h_T, outs


# ------------------------------------------------------------- custom_vjp ---


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _rnn_scan(cell: Cell, params, h0, xs, w, mask, resets, h_reset, steps):
    h_T, outs, _ = cell_path(cell).forward(
        cell, params, h0, xs, mask, resets, h_reset, steps
    )
    return h_T, outs


def _rnn_scan_fwd(cell: Cell, params, h0, xs, w, mask, resets, h_reset, steps):
    h_T, outs, residuals = cell_path(cell).forward(
        cell, params, h0, xs, mask, resets, h_reset, steps
    )
    return (h_T, outs), (params, residuals, w)


def _rnn_scan_bwd(cell: Cell, saved, cotangents):
    params, residuals, w = saved
    dh_T, douts = cotangents
    dparams, dh0, dxs, dh_reset = backward_unchecked(
        cell, params, residuals, w, dh_T, douts
    )
    return dparams, dh0, dxs, jnp.zeros_like(w), None, None, dh_reset, None


_rnn_scan.defvjp(_rnn_scan_fwd, _rnn_scan_bwd)

_JVP_REMEDY = (
    "rnn_scan differentiates by jbptt's reverse scan (a jax.custom_vjp), which "
    "has no forward mode. For jax.jvp / jax.jacfwd / forward-over-reverse, pass "
    "adjoint=jbptt.Autodiff() to jbptt.rnn_scan or jbptt.value_and_grad: the "
    "same forward as a plain lax.scan (jbptt.loss is that forward), "
    "differentiated by JAX in either mode."
)


def scan_or_explain(*args, steps=None):
    """The custom-vjp scan ``(cell, params, h0, xs, w, mask, resets, h_reset)
    -> (h_T, outs)`` over the first ``steps`` steps (``None``: all), whose
    ``jax.grad`` runs :func:`backward_unchecked`; a forward-mode attempt gets
    a ``TypeError`` that names the remedy (``adjoint=jbptt.Autodiff()``)."""
    return explained(_rnn_scan, *args, steps)


def explained(run, *args):
    """``run(*args)``, a custom-vjp scan; a forward-mode attempt through it
    gets a ``TypeError`` that names the remedy (``adjoint=jbptt.Autodiff()``)."""
    try:
        return run(*args)
    except TypeError as err:
        if "forward-mode" in str(err) or "jvp" in str(err):
            raise TypeError(f"{_JVP_REMEDY} ({err})") from err
        raise


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
