"""The host half of online training: where a call's segments start and end,
their link weights, which static length each runs in, and their padded data.

Pure NumPy on the host (the cut laws draw from ``jax.random`` keys folded by
the global step, so a stream cut in chunks is cut as if fed at once). The
traced half is :mod:`jbptt._src.train_step`; :mod:`jbptt._src.train` runs a
plan through it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from jbptt._src import buckets as buckets_lib
from jbptt._src import estimators, protocol

tree_map = jax.tree_util.tree_map

_STREAM_SALT = 0x5EED  # folded into the run's key for the streams' own cuts


class HostPlan(NamedTuple):
    """The host half of an online rule: where segments start and end.

    Attributes:
      plan: ``(key, T) -> (lengths, w)``: one call's segment lengths and link
        weights (rules without a cut law).
      cuts: ``(key, t0, T, d) -> (w[T], d)``: link weights drawn along the
        stream by global step (``None`` without a cut law).
      buckets: ``(min_bucket, max_buckets=...) -> lengths``: the static
        segment lengths of the law (``None``: powers of two).
      stream_cuts: ``(keys, t0, T, d[n]) -> (w[T, n], d[n])``: ``cuts`` for
        ``n`` streams at once (``None``: ``cuts`` per stream).
    """

    plan: Callable
    cuts: Callable | None
    buckets: Callable | None
    stream_cuts: Callable | None = None


class SegmentRule(NamedTuple):
    """The traced half of an online rule, with what the trainer needs to
    know said in flags.

    Attributes:
      init: ``(cell, params, h0, x0) -> est_state``.
      segment: one segment's ``(losses, grads, h_new, est_state)``.
      advance, block: the forward-only and the gradient pass of one block of
        a split segment (``None`` unless ``splits``).
      splits: whether long segments can be split into blocks.
      takes_resets: whether ``segment`` takes ``resets=``/``reset_state=``.
      takes_adjoint: whether ``segment`` (and ``block``) take ``adjoint=``, a
        reverse-pass strategy (the truncation estimators' rules do).
    """

    init: Callable
    segment: Callable
    advance: Callable | None
    block: Callable | None
    splits: bool
    takes_resets: bool
    takes_adjoint: bool = False


def read_rule(rule: protocol.OnlineRule) -> tuple[HostPlan, SegmentRule]:
    """``rule`` split into its :class:`HostPlan` and its :class:`SegmentRule`,
    its flags as the rule states them (``OnlineRule.splits``,
    ``takes_resets``, ``takes_adjoint``, ``stream_cuts``). A flag left
    ``None`` is inferred as before the flags existed, for compatibility
    only: ``block`` splits ``segment`` unless it carries a ``splits``
    attribute naming another; ``segment`` takes resets when its signature
    names ``resets`` or takes ``**kwargs`` (or has none to read), and a
    strategy when it names ``adjoint``; ``cuts.streams`` draws many
    streams."""
    said = _said(rule)
    if callable(said["splits"]) and said["splits"] is not rule.segment:
        # segment replaced (rule._replace(segment=f)): the stated call flags
        # describe the old segment, so f's are read as if unstated
        said.update(takes_resets=None, takes_adjoint=None)
    splits = rule.block is not None and rule.advance is not None
    if splits:
        target = said["splits"]
        if target is None:  # compatibility: an attribute on the block
            target = getattr(rule.block, "splits", rule.segment)
        elif not callable(target):
            raise TypeError(
                "OnlineRule.splits must be the segment function that advance "
                f"and block split (e.g. splits=segment), got {target!r}."
            )
        splits = target is rule.segment
    takes, takes_adjoint = said["takes_resets"], said["takes_adjoint"]
    if takes is None or takes_adjoint is None:  # compatibility: the signature
        sig_resets, sig_adjoint = _signature_flags(rule.segment)
        takes = sig_resets if takes is None else takes
        takes_adjoint = sig_adjoint if takes_adjoint is None else takes_adjoint
    many = said["stream_cuts"]
    if many is None and rule.cuts is not None:  # compatibility: an attribute
        many = getattr(rule.cuts, "streams", None)
    host = HostPlan(rule.plan, rule.cuts, rule.buckets, many)
    traced = SegmentRule(
        rule.init, rule.segment, rule.advance if splits else None,
        rule.block if splits else None, splits, bool(takes), bool(takes_adjoint),
    )  # fmt: skip
    return host, traced


def _said(rule) -> dict:
    """The flags ``rule`` states (``None`` where it says nothing, as a rule
    of another type than :class:`~jbptt._src.protocol.OnlineRule` does)."""
    names = ("splits", "takes_resets", "takes_adjoint", "stream_cuts")
    return {n: getattr(rule, n, None) for n in names}


def _signature_flags(segment) -> tuple[bool, bool]:
    """Whether ``segment``'s signature takes resets and a strategy."""
    try:
        params = inspect.signature(segment).parameters
    except (TypeError, ValueError):  # no signature to read: let it run
        return True, False
    kinds = {p.kind for p in params.values()}
    takes = "resets" in params or inspect.Parameter.VAR_KEYWORD in kinds
    return takes, "adjoint" in params


class Plan(NamedTuple):
    """One call's segments, on the host.

    Attributes:
      xs, ys, w, resets: the call's steps with the pending ones of the state
        first (``w`` ``[n]`` shared or ``[n, *batch]`` with stream cuts;
        ``resets`` ``None`` when there are none).
      starts, lengths: ``[S]`` the segments, indices into ``xs``.
      n_train: how many of them this call trains (the last waits for a cut
        unless flushed).
      base: the global step of ``xs[0]``.
      cut, stream_cut: the cut laws' carries after this call.
      drawn: ``(shared [T], own [T, *batch] or None)``: the weights the cut
        laws drew for the call's own steps (``None`` without a cut law).
    """

    xs: np.ndarray
    ys: Any
    w: np.ndarray
    resets: np.ndarray | None
    starts: np.ndarray
    lengths: np.ndarray
    n_train: int
    base: int
    cut: Any
    stream_cut: Any
    drawn: Any = None


def plan_call(host, stream_rule, state, xs, ys, resets, flush, name) -> Plan:
    """The :class:`Plan` of one call on ``xs [T, *batch, I]`` from ``state``
    (a :class:`jbptt.train.TrainState`): ``host.cuts``'s draws (pending steps
    joined) or, for rules without a cut law, ``host.plan``."""
    T, batch_shape, dtype = xs.shape[0], tuple(xs.shape[1:-1]), xs.dtype
    P = 0 if state.pending is None else int(state.pending[0].shape[0])
    base = state.step - P
    if host.cuts is None:
        if P:
            raise ValueError(
                f"state has {P} pending steps but estimator {name} draws no cuts "
                "along a stream (OnlineRule.cuts); flush the previous call."
            )
        key = (
            state.key if state.step == 0 else jax.random.fold_in(state.key, state.step)
        )
        lengths, w = host.plan(key, T)
        lengths = np.asarray(lengths, int)
        if lengths.ndim != 1 or lengths.sum() != T or np.any(lengths < 1):
            raise ValueError(
                f"estimator {name}: its plan must give positive segment lengths "
                f"summing to T = {T}, got {lengths.tolist()}."
            )
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int)
        w = np.ones(T, dtype) if w is None else np.asarray(w, dtype)
        return Plan(
            xs, ys, w, resets, starts, lengths, len(lengths), base, state.cut, None
        )
    shared, w, cut, stream_cut, own = draw(
        host, stream_rule, state.key, state.step, T, state.cut, state.stream_cut,
        batch_shape, dtype,
    )  # fmt: skip
    cuts = P + np.flatnonzero((shared == 0) & (state.step + np.arange(T) > 0))
    ends, starts = np.concatenate([cuts, [P + T]]), np.concatenate([[0], cuts])
    keep = ends > starts  # a cut at the call's first step ends no pending
    starts, ends = starts[keep], ends[keep]
    if state.pending is not None:
        xs, ys, w, resets = _join_pending(state.pending, xs, ys, w, resets, batch_shape)
    lengths = ends - starts
    n_train = len(lengths) if flush else len(lengths) - 1
    return Plan(xs, ys, w, resets, starts, lengths, n_train, base, cut, stream_cut,
                (shared, own))  # fmt: skip


