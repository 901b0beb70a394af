"""Online (streaming) training with truncated or randomly truncated BPTT.

Walk along a long sequence (or a batch of sequences, time-major) in segments
delimited by the cuts of a link-weight vector ``w`` (a cut is ``w_t = 0``):

* TBPTT(k): segments of k steps (Williams & Peng 1990; Jaeger 2002);
* ARTBP (Tallec & Ollivier 2017): cuts drawn at random with probability c_t
  (constant or a schedule of the steps since the last cut), so segments have
  random lengths;
* any single-window estimator of :mod:`jbptt.estimators`, or raw ``w``;
* forward-mode estimators (RTRL, UORO, SnAp-1), one update per step, and any
  estimator implementing the protocol (docs/design.md, "The estimator
  protocol"): the loop asks each for its :class:`~jbptt.estimators.OnlineRule`
  (segment plan and segment gradient) and never for its kind.

At the end of each segment ``[s, e]`` (just before the next cut) one optax
update is applied with the gradient

    g_seg = ∇_θ^{(w)} Σ_{t=s}^{e} ℓ_t(θ, h_t, y_t),  h_{s−1} = stop_gradient(·),

where the reverse scan inside the segment uses the link weights ``w_t`` for
``s < t ≤ e``. For TBPTT those are 1; for ARTBP they are the compensation
factors ``1/(1 − c_t)`` (the forward is never changed by them), so within a
segment the backward signal is

    δ̃_t = ∂ℓ_t/∂h_t + J_{t+1}ᵀ δ̃_{t+1} / (1 − c_{t+1}),   s ≤ t < e,

exactly Tallec & Ollivier's (2017) online ARTBP. The carried state enters
the next segment with its gradient stopped (the link at the cut has weight
0). With a learning rate of zero, the sum of the segment gradients equals
:func:`jbptt.value_and_grad` with the same ``w`` over the whole sequence —
for ARTBP an unbiased estimate of the full gradient (tested); with updates
in between, each segment sees the params of the previous update, as in any
online algorithm.

Random segment lengths do not recompile the step. An estimator with a cut
law (``OnlineRule.cuts`` and ``buckets``: full, TBPTT, ARTBP) fixes a small
set of static segment lengths (buckets) from its law, not from one draw
(:func:`jbptt._src.stream.buckets`); a segment runs in the smallest bucket
that holds it, its extra steps masked out of the loss and out of the carried
state, and a rare longer segment is split into blocks of the largest bucket:
forward through the blocks, then backward from the last, each block handing
the cotangent of its initial state (scaled by its first link weight) to the
block before, the gradients summed and applied once. That is the same
gradient (the reverse scan is linear in its cotangents; equal up to
round-off), and the step compiles at most once per bucket over any number of
calls. Other rules run in buckets of ``min(max(min_bucket, 2^⌈log2 n⌉),
n_max)``.

Batches of streams. All streams of a batch share the segments (the cuts of
``estimator``); ``stream_cuts=`` also cuts every stream by a law of its own,
drawn independently per stream, multiplying its link weights (unbiased for
ARTBP laws; see :func:`train` and docs/design.md, "Online training").

Streams in chunks. Everything a run carries is one :class:`TrainState`
(params, optimizer state, cell state, estimator state, key, global step and
segment counters, the cut law's carry and the unfinished last segment).
Cuts are drawn from the key and the global step only, and with
``flush=False`` the unfinished last segment of a call waits for the next
call's data. So a stream fed in any number of calls, each passing the
previous call's ``History.state`` and all but the last with ``flush=False``,
gives bitwise the same params, optimizer state, cell state, per-segment
losses and gradient norms as one call on the whole stream (same devices and
XLA flags; tested). Rules without a cut law plan each call with ``plan``;
their runs split the same way when each call's plan ends at a segment end
(forward mode, one update per step, always does).
"""

from __future__ import annotations

import collections
import functools
import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jbptt._src import checks, estimators, sequences, sharding, validation
from jbptt._src.cell import Cell
from jbptt._src.estimators import _truncation_segment

tree_map = jax.tree_util.tree_map


class History(NamedTuple):
    """What :func:`train` returns.

    Attributes:
      params: params after the last update.
      opt_state: the optimizer state after the last update.
      h: the state after the last trained step (carry it into a following
        call); with ``flush=False`` the steps of ``state.pending`` come
        after it.
      loss: ``[S]`` mean per-step loss of each segment (before its update).
      grad_norm: ``[S]`` global norm of each segment's gradient (before
        clipping).
      length: ``[S]`` number of steps in each segment.
      start: ``[S]`` first step of each segment.
      buckets: the static lengths the step was compiled for.
      divergences: the segments whose loss, gradients or state were not
        finite (:class:`jbptt.checks.Divergence`: segment index and the
        offending quantities); their updates were not applied.
      est_state: what the estimator carries between segments (forward
        mode's influence; ``()`` for truncation estimators); pass it back as
        ``est_state=`` to continue.
      step_loss: ``[sum(length)]`` the per-step losses ``ℓ_t``, each under
        the params of its segment.
      state: the :class:`TrainState` to continue from (``state=``).
      compiles: compilations of the training step during this call (a
        jit cache-size probe: 0 when every bucket was compiled before).
      padded_steps: bucket steps of the gradient passes, padding included
        (``padded_steps / length.sum()`` is the padding overhead; the loops
        stop at each segment's real length, so the padding costs only the
        GEMMs outside them).
      advanced_steps: forward-only steps re-run to split long segments.
      seconds: wall-clock of the call less compilation and callbacks.
      stopped: whether a callback or ``on_nonfinite="stop"`` ended the call
        early (the rest of its data was not used).
    """

    params: Any
    opt_state: Any
    h: Any
    loss: np.ndarray
    grad_norm: np.ndarray
    length: np.ndarray
    start: np.ndarray
    buckets: tuple[int, ...]
    divergences: tuple[checks.Divergence, ...] = ()
    est_state: Any = ()
    step_loss: np.ndarray | None = None
    state: Any = None
    compiles: int = 0
    padded_steps: int = 0
    advanced_steps: int = 0
    seconds: float = 0.0
    stopped: bool = False


def bucket_length(n: int, min_bucket: int, n_max: int) -> int:
    """Static length a segment of ``n`` steps runs in: a power of two ≥ n,
    at least ``min_bucket``, at most ``n_max`` (the longest segment).

    Examples:
      >>> from jbptt import train
      >>> [train.bucket_length(n, 4, 50) for n in (1, 5, 16, 17, 40)]
      [4, 8, 16, 32, 50]
    """
    b = max(min_bucket, 1 << max(0, int(n) - 1).bit_length())
    return int(min(b, n_max))


_CLIPS = {"global_norm": optax.clip_by_global_norm, "value": optax.clip}


