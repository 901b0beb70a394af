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

Random segment lengths do not recompile the step: a segment of length n runs
in a bucket of static length ``min(max(min_bucket, 2^⌈log2 n⌉), n_max)``,
its extra steps masked out of the loss and out of the carried state, so the
step compiles at most once per bucket.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jbptt._src import checks, protocol
from jbptt._src.cell import Cell
from jbptt._src.estimators import _truncation_segment

tree_map = jax.tree_util.tree_map


class History(NamedTuple):
    """What :func:`train` returns.

    Attributes:
      params: params after the last update.
      opt_state: the optimizer state after the last update.
      h: the state after the last step (carry it into a following call).
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
    if clip is not None and (
        isinstance(clip, bool) or not isinstance(clip, int | float) or not clip > 0
    ):
        raise ValueError(f"clip must be a positive number or None, got {clip!r}.")


def _transform(optimizer, clip, clip_mode) -> optax.GradientTransformation:
    """``optimizer``, after clipping when ``clip`` is given (``optax.chain``)."""
    if clip is None:
        return optimizer
    return optax.chain(_CLIPS[clip_mode](clip), optimizer)


@functools.partial(
    jax.jit,
    static_argnames=(
        "cell",
        "loss_fn",
        "optimizer",
        "clip",
        "clip_mode",
        "segment",
        "bucket",
        "guard",
    ),
)
def _update(
    params,
    opt_state,
    h,
    est_state,
    xs,
    ys,
    w,
    start,
    n,
    key,
    *,
    cell,
    loss_fn,
    optimizer,
    clip,
    clip_mode,
    segment,
    bucket,
    guard,
):
    """One segment ``[start, start + n)`` run in a static ``bucket``, then one
    optimizer update. Module-level ``jit`` keyed on the static pieces (cell,
    loss, optimizer, the estimator's segment function, bucket): every call
    of :func:`train` with the same pieces reuses its compilations."""

    def cut(a):
        return jax.lax.dynamic_slice_in_dim(a, start, bucket, axis=0)

    mask = (jnp.arange(bucket) < n).astype(xs.dtype)  # padded steps: no loss
    xs_s, ys_s, w_s = cut(xs), tree_map(cut, ys), cut(w)
    losses, g, h_new, est_new = segment(
        cell, loss_fn, params, h, est_state, xs_s, ys_s, w_s, mask, key
    )
    tx = _transform(optimizer, clip, clip_mode)
    updates, new_opt_state = tx.update(g, opt_state, params)
    new = (optax.apply_updates(params, updates), new_opt_state, h_new, est_new)
    total, norm = jnp.sum(losses), optax.tree.norm(g)
    if not guard:
        return *new, losses, total / n, norm
    # Value-level guard (no Python `if` on tracers): a non-finite segment
    # leaves everything as it was; the caller reports it from the flags.
    finite = checks.finite_flags(loss=total, grads=g, state=h_new)
    kept = checks.select_if(
        checks.all_finite(finite), new, (params, opt_state, h, est_state)
    )
    return *kept, losses, total / n, norm, finite


def make_step(
    cell: Cell,
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    *,
    guard: bool = False,
):
    """The jitted online update on one segment of a link-weight estimator.

    Returns ``step(params, opt_state, h, xs, ys, w, start, n, bucket) ->
    (params, opt_state, h, mean_loss, grad_norm)``: the segment is
    ``xs[start : start + bucket]`` (``xs``, ``ys``, ``w`` padded by the
    caller), of which the first ``n`` steps are real. ``bucket`` is static;
    ``start`` and ``n`` are traced, so any segment of a bucket reuses one
    compilation. With ``guard=True`` it also returns ``finite``, the
    :func:`jbptt.checks.finite_flags` of the loss, the gradients and the new
    state, and if any is not finite the update is not applied (params,
    optimizer state and state stay as they were). :func:`train` drives the
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
        guard=guard,
    )

    def step(params, opt_state, h, xs, ys, w, start, n, bucket):
        out = _update(
            params, opt_state, h, (), xs, ys, w, start, n, None, bucket=bucket, **static
        )
        params, opt_state, h, _, _, mean, norm = out[:7]
        return (params, opt_state, h, mean, norm, *out[7:])

    return step