def _join_pending(pending, xs, ys, w, resets, batch_shape):
    pxs, pys, pw, *pr = pending
    if np.ndim(pw) != w.ndim:
        raise ValueError(
            "stream_cuts: the pending steps of state were cut "
            f"{'per stream' if np.ndim(pw) > 1 else 'shared only'}; "
            "pass the same stream_cuts= in every call of one run."
        )
    P, T = pxs.shape[0], xs.shape[0]
    xs, ys = np.concatenate([pxs, xs]), cat(pys, ys)
    w = np.concatenate([pw, w])
    pr = pr[0] if pr else None
    if pr is not None or resets is not None:  # no resets: all false
        pr = np.zeros((P, *batch_shape), bool) if pr is None else np.asarray(pr, bool)
        new = np.zeros((T, *batch_shape), bool) if resets is None else resets
        resets = np.concatenate([pr, new])
    return xs, ys, w, resets


def pending(plan: Plan, trained: int):
    """``(xs, ys, w[, resets])`` of the steps after the last trained
    segment (they wait for the next call), ``None`` when all were trained."""
    if trained >= len(plan.lengths):
        return None
    s = int(plan.starts[-1])
    out = (plan.xs[s:], tree_map(lambda a: a[s:], plan.ys), plan.w[s:])
    return out if plan.resets is None else (*out, plan.resets[s:])


def bucket_of(n: int, ladder, split: bool, min_bucket: int, n_max: int):
    """The static length a segment of ``n`` steps runs in; ``None``: split
    it into blocks of ``ladder[-1]``."""
    if ladder is not None:
        fits = [b for b in ladder if b >= n]
        if fits:
            return fits[0]
        if split:
            return None
    return buckets_lib.bucket_length(n, min_bucket, n_max)