def _check_optimizer(optimizer, clip, clip_mode) -> None:
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            "optimizer must be an optax.GradientTransformation (e.g. "
            f"optax.adam(1e-3)), got {type(optimizer).__name__}."
        )
    if clip_mode not in _CLIPS:
        raise ValueError(
            f"Unknown clip_mode {clip_mode!r}. It needs to be one of {sorted(_CLIPS)}."
        )
    if clip is not None:
        validation.real("clip", clip, low=0.0, low_open=True,
                        what="a positive number or None")  # fmt: skip


def _transform(optimizer, clip, clip_mode) -> optax.GradientTransformation:
    """``optimizer``, after clipping when ``clip`` is given (``optax.chain``)."""
    if clip is None:
        return optimizer
    return optax.chain(_CLIPS[clip_mode](clip), optimizer)


# What keys a compiled training step besides shapes: the model, the
# optimizer and its clipping, and the estimator's segment functions.
_STEP_STATIC = (
    "cell", "loss_fn", "optimizer", "clip", "clip_mode", "segment", "advance",
    "block",
)  # fmt: skip

# The most recently used step programs, one jitted function each (its cache
# holds one executable per bucket). Chunked calls of one model reuse theirs;
# the program of a model not used for the last _PROGRAMS new ones is dropped,
# and its executables with it. (One module-level jit keyed on these as static
# arguments kept every model's executables for the life of the process. On
# XLA:CPU each holds some 200 memory maps of code, so a loop over ~60 fresh
# models ran into vm.max_map_count and LLVM could no longer compile.)
_PROGRAMS = 8
_programs: collections.OrderedDict = collections.OrderedDict()


def _step_program(**static):
    """The jitted :func:`_segment_step` for these static arguments, and a
    dict of what was measured on its compiled steps (:func:`_auto_top`)."""
    key = tuple(static[k] for k in _STEP_STATIC)
    entry = _programs.pop(key, None)
    if entry is None:
        entry = (jax.jit(functools.partial(_segment_step, **static)), {})
    _programs[key] = entry  # most recently used last
    while len(_programs) > _PROGRAMS:
        _programs.popitem(last=False)
    return entry


# XLA:CPU maps a step's temporaries afresh on every call once they pass about
# 32 MiB, and each fresh 4 KiB page costs a few µs (benchmarks/NOTES.md,
# profile point 2): a GRU step at B = 32, H = 128 ran 800 µs per step in a
# bucket of 146 (41 MiB) against 375–473 µs in buckets up to 93 (26 MiB).
_CPU_TEMP_BYTES = 32 << 20
# A generous count of the step- and state-sized arrays a step keeps per time
# step (GRU: about 17 at B = 32, H = 128), below which no probe is needed.
_STEP_ARRAYS = 32