def _check_data(cell, loss_fn, xs, ys, min_bucket) -> int:
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a jbptt Cell, got {type(cell).__name__}.")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}.")
    is_int = isinstance(min_bucket, int) and not isinstance(min_bucket, bool)
    if not is_int or min_bucket <= 0:
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
    min_bucket: int = 8,
    on_nonfinite: str = "raise",
) -> History:
    """Train online along ``xs``, one optax update per segment.

    See the module docstring for the exact estimator. ``xs``/``ys`` are one
    long sequence ``[T, I]`` or a batch ``[T, B, I]`` (time-major); all batch
    members share the segments.

    Args:
      cell: a :class:`jbptt.cells.Cell` (built-in, Flax via
        ``cells.from_flax``, or a :func:`jbptt.readout` model's ``cell``).
      loss_fn: per-step loss ``(params, out_t, y_t) -> scalar``.
      params: initial params.
      xs: inputs ``[T, ..., I]``.
      ys: targets, time-major, length T.
      optimizer: any ``optax.GradientTransformation``.
      estimator: any estimator of the protocol with an online rule: a
        single-window :class:`jbptt.estimators.Estimator` (``full()``,
        ``tbptt(k)``, ``tbptt(k, random_offset=True)``, ``artbp(c)``; its
        cuts delimit segments), link weights ``w[T]``, a forward-mode
        estimator (``jbptt.forward_mode.rtrl()``, ``uoro()``, ``snap1()``:
        one update per step) or your own.
      key: PRNG key for random estimators.
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
      min_bucket: smallest static segment length compiled.
      on_nonfinite: what to do when a segment's loss, gradients or state are
        NaN or inf (its update is never applied): ``"raise"`` a
        :class:`jbptt.checks.DivergenceError` naming the segment and the
        quantities, ``"stop"`` and return the history so far, or ``"skip"``
        the segment and go on. Either way it is listed in
        ``History.divergences``. The data are checked up front with
        :func:`jbptt.check_finite`.

    Returns:
      A :class:`History`.

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
    """
    T = _check_data(cell, loss_fn, xs, ys, min_bucket)
    checks.check_policy(on_nonfinite)
    checks.check_finite(xs=xs, ys=ys, h0=h0)
    _check_optimizer(optimizer, clip, clip_mode)
    estimator = protocol.as_estimator(estimator)
    rule = estimator.online()
    if key is None:
        if not estimator.deterministic:
            raise ValueError(f"estimator {estimator.name} is random: pass key=.")
        key = jax.random.key(0)
    lengths, w = rule.plan(key, T)
    lengths = np.asarray(lengths, int)
    if lengths.ndim != 1 or lengths.sum() != T or np.any(lengths < 1):
        raise ValueError(
            f"estimator {estimator.name}: its plan must give positive segment "
            f"lengths summing to T = {T}, got {lengths.tolist()}."
        )
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int)
    n_max = int(lengths.max())
    sizes = [bucket_length(n, min_bucket, n_max) for n in lengths]
    pad = max(sizes)

    # Pad time by repeating the last step: padded steps are real-valued data
    # (no NaN in masked losses) and never reach the loss or the carry.
    def pad_time(a):
        a = jnp.asarray(a)
        return jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)], axis=0)

    w = jnp.ones((T,), xs.dtype) if w is None else jnp.asarray(w, xs.dtype)
    xs_p, ys_p, w_p = pad_time(xs), tree_map(pad_time, ys), pad_time(w)
    h = cell.initial_state(params, tuple(xs.shape[1:-1])) if h0 is None else h0
    if est_state is None:
        est_state = rule.init(cell, params, h, xs[0])
    if opt_state is None:
        opt_state = _transform(optimizer, clip, clip_mode).init(params)
    static = dict(
        cell=cell,
        loss_fn=loss_fn,
        optimizer=optimizer,
        clip=clip,
        clip_mode=clip_mode,
        segment=rule.segment,
        guard=True,
    )

    losses, step_losses, norms, divergences = [], [], [], []
    for i, (s, n, b) in enumerate(
        zip(starts.tolist(), lengths.tolist(), sizes, strict=True)
    ):
        seg_key = jax.random.fold_in(key, i)
        params, opt_state, h, est_state, seg_losses, mean, norm, finite = _update(
            params, opt_state, h, est_state, xs_p, ys_p, w_p, s, n, seg_key,
            bucket=b, **static,
        )  # fmt: skip
        step_losses.append(seg_losses[:n])
        losses.append(mean)
        norms.append(norm)
        div = checks.handle_nonfinite(i, finite, on_nonfinite)
        if div is not None:
            divergences.append(div)
            if div.action == "stopped":
                lengths, starts = lengths[: i + 1], starts[: i + 1]
                break
    return History(
        params,
        opt_state,
        h,
        np.asarray(jnp.stack(losses)),
        np.asarray(jnp.stack(norms)),
        lengths,
        starts,
        tuple(sorted(set(sizes))),
        tuple(divergences),
        est_state,
        np.asarray(jnp.concatenate(step_losses)),
    )
