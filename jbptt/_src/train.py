"""Online (streaming) training with truncated or randomly truncated BPTT.

Walk along a long sequence (or a batch of sequences, time-major) in segments
delimited by the cuts of a link-weight vector ``w`` (a cut is ``w_t = 0``):

* TBPTT(k): segments of k steps (Williams & Peng 1990; Jaeger 2002);
* ARTBP (Tallec & Ollivier 2017): cuts drawn at random with probability c_t
  (constant or a schedule of the steps since the last cut), so segments have
  random lengths;
* any single-window estimator of :mod:`jbptt.estimators`, or raw ``w``.

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

from jbptt._src import checks
from jbptt._src.api import per_step_losses
from jbptt._src.cell import Cell
from jbptt._src.estimators import Estimator
from jbptt._src.forward_mode import OnlineEstimator
from jbptt._src.forward_mode import train as _train_forward_mode
from jbptt._src.scan import rnn_scan

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


def segments(w) -> tuple[np.ndarray, np.ndarray]:
    """Starts and lengths of the segments between the cuts of ``w``.

    A cut is ``w_t = 0`` for t ≥ 1 (``w_0``, the link into the initial
    state, never starts a new segment).

    Examples:
      >>> from jbptt import train, truncation
      >>> starts, lengths = train.segments(truncation.tbptt(7, 3))
      >>> starts.tolist(), lengths.tolist()
      ([0, 3, 6], [3, 3, 1])
    """
    w = np.asarray(w)
    if w.ndim != 1 or w.shape[0] == 0:
        raise ValueError(f"w must be link weights of shape (T,), got {w.shape}.")
    cuts = np.flatnonzero(w[1:] == 0) + 1
    starts = np.concatenate([[0], cuts]).astype(int)
    lengths = np.diff(np.concatenate([starts, [w.shape[0]]])).astype(int)
    return starts, lengths


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


def _with_states(cell: Cell) -> Cell:
    """The same cell whose output is ``(h_t, out_t)``, to read any state."""

    def step(params, h, x):
        h, out = cell.step(params, h, x)
        return h, (h, out)

    rules = cell.rules
    if rules is not None:
        base = rules

        def backward(params, h_prev, h, res, dh, dout):
            dh_state, dout = dout
            dh = tree_map(jnp.add, dh, dh_state)
            return base.backward(params, h_prev, h, res, dh, dout)

        rules = base._replace(
            backward=backward, output=lambda hs: (hs, base.output(hs))
        )
    return cell._replace(step=step, rules=rules)


def _link_weights(estimator, T: int, key) -> np.ndarray:
    if isinstance(estimator, Estimator):
        if key is None:
            if not estimator.deterministic:
                raise ValueError(f"estimator {estimator.name} is random: pass key=.")
            key = jax.random.key(0)
        w, m = estimator.sample(key, T)
        w, m = np.asarray(w), np.asarray(m)
        if w.shape[0] != 1 or not np.all(m == 1):
            raise ValueError(
                f"estimator {estimator.name} has {w.shape[0]} overlapping "
                "windows; online training needs one window of link weights "
                "with every loss counted once (full, tbptt, artbp)."
            )
        return w[0]
    if hasattr(estimator, "shape"):
        w = np.asarray(estimator)
        if w.shape != (T,):
            raise ValueError(
                f"w (link weights) must have shape (T,) = ({T},) matching xs, "
                f"got {w.shape}."
            )
        return w
    raise TypeError(
        "estimator must be a jbptt Estimator or link weights w[T], got "
        f"{type(estimator).__name__}."
    )


_CLIPS = {"global_norm": optax.clip_by_global_norm, "value": optax.clip}


def _optimizer(optimizer, clip, clip_mode):
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            "optimizer must be an optax.GradientTransformation (e.g. "
            f"optax.adam(1e-3)), got {type(optimizer).__name__}."
        )
    if clip_mode not in _CLIPS:
        raise ValueError(
            f"Unknown clip_mode {clip_mode!r}. It needs to be one of {sorted(_CLIPS)}."
        )
    if clip is None:
        return optimizer
    if isinstance(clip, bool) or not isinstance(clip, int | float) or clip <= 0:
        raise ValueError(f"clip must be a positive number or None, got {clip!r}.")
    return optax.chain(_CLIPS[clip_mode](clip), optimizer)


def make_step(
    cell: Cell,
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    *,
    guard: bool = False,
):
    """The jitted online update on one segment.

    Returns ``step(params, opt_state, h, xs, ys, w, start, n, bucket) ->
    (params, opt_state, h, mean_loss, grad_norm)``: the segment is
    ``xs[start : start + bucket]`` (``xs``, ``ys``, ``w`` padded by the
    caller), of which the first ``n`` steps are real. ``bucket`` is static;
    ``start`` and ``n`` are traced, so any segment of a bucket reuses one
    compilation. With ``guard=True`` it also returns ``finite``, the
    :func:`jbptt.checks.finite_flags` of the loss, the gradients and the new
    state, and if any is not finite the update is not applied (params,
    optimizer state and state stay as they were). :func:`train` drives it
    (with ``guard=True``); use it directly to interleave segments with other
    work.

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
    wcell = _with_states(cell)

    def step(params, opt_state, h, xs, ys, w, start, n, bucket):
        def cut(a):
            return jax.lax.dynamic_slice_in_dim(a, start, bucket, axis=0)

        xs_s, ys_s, w_s = cut(xs), tree_map(cut, ys), cut(w)
        real = jnp.arange(bucket) < n  # [bucket]: padded steps carry no loss

        def seg_loss(params):
            _, (hs, outs) = rnn_scan(wcell, params, h, xs_s, w_s)
            losses = per_step_losses(loss_fn, params, outs, ys_s)
            total = jnp.sum(jnp.where(real, losses, 0.0))
            h_last = tree_map(lambda a: a[n - 1], hs)  # state after step e
            return total, h_last

        (total, h_last), g = jax.value_and_grad(seg_loss, has_aux=True)(params)
        updates, new_opt_state = optimizer.update(g, opt_state, params)
        new = (
            optax.apply_updates(params, updates),
            new_opt_state,
            jax.lax.stop_gradient(h_last),
        )
        if not guard:
            return *new, total / n, optax.tree.norm(g)
        # Value-level guard (no Python `if` on tracers): a non-finite segment
        # leaves everything as it was; the caller reports it from the flags.
        finite = checks.finite_flags(loss=total, grads=g, state=h_last)
        params, opt_state, h_last = checks.select_if(
            checks.all_finite(finite), new, (params, opt_state, h)
        )
        return params, opt_state, h_last, total / n, optax.tree.norm(g), finite

    return jax.jit(step, static_argnames="bucket")