def pad(a: np.ndarray, s: int, n: int, b: int) -> np.ndarray:
    """``a[s : s + n]`` padded to ``b`` steps by repeating its last step:
    padded steps are real-valued data (no NaN in masked losses) and never
    reach the loss or the carry."""
    seg = a[s : s + n]
    if b == n:
        return seg
    return np.concatenate([seg, np.repeat(seg[-1:], b - n, axis=0)], axis=0)


def cat(a, b):
    return b if a is None else tree_map(lambda u, v: np.concatenate([u, v]), a, b)


def stream_rule(stream_cuts, batch_shape) -> HostPlan:
    """The host plan whose cut law cuts each stream on its own."""
    est = estimators.as_estimator(stream_cuts)
    rule = read_rule(est.online())[0]
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


def _stream_weights(rule, key, t0: int, T: int, carry, batch_shape):
    """Each stream's own link weights ``[T, *batch]`` for global steps
    ``t0 .. t0 + T − 1`` and the new per-stream carries. Stream j draws from
    ``fold_in(fold_in(key, salt), j)``: independent of the shared cuts and of
    the other streams, and chunk-invariant like them."""
    n = int(np.prod(batch_shape))
    carry = np.ones(n, int) if carry is None else np.asarray(carry, int)
    base = jax.random.fold_in(key, _STREAM_SALT)
    keys = [jax.random.fold_in(base, j) for j in range(n)]
    if rule.stream_cuts is not None:  # all streams at once
        w, new = rule.stream_cuts(keys, t0, T, carry)
        return np.asarray(w).reshape((T, *batch_shape)), np.asarray(new, int)
    cols, new = [], np.empty(n, int)
    for j in range(n):
        w, new[j] = rule.cuts(keys[j], t0, T, int(carry[j]))
        cols.append(np.asarray(w))
    return np.stack(cols, axis=1).reshape((T, *batch_shape)), new


def draw(rule, own_rule, key, t0: int, T: int, cut, stream_cut, batch_shape,
         dtype):  # fmt: skip
    """The link weights of global steps ``t0 .. t0 + T − 1``: the shared
    ones ``[T]`` (their zeros are the segment ends), the ones the segments
    use (the shared ones, times each stream's own ``[T, *batch]`` when
    ``own_rule`` is given), both laws' new carries and the streams' own
    weights (``None`` without ``own_rule``)."""
    shared, cut = rule.cuts(key, t0, T, cut)
    shared = np.asarray(shared, dtype)
    if own_rule is None:
        return shared, shared, cut, None, None
    own, stream_cut = _stream_weights(own_rule, key, t0, T, stream_cut, batch_shape)
    w = shared.reshape((T,) + (1,) * len(batch_shape)) * own.astype(dtype)
    return shared, w, cut, stream_cut, own


def with_adjoint(rule: SegmentRule, adjoint, name: str) -> SegmentRule:
    """``rule`` whose segments (and blocks) run their reverse pass by the
    checked strategy ``adjoint``; ``None`` leaves the rule as it is."""
    if adjoint is None:
        return rule
    if not rule.takes_adjoint:
        raise ValueError(
            f"adjoint: the online rule of estimator {name} runs no jbptt "
            "reverse scan (forward-mode, zeroth-order or your own rule); "
            "adjoint= applies to truncation estimators (full, tbptt, artbp); "
            "drop it."
        )
    block = rule.block
    return rule._replace(
        segment=functools.partial(rule.segment, adjoint=adjoint),
        block=None if block is None else functools.partial(block, adjoint=adjoint),
    )


def carries(plan: Plan, t0: int, cut, stream_cut):
    """``n -> (cut, stream_cut)``: the cut laws' carries (steps since the
    last cut, shared and per stream) as of global step ``t0 + n``, read from
    the weights ``plan`` drew for the call's steps from ``t0`` on (no
    redraw), for the state of a call that ends inside its data."""
    if plan.drawn is None:  # no cut law: nothing carried changes
        return lambda n: (cut, stream_cut)
    shared, own = plan.drawn
    T = len(shared)
    shared_last = _last_cuts((np.asarray(shared) == 0).reshape(T, 1))
    own_last = None if own is None else _last_cuts(np.asarray(own).reshape(T, -1) == 0)

    def since(last, n, d0):
        if n <= 0:
            return np.asarray(d0)
        # the stream start counts as a cut at step 0 (its link is never cut)
        none = n if t0 == 0 else np.asarray(d0) + n
        return np.where(last[n - 1] >= 0, n - last[n - 1], none)

    def at(n):
        if n <= 0:
            return cut, stream_cut
        new_cut = int(np.ravel(since(shared_last, n, cut))[0])
        if own_last is None:
            return new_cut, stream_cut
        d0 = np.ones(own_last.shape[1], int) if stream_cut is None else stream_cut
        return new_cut, np.asarray(since(own_last, n, d0), int)

    return at


def _last_cuts(zero: np.ndarray) -> np.ndarray:
    """``[T, k]``: the index of the last cut at or before each step (``-1``:
    none yet) of each of ``k`` columns."""
    idx = np.arange(zero.shape[0])[:, None]
    return np.maximum.accumulate(np.where(zero, idx, -1), axis=0)
