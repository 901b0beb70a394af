"""The traced half of online training: the jitted gradient pass of one
segment (:func:`piece_step`, a :class:`StepIn` NamedTuple in, a
:class:`Piece` out), the jitted guarded update (:func:`update_step`) and
:class:`Steps`, the compiled steps a trainer owns.

A pass runs one segment (or one block of a split segment) of static length
``xs.shape[0]`` (its bucket) with ``n`` real steps; ``n`` and the traced
``mode`` vary without recompiling, so a run compiles one pass per bucket and
one update (the optimizer is compiled once, not into every bucket).
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jbptt._src import checks

tree_map = jax.tree_util.tree_map

# Modes of the split-capable step (traced, so one compilation per bucket).
UPDATE, ADVANCE, ACCUMULATE = 0, 1, 2


class StepIn(NamedTuple):
    """What one segment's gradient pass takes (all traced).

    Attributes:
      params, h, est_state: the carried params, cell and estimator states.
      g_acc: the gradient accumulated by the later blocks of a split segment
        (zeros for a whole segment).
      dh_end: the cotangent arriving at the block's last real step from the
        later blocks (zeros for a whole segment).
      xs, ys, w: the segment's steps padded to its bucket (``w``: its link
        weights).
      n: how many of them are real.
      key: the segment's key.
      mode: ``UPDATE``, ``ADVANCE`` or ``ACCUMULATE``.
      resets, h_reset: episode starts ``[bucket, *batch]`` and what they
        restart from (``None`` without resets).
    """

    params: Any
    h: Any
    est_state: Any
    g_acc: Any
    dh_end: Any
    xs: jax.Array
    ys: Any
    w: jax.Array
    n: Any
    key: Any
    mode: Any
    resets: Any = None
    h_reset: Any = None


class Piece(NamedTuple):
    """What one segment's (or block's) gradient pass returns.

    Attributes:
      h, est_state: the states after its last real step.
      losses: ``[bucket]`` per-step losses (zero on padding).
      grads: its gradient (a block's: accumulated into ``g_acc``).
      dh_start: the cotangent leaving through the block's first link.
      total, norm: the summed loss and the gradient's global norm.
      finite: :func:`jbptt.checks.finite_flags` of loss, grads and state.
    """

    h: Any
    est_state: Any
    losses: jax.Array
    grads: Any
    dh_start: Any
    total: jax.Array
    norm: jax.Array
    finite: dict


class Update(NamedTuple):
    """What one guarded update returns.

    Attributes:
      params, opt_state, h, est_state: the carried states after it (the old
        ones where anything was not finite).
      finite: the piece's flags and the new params' (a NaN learning rate
        makes finite gradients give non-finite params).
      ok: all of ``finite`` (the one scalar the host reads per segment).
    """

    params: Any
    opt_state: Any
    h: Any
    est_state: Any
    finite: dict
    ok: jax.Array


def piece_step(inp: StepIn, *, cell, loss_fn, segment, advance, block) -> Piece:
    """The gradient pass of one segment (or block) with ``n`` real steps.

    Without ``block``: the rule's ``segment`` (every whole segment). With
    it (the blocks of a split segment), the traced ``mode`` picks the
    forward-only ``advance`` or a block whose gradient is accumulated into
    ``g_acc``: the pieces of a split segment share one compilation.
    ``resets [bucket, *batch]`` (or ``None``) are handed on with
    ``reset_state=h_reset``; padded steps never reset. The optimizer is not
    in it (:func:`update_step`), so the pass compiles once per bucket
    whatever the optimizer.
    """
    params, h, est_state, g_acc, dh_end, xs, ys, w, n, key, mode = inp[:11]
    resets, h_reset = inp.resets, inp.h_reset
    bucket = xs.shape[0]
    mask = (jnp.arange(bucket) < n).astype(xs.dtype)  # padded steps: no loss
    kw = {}
    if resets is not None:
        real = (jnp.arange(bucket) < n).reshape((bucket,) + (1,) * (resets.ndim - 1))
        kw = {"resets": resets & real, "reset_state": h_reset}
    if block is None:
        losses, g, h_new, est_new = segment(
            cell, loss_fn, params, h, est_state, xs, ys, w, mask, key, **kw
        )
        dh_start = dh_end
    else:
        losses, g, h_new, dh_start = _split_piece(
            cell, loss_fn, params, h, g_acc, dh_end, xs, ys, w, mask, mode,
            advance, block, kw,
        )  # fmt: skip
        est_new = est_state
    total, norm = jnp.sum(losses), optax.tree.norm(g)
    finite = checks.finite_flags(loss=total, grads=g, state=h_new)
    return Piece(h_new, est_new, losses, g, dh_start, total, norm, finite)


def update_step(params, opt_state, h, est_state, piece: Piece, h_restart=None, *,
                tx, split) -> Update:  # fmt: skip
    """One guarded ``tx`` update with a piece's gradient, from the states
    ``params, opt_state, h, est_state`` the piece started from. ``piece``
    comes with only the fields read here (``losses``, ``dh_start``,
    ``total`` and ``norm`` are ``None``; the losses' length is the bucket's),
    so one compilation serves every bucket.

    Value-level guard (no Python `if` on tracers): where the loss, gradients,
    new state or new params are not finite, ``params`` and ``opt_state``
    stay as they were and the caller reports it from the flags. The stream
    still moves past the segment: ``h`` and ``est_state`` are the piece's
    end states (the segment run under the unchanged params) where those are
    finite, else ``h_restart`` and the old ``est_state``; with ``h_restart``
    ``None`` they stay as they were. ``split`` (static): the rule's pieces
    are blocks, whose update runs under ``lax.cond`` (the caller sets a split
    segment's end state).
    """
    g, finite = piece.grads, piece.finite
    ok = checks.all_finite(finite)

    def update(_):
        updates, new_opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), new_opt_state

    if not split:
        new = (*update(None), piece.h, piece.est_state)
        finite = {**finite, **checks.finite_flags(params=new[0])}
        ok = checks.all_finite(finite)
        kept = checks.select_if(ok, new, (params, opt_state, h, est_state))
    else:
        p_o = jax.lax.cond(ok, update, lambda _: (params, opt_state), None)
        finite = {**finite, **checks.finite_flags(params=p_o[0])}
        ok = ok & checks.all_finite(finite)
        p_o = checks.select_if(ok, p_o, (params, opt_state))
        kept = (*p_o, checks.select_if(ok, piece.h, h), piece.est_state)
    if h_restart is not None:  # the stream moves on, or restarts
        ends = [a for a in jax.tree_util.tree_leaves((piece.h, piece.est_state))
                if jnp.issubdtype(a.dtype, jnp.inexact)]  # fmt: skip
        moved = checks.select_if(
            checks.all_finite(checks.finite_flags(ends=ends)),
            (piece.h, piece.est_state), (h_restart, est_state),
        )  # fmt: skip
        kept = (*kept[:2], *moved)
    return Update(*kept, finite, checks.all_finite(finite))


def _split_piece(cell, loss_fn, params, h, g_acc, dh_end, xs, ys, w, mask, mode,
                 advance, block, kw):  # fmt: skip
    """A block's losses, accumulated gradient, end state and ``dh_start``, or
    (mode ``ADVANCE``) the forward-only end state."""

    def run_block(_):
        losses, g, h_new, dh = block(cell, loss_fn, params, h, xs, ys, w, mask,
                                     dh_end, **kw)  # fmt: skip
        losses, h_new = _as_carried(losses, h_new, h)
        return losses, tree_map(jnp.add, g, g_acc), h_new, dh

    def run_advance(_):
        h_new = advance(cell, params, h, xs, mask, **kw)
        losses, h_new = _as_carried(jnp.zeros(xs.shape[:1]), h_new, h)
        return losses, g_acc, h_new, tree_map(jnp.zeros_like, dh_end)

    return jax.lax.cond(mode == ADVANCE, run_advance, run_block, None)


def _as_block(segment):
    """A splitting rule's ``segment`` with its outputs cast as a block's are
    (:func:`_split_piece`): the state in the carried dtypes, the losses in
    the default float."""

    def whole(cell, loss_fn, params, h, *args, **kw):
        losses, g, h_new, est = segment(cell, loss_fn, params, h, *args, **kw)
        losses, h_new = _as_carried(losses, h_new, h)
        return losses, g, h_new, est

    return whole


def _as_carried(losses, h_new, h):
    """A pass's losses in the default float and its end state in the
    carried state's dtypes (a block's and a splitting rule's whole segment
    alike)."""
    h_new = tree_map(lambda a, b: a.astype(b.dtype), h_new, h)
    return losses.astype(jnp.result_type(float)), h_new


class Steps:
    """The compiled steps of one trainer: the jitted :func:`piece_step` of
    whole segments (one executable per bucket and argument signature), of
    the blocks of split segments (the top bucket only, when the rule splits)
    and :func:`update_step` (one per argument signature, whatever the
    bucket), the ``top="auto"``
    choices made on them and the compilations started ahead
    (:meth:`ahead`). Dropping it releases its executables.

    Args:
      cell, loss_fn, tx: the model and the optax transformation.
      rule: the rule's :class:`jbptt._src.train_plan.SegmentRule`.
    """

    def __init__(self, cell, loss_fn, tx, rule):
        def jitted(segment, advance=None, block=None):
            kw = dict(cell=cell, loss_fn=loss_fn, advance=advance, block=block)
            return jax.jit(functools.partial(piece_step, segment=segment, **kw))

        # Whole segments run the rule's segment (``block`` splits it, so the
        # gradient is the same); only the top bucket's split segments need
        # the heavier program with the traced mode, compiled when one comes.
        if rule.block is None:
            self.pieces, self.blocks = jitted(rule.segment), None
        else:
            self.pieces = jitted(_as_block(rule.segment))
            self.blocks = jitted(rule.segment, rule.advance, rule.block)
        self.update = jax.jit(
            functools.partial(update_step, tx=tx, split=rule.block is not None)
        )
        self.tops: dict = {}  # top="auto": argument signature -> top bucket
        self._pending: dict = {}  # (bucket, signature) -> future
        self._pool = None

    def with_tx(self, tx, rule) -> Steps:
        """The same gradient passes (compiled ones kept) with another update."""
        new = Steps.__new__(Steps)
        new.__dict__.update(self.__dict__)
        new.update = jax.jit(
            functools.partial(update_step, tx=tx, split=rule.block is not None)
        )
        return new

    def compiled(self) -> int:
        """How many gradient passes are compiled (one per bucket and
        signature, and one more for the top bucket's split segments)."""
        return self.pieces._cache_size() + (
            0 if self.blocks is None else self.blocks._cache_size()
        )

    def compile(self, inp: StepIn):
        """The gradient pass's executable for ``inp`` (compiled now, or
        reused)."""
        return self.pieces.lower(inp).compile()

    def ahead(self, key, args) -> None:
        """Start compiling the step for ``args`` in a background thread (XLA
        compiles without the GIL), unless started before."""
        if key in self._pending:
            return
        if self._pool is None:  # no more compile threads than spare cores
            workers = max(1, min(4, (os.cpu_count() or 2) - 1))
            self._pool = concurrent.futures.ThreadPoolExecutor(workers)
        self._pending[key] = self._pool.submit(self.compile, args)

    def wait(self, key) -> float:
        """Seconds spent waiting for the compilation of ``key`` started by
        :meth:`ahead` (0 when none was)."""
        fut = self._pending.get(key)
        if fut is None or fut.done() and fut.exception() is None:
            return 0.0
        t0 = time.perf_counter()
        concurrent.futures.wait([fut])
        return time.perf_counter() - t0