def _auto_top(ladder, compiled, memo: dict, shapes) -> int:
    """``train(top_bucket="auto")``: the longest bucket of ``ladder`` whose
    step needs at most ``_CPU_TEMP_BYTES`` of temporaries, and never below
    the ladder's middle bucket (shorter blocks re-run more forward steps
    than the page faults cost). The temporaries grow linearly with the
    bucket (GRU, B = 32, H = 128: 9.0, 18.0 and 41.1 MiB at 32, 64 and 146
    steps), so the compiled steps of the first and the middle bucket
    (``compiled(b)``, the executables their segments run) give the line.
    Memoised per program and argument shapes, so every chunked call of a
    run makes the same choice.
    """
    key = (ladder, shapes, _CPU_TEMP_BYTES)
    if key not in memo:
        top = b1 = ladder[(len(ladder) - 1) // 2]
        b0 = ladder[0]
        t0, t1 = (_temp_bytes(compiled(b)) for b in (b0, b1))
        if t0 is not None and t1 is not None:
            slope = max(t1 - t0, 0) / (b1 - b0)
            fits = [b for b in ladder if t0 + slope * (b - b0) <= _CPU_TEMP_BYTES]
            top = max([top, *fits])
        memo[key] = top
    return memo[key]


def _may_page_fault(ladder, split, xs, ys, h) -> bool:
    """Whether ``train(top_bucket="auto")`` probes the ladder: on CPU, for a
    ladder of over two buckets whose long segments can be split, unless its
    top bucket fits in ``_CPU_TEMP_BYTES`` even at ``_STEP_ARRAYS`` arrays of
    one step's input, target and state per time step (small models skip
    the probe's compilations)."""
    if not split or ladder is None or len(ladder) <= 2:
        return False
    if jax.default_backend() != "cpu":
        return False
    step = [xs[0], *jax.tree_util.tree_leaves((tree_map(lambda a: a[0], ys), h))]
    step_bytes = sum(np.dtype(a.dtype).itemsize * np.size(a) for a in step)
    return _STEP_ARRAYS * step_bytes * ladder[-1] > _CPU_TEMP_BYTES


def _signature(args) -> tuple:
    """The tree structure, shapes, dtypes and placements of a step's arguments
    (a batch split over devices compiles a step of its own)."""
    leaves, tree = jax.tree_util.tree_flatten(args)
    where = [getattr(a, "sharding", None) for a in leaves]
    kinds = [(np.shape(a), str(getattr(a, "dtype", type(a)))) for a in leaves]
    return (tree, *zip(kinds, where, strict=True))


def _temp_bytes(executable) -> int | None:
    """Temporary bytes of a compiled step (``None`` where XLA does not say)."""
    try:
        return int(executable.memory_analysis().temp_size_in_bytes)
    except (AttributeError, NotImplementedError, TypeError):
        return None


def make_step(
    cell: Cell,
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    *,
    guard: bool = False,
):
    """The jitted online update on one segment of a link-weight estimator.

    Returns ``step(params, opt_state, h, xs, ys, w, start, n, bucket,
    resets=None, reset_state=None) -> (params, opt_state, h, mean_loss,
    grad_norm)``: the segment is ``xs[start : start + bucket]`` (``xs``,
    ``ys``, ``w`` and ``resets`` padded by the caller), of which the first
    ``n`` steps are real. ``bucket`` is static; ``start`` and ``n`` are
    traced, so any segment of a bucket reuses one compilation (the one
    :func:`train` uses for that bucket). ``resets`` (bool ``[T, *batch]``)
    marks episode starts, where the state is replaced by ``reset_state``
    (default: the cell's initial state) and no gradient flows back.

    An update whose loss, gradients, new state or new params are not finite
    is not applied (params, optimizer state and state stay as they were);
    with ``guard=True`` the step also returns ``finite``, the
    :func:`jbptt.checks.finite_flags` saying which. :func:`train` drives the
    same update; use this directly to interleave segments with other work.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import jbptt
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> p = model.init(jax.random.key(0), 1, 4)
      >>> opt = optax.sgd(1e-2)
      >>> step = jbptt.train.make_step(model.cell, model.loss_fn, opt)
      >>> xs = jnp.ones((8, 1))
      >>> w = jbptt.truncation.tbptt(8, 4)
      >>> h = model.cell.initial_state(p)
      >>> p, s, h, loss, gnorm = step(p, opt.init(p), h, xs, xs, w, 4, 3, bucket=4)
      >>> h.shape, loss.shape  # state after step 4 + 3 − 1 = 6
      ((4,), ())
    """
    _check_optimizer(optimizer, None, "global_norm")
    static = dict(
        cell=cell,
        loss_fn=loss_fn,
        optimizer=optimizer,
        clip=None,
        clip_mode="global_norm",
        segment=_truncation_segment,
        advance=None,
        block=None,
    )
    program, _ = _step_program(**static)

    def step(params, opt_state, h, xs, ys, w, start, n, bucket, resets=None,
             reset_state=None):  # fmt: skip
        def cut(a):
            return jax.lax.dynamic_slice_in_dim(jnp.asarray(a), start, bucket, axis=0)

        h_reset = None
        if resets is not None:
            resets = cut(resets)
            h_reset = reset_state
            if h_reset is None:
                h_reset = cell.initial_state(params, jnp.shape(resets)[1:])
        out = program(
            params, opt_state, h, (), None, None, cut(xs), tree_map(cut, ys),
            cut(w), n, None, _UPDATE, resets, h_reset,
        )  # fmt: skip
        params, opt_state, h = out[:3]
        total, norm, finite = out[7:10]
        mean = total / n
        return (params, opt_state, h, mean, norm) + ((finite,) if guard else ())

    return step


class TrainState(NamedTuple):
    """Everything an online run carries from one call of :func:`train` to
    the next.

    Attributes:
      params: current params.
      opt_state: the optimizer state (after clipping, when ``clip`` is set).
      h: the cell state after the last trained step.
      est_state: what the estimator carries (``()`` for truncation).
      key: the run's key: cuts and segment keys are folded from it by the
        global step and segment index, never split per call.
      step: global index of the next step of the stream (steps consumed,
        the pending ones included).
      segment: number of segments trained so far (global segment index).
      cut: the cut law's carry (steps since the last cut).
      pending: ``(xs, ys, w)`` of the unfinished last segment (``None`` when
        there is none): steps already cut, waiting for the next call's data
        to end their segment. Pass ``flush=True`` at the stream's end.
      stream_cut: with ``stream_cuts=``, every stream's own cut-law carry
        (``[n_streams]`` steps since its last own cut), else ``None``.
    """

    params: Any
    opt_state: Any
    h: Any
    est_state: Any
    key: Any
    step: int = 0
    segment: int = 0
    cut: int = 1
    pending: Any = None
    stream_cut: Any = None


class Event(NamedTuple):
    """What a callback sees after each segment's update.

    Attributes:
      state: the :class:`TrainState` after the update (``pending`` not yet
        set: it is filled in at the end of the call).
      index: global segment index.
      start: global index of the segment's first step.
      length: number of steps in the segment (each step of the stream is in
        exactly one event).
      loss: mean per-step loss of the segment (a device scalar; ``float``
        waits for it).
      grad_norm: global norm of the segment's gradient (device scalar).
      seconds: training wall-clock of this call so far, without compilation
        and callbacks.
    """

    state: TrainState
    index: int
    start: int
    length: int
    loss: Any
    grad_norm: Any
    seconds: float


def every(n: int, fn: Callable[[Event], Any]) -> Callable[[Event], Any]:
    """A callback calling ``fn(event)`` after each segment that reaches a
    multiple of ``n`` global steps (once per segment, however many
    multiples it crosses): evaluation, logging, checkpoints.

    Its return value is passed on (``True`` stops training).

    Examples:
      >>> from jbptt import train
      >>> seen = []
      >>> cb = train.every(10, lambda e: seen.append(e.start + e.length))
      >>> for s in (0, 8, 16, 24):  # segments of 8 steps
      ...     _ = cb(train.Event(None, s // 8, s, 8, 0.0, 0.0, 0.0))
      >>> seen
      [16, 24, 32]
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}.")

    def callback(event: Event):
        if (event.start + event.length) // n > event.start // n:
            return fn(event)
        return None

    return callback


# Backend compile seconds of the whole process (jax.monitoring), to leave
# compilation out of History.seconds.
_COMPILE_SECONDS = [0.0]


def _on_duration(event: str, duration: float, **kwargs) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILE_SECONDS[0] += duration


jax.monitoring.register_event_duration_secs_listener(_on_duration)

# Modes of the split-capable step (traced, so one compilation per bucket).
_UPDATE, _ADVANCE, _ACCUMULATE = 0, 1, 2


def _segment_step(
    params,
    opt_state,
    h,
    est_state,
    g_acc,
    dh_end,
    xs,
    ys,
    w,
    n,
    key,
    mode,
    resets=None,
    h_reset=None,
    *,
    cell,
    loss_fn,
    optimizer,
    clip,
    clip_mode,
    segment,
    advance,
    block,
):
    """One segment (or block) of static length ``xs.shape[0]`` with ``n``
    real steps, then (mode ``_UPDATE``) one guarded optimizer update.

    Without ``block``: the rule's ``segment``. With it, every segment runs
    through ``block`` (``dh_end = 0``, ``g_acc = 0`` for a whole segment)
    and the traced ``mode`` picks the forward-only ``advance`` or a block
    whose gradient is accumulated into ``g_acc``, without an update: the
    pieces of a split segment share the bucket's one compilation.

    ``resets [bucket, *batch]`` (or ``None``): episode starts, handed to the
    rule's functions as ``resets=`` with ``reset_state=h_reset``; padded
    steps never reset.
    """
    bucket = xs.shape[0]
    mask = (jnp.arange(bucket) < n).astype(xs.dtype)  # padded steps: no loss
    ldt = jnp.result_type(float)
    kw = {}
    if resets is not None:
        real = (jnp.arange(bucket) < n).reshape((bucket,) + (1,) * (resets.ndim - 1))
        kw = {"resets": resets & real, "reset_state": h_reset}
    if block is None:
        losses, g, h_new, est_new = segment(
            cell, loss_fn, params, h, est_state, xs, ys, w, mask, key, **kw
        )
        dh_start, apply = dh_end, True
    else:

        def run_block(_):
            losses, g, h_new, dh = block(
                cell, loss_fn, params, h, xs, ys, w, mask, dh_end, **kw
            )
            h_new = tree_map(lambda a, b: a.astype(b.dtype), h_new, h)
            return losses.astype(ldt), tree_map(jnp.add, g, g_acc), h_new, dh

        def run_advance(_):
            h_new = advance(cell, params, h, xs, mask, **kw)
            h_new = tree_map(lambda a, b: a.astype(b.dtype), h_new, h)
            zeros = tree_map(jnp.zeros_like, dh_end)
            return jnp.zeros((bucket,), ldt), g_acc, h_new, zeros

        losses, g, h_new, dh_start = jax.lax.cond(
            mode == _ADVANCE, run_advance, run_block, None
        )
        est_new, apply = est_state, mode == _UPDATE
    tx = _transform(optimizer, clip, clip_mode)
    total, norm = jnp.sum(losses), optax.tree.norm(g)
    # Value-level guard (no Python `if` on tracers): a non-finite segment
    # leaves everything as it was; the caller reports it from the flags.
    finite = checks.finite_flags(loss=total, grads=g, state=h_new)
    ok = checks.all_finite(finite) & apply

    def update(_):
        updates, new_opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), new_opt_state

    # The updated params are checked too: a NaN learning rate or clip makes
    # them non-finite from finite gradients, and such an update is not applied.
    if block is None:
        new = (*update(None), h_new, est_new)
        finite = {**finite, **checks.finite_flags(params=new[0])}
        ok = checks.all_finite(finite) & apply
        kept = checks.select_if(ok, new, (params, opt_state, h, est_state))
    else:
        p_o = jax.lax.cond(ok, update, lambda _: (params, opt_state), None)
        finite = {**finite, **checks.finite_flags(params=p_o[0])}
        ok = ok & checks.all_finite(finite)
        p_o = checks.select_if(ok, p_o, (params, opt_state))
        # a block always hands its state on; an update keeps it only if finite
        h_kept = checks.select_if(ok | (mode != _UPDATE), h_new, h)
        kept = (*p_o, h_kept, est_new)
    # one scalar for the host to read; the flags only when it is false
    return (*kept, losses, g, dh_start, total, norm, finite, checks.all_finite(finite))


def _check_data(cell, loss_fn, xs, ys, min_bucket) -> int:
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a jbptt Cell, got {type(cell).__name__}.")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}.")
    is_int = isinstance(min_bucket, int) and not isinstance(min_bucket, bool)
    if min_bucket is not None and (not is_int or min_bucket <= 0):
        raise ValueError(f"min_bucket must be a positive int, got {min_bucket!r}.")
    if not hasattr(xs, "shape") or xs.ndim < 2:
        raise ValueError(
            "xs must be an array of shape (T, I) or (T, B, I), got "
            f"{getattr(xs, 'shape', type(xs).__name__)}."
        )
    T = xs.shape[0]
    for leaf in jax.tree_util.tree_leaves(ys):
        if np.shape(leaf)[:1] != (T,):
            raise ValueError(
                f"ys must be time-major with length T = {T} (the length of xs), "
                f"got a leaf of shape {np.shape(leaf)}."
            )
    return T


def _check_mesh(mesh, batch_shape):
    """``train(mesh=)``: a 1-D mesh whose devices divide the batch evenly."""
    mesh = sharding.resolve_mesh(mesh)
    if not batch_shape:
        raise ValueError(
            "mesh: splits the batch of xs [T, B, I] over devices, but xs has no "
            "batch axis; pass a batch of streams or mesh=None."
        )
    if batch_shape[0] % mesh.size:
        raise ValueError(
            f"mesh: the batch of {batch_shape[0]} streams (xs.shape[1]) must divide "
            f"evenly over the mesh's {mesh.size} devices."
        )
    return mesh


def _check_takes_resets(rule, name: str) -> None:
    """Resets are handed to the rule's functions as ``resets=`` and
    ``reset_state=``; refuse up front a rule whose ``segment`` has no such
    argument (e.g. an estimator written before resets existed)."""
    try:
        params = inspect.signature(rule.segment).parameters
    except (TypeError, ValueError):  # no signature to read: let it run
        return
    kinds = {p.kind for p in params.values()}
    if "resets" not in params and inspect.Parameter.VAR_KEYWORD not in kinds:
        raise ValueError(
            f"resets: estimator {name} cannot train on a stream with resets (its "
            "OnlineRule.segment takes no resets= and reset_state= arguments); "
            "use a truncation or forward-mode estimator, or split the stream at "
            "the episode starts."
        )


def _split_ok(rule) -> bool:
    """Whether the rule's split form (``advance``, ``block``) is its own."""
    if rule.block is None or rule.advance is None:
        return False
    return getattr(rule.block, "splits", rule.segment) is rule.segment


def _capped(ladder, top: int, split: bool, name: str) -> tuple[int, ...]:
    """The ladder's buckets up to ``top`` (``(top,)`` when none is), for
    ``train(top_bucket=)``; longer segments are then split."""
    if ladder is None or not split:
        raise ValueError(
            f"top_bucket: estimator {name} has no bucket ladder whose long "
            "segments can be split (an OnlineRule with buckets, advance and "
            "block, as the cut-law estimators have)."
        )
    return tuple(b for b in ladder if b <= top) or (top,)


def _pad(a: np.ndarray, s: int, n: int, b: int) -> np.ndarray:
    """``a[s : s + n]`` padded to ``b`` steps by repeating its last step:
    padded steps are real-valued data (no NaN in masked losses) and never
    reach the loss or the carry."""
    seg = a[s : s + n]
    if b == n:
        return seg
    return np.concatenate([seg, np.repeat(seg[-1:], b - n, axis=0)], axis=0)


def _cat(a, b):
    return b if a is None else tree_map(lambda u, v: np.concatenate([u, v]), a, b)


_STREAM_SALT = 0x5EED  # folded into the run's key for the streams' own cuts


def _stream_rule(stream_cuts, batch_shape):
    """The online rule whose cut law cuts each stream on its own."""
    est = estimators.as_estimator(stream_cuts)
    rule = est.online()
    if rule.cuts is None:
        raise ValueError(
            f"stream_cuts: estimator {est.name} draws no cuts along a stream "
            "(OnlineRule.cuts); pass one with a cut law, e.g. "
            "estimators.artbp_matched(k) or estimators.tbptt(k, random_offset=True)."
        )
    if not batch_shape:
        raise ValueError(
            "stream_cuts needs a batch of streams: xs must be [T, B, I] (got "
            "one stream [T, I]); a single stream's cuts are the estimator's."
        )
    return rule


def _stream_weights(stream_rule, key, t0: int, T: int, carry, batch_shape):
    """Each stream's own link weights ``[T, *batch]`` for global steps
    ``t0 .. t0 + T − 1`` and the new per-stream carries. Stream j draws from
    ``fold_in(fold_in(key, salt), j)``: independent of the shared cuts and of
    the other streams, and chunk-invariant like them."""
    n = int(np.prod(batch_shape))
    carry = np.ones(n, int) if carry is None else np.asarray(carry, int)
    base = jax.random.fold_in(key, _STREAM_SALT)
    keys = [jax.random.fold_in(base, j) for j in range(n)]
    many = getattr(stream_rule.cuts, "streams", None)  # all streams at once
    if many is not None:
        w, new = many(keys, t0, T, carry)
        return np.asarray(w).reshape((T, *batch_shape)), np.asarray(new, int)
    cols, new = [], np.empty(n, int)
    for j in range(n):
        w, new[j] = stream_rule.cuts(keys[j], t0, T, int(carry[j]))
        cols.append(np.asarray(w))
    return np.stack(cols, axis=1).reshape((T, *batch_shape)), new


def _draw(rule, stream_rule, key, t0: int, T: int, cut, stream_cut, batch_shape,
          dtype):  # fmt: skip
    """The link weights of global steps ``t0 .. t0 + T − 1``: the shared
    ones ``[T]`` (their zeros are the segment ends), the ones the segments
    use (the shared ones, times each stream's own ``[T, *batch]`` when
    ``stream_rule`` is given) and both laws' new carries."""
    shared, cut = rule.cuts(key, t0, T, cut)
    shared = np.asarray(shared, dtype)
    if stream_rule is None:
        return shared, shared, cut, None
    own, stream_cut = _stream_weights(stream_rule, key, t0, T, stream_cut, batch_shape)
    w = shared.reshape((T,) + (1,) * len(batch_shape)) * own.astype(dtype)
    return shared, w, cut, stream_cut


def link_weights(estimator, key, T: int, *, batch_shape=(), stream_cuts=None):
    """The link weights :func:`train` uses on the first ``T`` steps of a
    stream: ``[T]`` shared, or ``[T, *batch_shape]`` with ``stream_cuts``
    (the shared weights times each stream's own, see :func:`train`).

    Feed them to :func:`jbptt.value_and_grad` (or the sweep) to study the
    online estimator offline: with no update in between, the sum of
    ``train``'s segment gradients is that gradient (tested).

    Examples:
      >>> import jax
      >>> from jbptt import estimators, train
      >>> w = train.link_weights(estimators.tbptt(4), jax.random.key(0), 8,
      ...                        batch_shape=(3,),
      ...                        stream_cuts=estimators.artbp(0.5))
      >>> w.shape, bool((w[4] == 0).all())  # the shared cut cuts every stream
      ((8, 3), True)
    """
    validation.positive_int("T", T)
    estimator = estimators.as_estimator(estimator)
    rule = estimator.online()
    if rule.cuts is None:
        raise ValueError(
            f"estimator {estimator.name} draws no cuts along a stream "
            "(OnlineRule.cuts): its link weights are its sample()."
        )
    batch_shape = tuple(batch_shape)
    stream_rule = None
    if stream_cuts is not None:
        stream_rule = _stream_rule(stream_cuts, batch_shape)
    dtype = jnp.result_type(float)
    _, w, _, _ = _draw(rule, stream_rule, key, 0, T, 1, None, batch_shape, dtype)
    return w


def train(
    cell: Cell,
    loss_fn: Callable,
    params,
    xs,
    ys,
    optimizer: optax.GradientTransformation,
    estimator,
    *,
    key: jax.Array | None = None,
    h0=None,
    opt_state=None,
    est_state=None,
    clip: float | None = None,
    clip_mode: str = "global_norm",
    min_bucket: int | None = None,
    max_buckets: int | None = None,
    top_bucket: int | str | None = "auto",
    on_nonfinite: str = "raise",
    state: TrainState | None = None,
    flush: bool = True,
    callbacks: Sequence[Callable[[Event], Any]] = (),
    progress: bool = False,
    resets=None,
    reset_state=None,
    lengths=None,
    stream_cuts=None,
    mesh=None,
) -> History:
    """Train online along ``xs``, one optax update per segment.

    See the module docstring for the exact estimator and what holds across
    calls. ``xs``/``ys`` are one long sequence ``[T, I]`` or a batch
    ``[T, B, I]`` (time-major); all batch members share the segments, so the
    update is the gradient of the batch's summed loss over each shared
    segment; ``stream_cuts=`` adds cuts of each stream's own (below).

    Args:
      cell: a :class:`jbptt.cells.Cell` (built-in, Flax via
        ``cells.from_flax``, or a :func:`jbptt.readout` model's ``cell``).
      loss_fn: per-step loss ``(params, out_t, y_t) -> scalar``.
      params: initial params (ignored when ``state`` is given).
      xs: inputs ``[T, ..., I]``.
      ys: targets, time-major, length T.
      optimizer: any ``optax.GradientTransformation``. The compiled step is
        keyed on the objects ``cell``, ``loss_fn``, ``optimizer`` and the
        estimator's rule, so pass the same ones to every chunked call: a
        fresh ``optax.adam(1e-3)`` per call compiles every bucket again.
        The steps of the last 8 such combinations are kept; older ones
        are released with their compiled code.
      estimator: any estimator of the protocol with an online rule: a
        single-window :class:`jbptt.estimators.Estimator` (``full()``,
        ``tbptt(k)``, ``tbptt(k, random_offset=True)``, ``artbp(c)``; its
        cuts delimit segments), link weights ``w[T]``, a forward-mode
        estimator (``jbptt.forward_mode.rtrl()``, ``uoro()``, ``snap1()``:
        one update per step) or your own.
      key: PRNG key for random estimators (ignored when ``state`` is given).
      h0: initial state (default: zeros from ``cell.initial_state``).
      opt_state: optimizer state to resume from (default: ``optimizer.init``,
        after the clipping transformation when ``clip`` is given).
      est_state: the estimator's carried state to resume from
        (``History.est_state`` of the previous call; default: its ``init``).
      clip: if given, clip gradients before ``optimizer`` with
        ``optax.clip_by_global_norm(clip)`` (``clip_mode="global_norm"``) or
        ``optax.clip(clip)`` (``clip_mode="value"``), chained by
        ``optax.chain``.
      clip_mode: ``"global_norm"`` or ``"value"``.
      min_bucket: smallest static segment length compiled (default: the
        estimator's buckets as they are; 8 for rules without buckets).
      max_buckets: how many static segment lengths an estimator with a cut
        law may compile (default: its own choice, 6 for the built-ins). More
        buckets pad less (padding ``History.padded_steps / length.sum()``:
        about 1.3–1.4 at 6 and 1.1–1.2 at 16 for ARTBP at depth 8–32) and
        compile more, once each (about 3 s per bucket for an LSTM with
        B = 32, H = 128 on a 2-core CPU). The loops skip padded steps, so
        padding costs only the GEMMs outside them: there, 16 buckets ran
        ARTBP within noise of 6 (benchmarks/NOTES.md); raise it for large
        hidden sizes, where those GEMMs dominate.
      top_bucket: the longest static segment length compiled: an int,
        ``None`` (the law's own, its 0.99 quantile) or ``"auto"`` (default).
        The ladder keeps its buckets up to ``top_bucket`` (or is this one
        bucket when it has none) and a longer segment is split into blocks
        without changing its gradient. On CPU a long bucket whose step needs
        over ~32 MiB of temporaries pays page faults on every call; below
        that it can be faster despite the splits (benchmarks/NOTES.md: GRU,
        B = 32, H = 128, ARTBP at depth 32: 1.21 s with the top bucket 146,
        1.06 s with ``top_bucket=93``). ``"auto"`` makes that cut on the CPU
        backend: it reads the temporaries of the first and middle buckets'
        compiled steps (compiled once, as their segments need them) and
        drops the buckets whose step would pass 32 MiB, keeping at least
        the lower half of the ladder; the same choice in every call of a
        run (small models, whose top bucket holds under 32 MiB even at 32
        arrays of a step's input, target and state per time step, skip the
        probe). An int needs an estimator with a cut law whose rule can
        split segments; ``"auto"`` leaves other estimators as they are.
      on_nonfinite: what to do when a segment's loss, gradients or state are
        NaN or inf (its update is never applied): ``"raise"`` a
        :class:`jbptt.checks.DivergenceError` naming the segment and the
        quantities, ``"stop"`` and return the history so far, or ``"skip"``
        the segment and go on. Either way it is listed in
        ``History.divergences``. The data are checked up front with
        :func:`jbptt.check_finite`.
      state: a :class:`TrainState` to continue from (``History.state``):
        params, optimizer, cell and estimator states, key and position in
        the stream; ``params``, ``key``, ``h0``, ``opt_state`` and
        ``est_state`` are then ignored.
      flush: whether the stream ends with this call: the last segment is
        trained even though no cut ends it. With ``flush=False`` it waits in
        ``History.state.pending`` for the next call (chunked streams).
      callbacks: functions ``event -> bool | None`` called after every
        segment with an :class:`Event` (wrap with :func:`every` for every n
        steps); one returning ``True`` stops training after that segment
        (the rest of this call's data is not used).
      progress: show a progress bar (tqdm) with the last segment's loss and
        the segments per second.
      resets: ``None`` or bool ``[T, *batch]``, true where a new episode
        starts in a stream of concatenated episodes (streaming RL's
        convention): the state entering that step is ``reset_state`` and
        no gradient crosses the reset, inside a segment or into the
        carried state. The state carried to the next segment is the
        reset-aware one; forward-mode estimators also zero their influence
        at a reset. A segment's gradient is then exactly the gradient of
        the segment's reset forward (:func:`jbptt.value_and_grad` with
        ``resets=`` and ``reset_state=``) from the carried state. Resets
        do not move the cuts. With ``flush=False`` the pending steps keep
        their resets for the next call.
      reset_state: what a reset restarts from, shaped like the state
        (default: ``h0`` when given, else ``cell.initial_state``; pass it
        when ``h0`` is a state carried over from an earlier call).
      lengths: refused (``ValueError``). Online training walks every stream
        of a batch in shared segments and ``loss_fn`` reduces over the
        batch, so there is no "end" of one stream to stop at: feed streams
        of different lengths in separate calls, or concatenate episodes in
        one stream and mark their starts with ``resets``. Variable lengths
        belong to :func:`jbptt.value_and_grad` and :func:`jbptt.sweep.sweep`.
      stream_cuts: ``None`` (shared cuts) or an estimator with a cut law
        (e.g. ``estimators.artbp_matched(k)``) whose cuts are drawn for each
        stream of the batch independently (xs ``[T, B, I]``), in addition
        to the shared cuts of ``estimator``, which still end the segments
        and time the updates. A link of stream b then has weight
        ``w_t · w_t^(b)``: 0 where either law cuts, else
        ``1/(1 − c_t) · 1/(1 − c_t^(b))``. Both factors are independent
        with expectation 1, so the estimate stays unbiased for ARTBP laws
        (for fixed params), and the streams' truncations are independent
        instead of all cut together; each stream is cut by both laws, so
        its expected backprop depth is shorter than either law's mean
        segment (pick the two means together: e.g. shared updates every
        ~2k steps and streams cut at k). :func:`link_weights` gives the
        weights of a stream for offline study.
      mesh: ``None`` (one device) or a device count, device list or 1-D
        mesh (:func:`jbptt.sharding.make_mesh`) to split the batch over
        (data parallel, :func:`jbptt.sharding.split_batch`): each device
        runs the scans of its own ``B / n`` streams, params and optimizer
        state are replicated and the gradients summed across devices. The
        batch ``B`` (``xs [T, B, I]``) must divide evenly. On a CPU with
        host devices (``jax.config.update("jax_num_cpu_devices", n)``
        before jax starts) this runs small models' per-step products on
        several cores (benchmarks/NOTES.md, "Batch over host devices").

    Returns:
      A :class:`History`; ``History.state`` continues the run.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import jbptt
      >>> from jbptt import estimators
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> params = model.init(jax.random.key(0), 1, 8)
      >>> xs = jax.random.normal(jax.random.key(1), (64, 1))
      >>> hist = jbptt.train.train(model.cell, model.loss_fn, params, xs, xs,
      ...                          optax.adam(1e-2), estimators.tbptt(8))
      >>> hist.loss.shape, hist.length.tolist()[:2]
      ((8,), [8, 8])

      The same stream in two calls, the first leaving its unfinished
      segment pending: bitwise the same run.

      >>> a = jbptt.train.train(model.cell, model.loss_fn, params, xs[:30],
      ...                       xs[:30], optax.adam(1e-2), estimators.tbptt(8),
      ...                       flush=False)
      >>> b = jbptt.train.train(model.cell, model.loss_fn, None, xs[30:],
      ...                       xs[30:], optax.adam(1e-2), estimators.tbptt(8),
      ...                       state=a.state)
      >>> bool(jnp.all(b.params["cell"]["W"] == hist.params["cell"]["W"]))
      True
    """
    if lengths is not None:
        raise ValueError(
            "lengths is not taken by train: online training walks all streams of "
            "a batch in shared segments with loss_fn reducing over the batch, so "
            "no stream can end early. Train streams of different lengths in "
            "separate calls, or concatenate episodes in one stream and mark "
            "their starts with resets=."
        )
    if isinstance(cell, Cell):  # integer token ids of a token model
        xs = sequences.as_inputs(
            cell, params if state is None else getattr(state, "params", params), xs
        )
    T = _check_data(cell, loss_fn, xs, ys, min_bucket)
    if max_buckets is not None:
        validation.positive_int("max_buckets", max_buckets)
    if top_bucket not in (None, "auto"):
        validation.positive_int(
            "top_bucket", top_bucket, 'a positive int, "auto" or None'
        )
    batch_shape = tuple(xs.shape[1:-1])
    if mesh is not None:
        mesh = _check_mesh(mesh, batch_shape)
    resets_np = None
    if resets is not None:
        resets_np = np.asarray(sequences.check_resets(resets, T, batch_shape))
    checks.check_policy(on_nonfinite)
    checks.check_finite(xs=xs, ys=ys, h0=h0)
    _check_optimizer(optimizer, clip, clip_mode)
    if not isinstance(flush, bool):
        raise TypeError(f"flush must be a bool, got {flush!r}.")
    callbacks = tuple(callbacks)
    for cb in callbacks:
        if not callable(cb):
            raise TypeError(f"callbacks must be callables event -> bool, got {cb!r}.")
    estimator = estimators.as_estimator(estimator)
    rule = estimator.online()
    stream_rule = None
    if stream_cuts is not None:
        stream_rule = _stream_rule(stream_cuts, batch_shape)
        if rule.cuts is None:
            raise ValueError(
                f"stream_cuts: estimator {estimator.name} draws no shared cuts "
                "along the stream (OnlineRule.cuts), so there are no segments "
                "to cut further; use a truncation estimator (tbptt, artbp)."
            )
    if state is None:
        if key is None:
            if not estimator.deterministic:
                raise ValueError(f"estimator {estimator.name} is random: pass key=.")
            key = jax.random.key(0)
        h = cell.initial_state(params, tuple(xs.shape[1:-1])) if h0 is None else h0
        if est_state is None:
            est_state = rule.init(cell, params, h, xs[0])
        if opt_state is None:
            opt_state = _transform(optimizer, clip, clip_mode).init(params)
        state = TrainState(params, opt_state, h, est_state, key)
    elif not isinstance(state, TrainState):
        raise TypeError(
            f"state must be a jbptt.train.TrainState (History.state), got "
            f"{type(state).__name__}."
        )

    xs_np = np.asarray(xs)
    ys_np = tree_map(np.asarray, ys)
    dtype = xs_np.dtype
    P = 0 if state.pending is None else int(state.pending[0].shape[0])
    base = state.step - P  # global index of the first step below
    if rule.cuts is not None:
        shared, w_new, cut, stream_cut = _draw(
            rule, stream_rule, state.key, state.step, T, state.cut,
            state.stream_cut, batch_shape, dtype,
        )  # fmt: skip
        g_idx = state.step + np.arange(T)
        cuts = P + np.flatnonzero((shared == 0) & (g_idx > 0))
        ends = np.concatenate([cuts, [P + T]])
        starts = np.concatenate([[0], cuts])
        keep = ends > starts  # a cut at the call's first step ends no pending
        starts, ends = starts[keep], ends[keep]
        lengths = ends - starts
        if state.pending is not None:
            pxs, pys, pw, *pr = state.pending
            if np.ndim(pw) != w_new.ndim:
                raise ValueError(
                    "stream_cuts: the pending steps of state were cut "
                    f"{'per stream' if np.ndim(pw) > 1 else 'shared only'}; "
                    "pass the same stream_cuts= in every call of one run."
                )
            xs_np, ys_np = np.concatenate([pxs, xs_np]), _cat(pys, ys_np)
            w_new = np.concatenate([pw, w_new])
            pr = pr[0] if pr else None
            if pr is not None or resets_np is not None:  # no resets: all false
                none = np.zeros((P, *batch_shape), bool)
                new = np.zeros((T, *batch_shape), bool)
                pr = none if pr is None else np.asarray(pr, bool)
                new = new if resets_np is None else resets_np
                resets_np = np.concatenate([pr, new])
    else:
        if state.pending is not None:
            raise ValueError(
                f"state has {P} pending steps but estimator {estimator.name} "
                "draws no cuts along a stream (OnlineRule.cuts); flush the "
                "previous call."
            )
        plan_key = (
            state.key if state.step == 0 else jax.random.fold_in(state.key, state.step)
        )
        lengths, w_new = rule.plan(plan_key, T)
        lengths = np.asarray(lengths, int)
        if lengths.ndim != 1 or lengths.sum() != T or np.any(lengths < 1):
            raise ValueError(
                f"estimator {estimator.name}: its plan must give positive segment "
                f"lengths summing to T = {T}, got {lengths.tolist()}."
            )
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int)
        w_new = np.ones(T, dtype) if w_new is None else np.asarray(w_new, dtype)
        cut, stream_cut = state.cut, None
    w_all = w_new
    n_train = len(lengths) if (flush or rule.cuts is None) else len(lengths) - 1
    h_reset = None
    if resets_np is not None:
        _check_takes_resets(rule, estimator.name)
        h_reset = reset_state if reset_state is not None else h0
        if h_reset is None:
            h_reset = cell.initial_state(state[0], batch_shape)
        try:
            validation.check_h0(cell, state[0], h_reset, batch_shape)
        except (TypeError, ValueError) as err:
            raise type(err)(f"reset_state (checked like h0): {err}") from err

    split = _split_ok(rule)
    if rule.buckets is not None:
        lo = 1 if min_bucket is None else min_bucket
        if max_buckets is None:
            ladder = tuple(sorted(rule.buckets(lo)))
        else:
            try:
                ladder = tuple(sorted(rule.buckets(lo, max_buckets=max_buckets)))
            except TypeError as err:
                raise TypeError(
                    f"max_buckets: estimator {estimator.name}'s OnlineRule.buckets "
                    f"takes no max_buckets= ({err})."
                ) from None
    else:
        ladder = None
    if top_bucket not in (None, "auto"):
        ladder = _capped(ladder, top_bucket, split, estimator.name)
    mb = 8 if min_bucket is None else min_bucket
    n_max = int(lengths.max())

    def bucket_of(n):
        if ladder is not None:
            fits = [b for b in ladder if b >= n]
            if fits:
                return fits[0]
            if split:
                return None  # split into blocks of ladder[-1]
        return bucket_length(n, mb, n_max)

    static = dict(
        cell=cell,
        loss_fn=loss_fn,
        optimizer=optimizer,
        clip=clip,
        clip_mode=clip_mode,
        segment=rule.segment,
        advance=rule.advance if split else None,
        block=rule.block if split else None,
    )
    program, measured = _step_program(**static)
    params, opt_state, h, est_state = state[:4]
    if mesh is not None:  # params replicated, streams split (data parallel)
        params, opt_state = sharding.replicate((params, opt_state), mesh)
        h = sharding.split_batch(h, mesh)
        if h_reset is not None:
            h_reset = sharding.split_batch(h_reset, mesh)
    zeros_g = tree_map(jnp.zeros_like, params)
    zeros_h = tree_map(jnp.zeros_like, h)
    compile0 = _COMPILE_SECONDS[0]

    def args_of(h, g_acc, dh, s, n, b, seg_key, mode):
        data = (
            _pad(xs_np, s, n, b),
            tree_map(lambda a: _pad(a, s, n, b), ys_np),
            _pad(w_all, s, n, b),
        )
        r = None if resets_np is None else _pad(resets_np, s, n, b)
        if mesh is not None:  # [T, B, ...] split on B; shared w[T] replicated
            data, r = sharding.split_batch((data, r), mesh, axis=1)
        return (
            params, opt_state, h, est_state, g_acc, dh, *data, n, seg_key,
            mode, r, h_reset,
        )  # fmt: skip

    def run(*segment):
        return program(*args_of(*segment))

    if top_bucket == "auto" and _may_page_fault(ladder, split, xs_np, ys_np, h):

        def probe(b):  # a segment's arguments in bucket b
            n = min(b, len(xs_np))
            return args_of(h, zeros_g, zeros_h, 0, n, b, state.key, _UPDATE)

        compiled = lambda b: program.lower(*probe(b)).compile()  # noqa: E731
        top = _auto_top(ladder, compiled, measured, _signature(probe(ladder[0])))
        ladder = _capped(ladder, top, split, estimator.name)
    cache0 = program._cache_size()
    t_start, t_callbacks = time.perf_counter(), 0.0

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=T, unit="step", mininterval=0.5)
    records, divergences, used = [], [], set()
    padded = advanced = 0
    stopped = False
    # Without callbacks or a bar, the finite flags of segment i are read
    # after segment i + 1 is dispatched, so the host prepares the next
    # segment while the device runs this one; a divergence found late
    # discards the segment dispatched after it.
    lag = not callbacks and bar is None
    unchecked = None  # (index, finite) of the last segment not yet checked

    def check(index, finite, all_ok) -> bool:
        if bool(all_ok):  # one transfer per segment, not one per flag
            return False
        div = checks.handle_nonfinite(index, finite, on_nonfinite)
        if div is not None:
            divergences.append(div)
        return div is not None and div.action == "stopped"

    for i in range(n_train):
        s, n = int(starts[i]), int(lengths[i])
        index = state.segment + i
        seg_key = state.key if split else jax.random.fold_in(state.key, index)
        b = bucket_of(n)
        before = (params, opt_state, h, est_state)
        if b is not None:
            used.add(b)
            padded += b
            out = run(h, zeros_g, zeros_h, s, n, b, seg_key, _UPDATE)
            totals = [out[7]]
            seg_losses = [(out[4], n)]
        else:
            # Split: forward through blocks of the top bucket, then backward
            # from the last block, the cotangent of each block's initial state
            # handed to the block before, gradients summed; one update.
            top = ladder[-1]
            used.add(top)
            m = -(-n // top)
            sizes = [top] * (m - 1) + [n - top * (m - 1)]
            hs = [h]
            for j in range(m - 1):
                o = run(hs[-1], zeros_g, zeros_h, s + j * top, top, top, seg_key,
                        _ADVANCE)  # fmt: skip
                hs.append(o[2])
                advanced += top
            g_acc, dh, seg_losses, totals = zeros_g, zeros_h, [], []
            for j in reversed(range(m)):
                mode = _UPDATE if j == 0 else _ACCUMULATE
                out = run(hs[j], g_acc, dh, s + j * top, sizes[j], top, seg_key,
                          mode)  # fmt: skip
                padded += top
                g_acc, dh = out[5], out[6]
                seg_losses.insert(0, (out[4], sizes[j]))
                totals.insert(0, out[7])
                if j == m - 1:
                    h_end = out[2]
        norm, finite = out[8], (out[9], out[10])
        total = functools.reduce(jnp.add, totals)
        params, opt_state, h, est_state = out[0], out[1], out[2], out[3]
        records.append((base + s, n, total, norm, seg_losses))
        if unchecked is not None and check(*unchecked):  # the one before
            params, opt_state, h, est_state = before
            records.pop()
            stopped, unchecked = True, None
            break
        unchecked = None
        if lag and b is not None:
            unchecked = (index, *finite)
        else:
            ok = bool(finite[1])
            stopped = check(index, *finite)
            if b is None and ok:
                h = h_end  # the split segment's end state (block 0 ends early)
        if bar is not None:
            bar.update(n)
            if bar.n == n or i % 16 == 0 or i == n_train - 1:
                rate = (i + 1) / max(time.perf_counter() - t_start, 1e-9)
                bar.set_postfix(
                    loss=f"{float(total) / n:.4g}", seg_s=f"{rate:.3g}", refresh=False
                )
        if callbacks and not stopped:
            t0 = time.perf_counter()
            now = TrainState(
                params, opt_state, h, est_state, state.key,
                base + s + n, index + 1, 1, None,
            )  # fmt: skip
            event = Event(
                now, index, base + s, n, total / n, norm,
                t0 - t_start - t_callbacks - (_COMPILE_SECONDS[0] - compile0),
            )  # fmt: skip
            for cb in callbacks:
                if cb(event) is True:
                    stopped = True
            t_callbacks += time.perf_counter() - t0
        if stopped:
            break
    if unchecked is not None:
        stopped = check(*unchecked)
    jax.block_until_ready(params)
    seconds = time.perf_counter() - t_start - t_callbacks
    seconds -= _COMPILE_SECONDS[0] - compile0
    if bar is not None:
        bar.close()

    trained = len(records)
    if stopped:
        end = base + int(starts[trained - 1] + lengths[trained - 1])
        new_state = TrainState(
            params, opt_state, h, est_state, state.key, end,
            state.segment + trained, 1, None,
        )  # fmt: skip
    else:
        pending = None
        if trained < len(lengths):  # the last segment waits for a cut
            s = int(starts[-1])
            pending = (xs_np[s:], tree_map(lambda a: a[s:], ys_np), w_all[s:])
            if resets_np is not None:  # the pending steps keep their resets
                pending = (*pending, resets_np[s:])
        new_state = TrainState(
            params, opt_state, h, est_state, state.key, state.step + T,
            state.segment + trained, cut, pending, stream_cut,
        )  # fmt: skip
    if records:
        step_loss = np.concatenate(
            [np.asarray(a)[:k] for r in records for a, k in r[4]]
        )
        totals_np = np.asarray(jnp.stack([r[2] for r in records]))
        loss = (totals_np / np.asarray([r[1] for r in records])).astype(totals_np.dtype)
        norms = np.asarray(jnp.stack([r[3] for r in records]))
    else:
        step_loss, loss, norms = np.zeros(0), np.zeros(0), np.zeros(0)
    return History(
        params,
        opt_state,
        h,
        loss,
        norms,
        np.asarray([r[1] for r in records], int),
        np.asarray([r[0] for r in records], int),
        tuple(sorted(used)),
        tuple(divergences),
        est_state,
        step_loss,
        new_state,
        program._cache_size() - cache0,
        padded,
        advanced,
        seconds,
        stopped,
    )