@functools.lru_cache(maxsize=32)
def _cached_step(cell, loss_fn, optimizer, clip, clip_mode):
    return make_step(cell, loss_fn, _optimizer(optimizer, clip, clip_mode), guard=True)


def _step_for(cell, loss_fn, optimizer, clip, clip_mode, tx):
    """Reuse the jitted step (and its compilations) across calls with the same
    cell, loss and optimizer, e.g. when resuming a run chunk by chunk."""
    try:
        return _cached_step(cell, loss_fn, optimizer, clip, clip_mode)
    except TypeError:  # unhashable pieces: compile afresh
        return make_step(cell, loss_fn, tx, guard=True)


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
    clip: float | None = None,
    clip_mode: str = "global_norm",
    min_bucket: int = 8,
    on_nonfinite: str = "raise",
) -> History:
    """Train online along ``xs``, one optax update per truncation segment.

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
      estimator: a single-window :class:`jbptt.estimators.Estimator`
        (``full()``, ``tbptt(k)``, ``tbptt(k, random_offset=True)``,
        ``artbp(c)``) or link weights ``w[T]``; its cuts delimit segments.
        Or a forward-mode estimator (``jbptt.forward_mode.rtrl()``,
        ``uoro()``, ``snap1()``): one update per step, run by
        :func:`jbptt.forward_mode.train` (segments of length 1; the
        influence is not carried across calls, use that function to resume
        with it).
      key: PRNG key for random estimators.
      h0: initial state (default: zeros from ``cell.initial_state``).
      opt_state: optimizer state to resume from (default: ``optimizer.init``).
      clip: if given, clip gradients before ``optimizer`` with
        ``optax.clip_by_global_norm(clip)`` (``clip_mode="global_norm"``) or
        ``optax.clip(clip)`` (``clip_mode="value"``).
      clip_mode: ``"global_norm"`` or ``"value"``.
      min_bucket: smallest static segment length compiled.
      on_nonfinite: what to do when a segment's loss, gradients or state are
        NaN or inf (its update is never applied): ``"raise"`` a
        :class:`jbptt.checks.DivergenceError` naming the segment and the
        quantities, ``"stop"`` and return the history so far, or ``"skip"``
        the segment and go on. Either way it is listed in
        ``History.divergences``. The data are checked up front with
        :func:`jbptt.check_finite`. (Forward-mode estimators get the data
        check only.)

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
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a jbptt Cell, got {type(cell).__name__}.")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}.")
    if not isinstance(min_bucket, int) or min_bucket <= 0:
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
    checks.check_policy(on_nonfinite)
    checks.check_finite(xs=xs, ys=ys, h0=h0)
    tx = _optimizer(optimizer, clip, clip_mode)
    if isinstance(estimator, OnlineEstimator):
        return _forward_mode_history(
            cell, loss_fn, params, xs, ys, tx, estimator, key, h0, opt_state
        )
    step = _step_for(cell, loss_fn, optimizer, clip, clip_mode, tx)
    w = _link_weights(estimator, T, key)
    starts, lengths = segments(w)
    n_max = int(lengths.max())
    sizes = [bucket_length(n, min_bucket, n_max) for n in lengths]
    pad = max(sizes)

    # Pad time by repeating the last step: padded steps are real-valued data
    # (no NaN in masked losses) and never reach the loss or the carry.
    def pad_time(a):
        a = jnp.asarray(a)
        return jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)], axis=0)

    xs_p, ys_p = pad_time(xs), tree_map(pad_time, ys)
    w_p = pad_time(jnp.asarray(w, xs.dtype))
    h = cell.initial_state(params, tuple(xs.shape[1:-1])) if h0 is None else h0
    opt_state = tx.init(params) if opt_state is None else opt_state

    losses, norms, divergences = [], [], []
    for i, (s, n, b) in enumerate(
        zip(starts.tolist(), lengths.tolist(), sizes, strict=True)
    ):
        params, opt_state, h, loss, norm, finite = step(
            params, opt_state, h, xs_p, ys_p, w_p, s, n, bucket=b
        )
        losses.append(loss)
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
    )


def _forward_mode_history(
    cell, loss_fn, params, xs, ys, tx, estimator, key, h0, opt_state
) -> History:
    """A forward-mode estimator's online run as a :class:`History` of
    one-step segments."""
    hist = _train_forward_mode(
        cell,
        loss_fn,
        params,
        xs,
        ys,
        tx,
        estimator,
        key=key,
        h0=h0,
        opt_state=opt_state,
    )
    T = xs.shape[0]
    return History(
        hist.params,
        hist.opt_state,
        hist.state.h,
        np.asarray(hist.loss),
        np.asarray(hist.grad_norm),
        np.ones(T, int),
        np.arange(T),
        (1,),
    )
