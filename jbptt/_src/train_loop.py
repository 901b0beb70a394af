"""The host loop of online training: one call's :class:`~jbptt._src.train_plan.Plan`
run through a trainer's compiled segment step, and what it returns
(:class:`TrainState`, :class:`History`, the callbacks' :class:`Event`)."""

from __future__ import annotations

import collections
import functools
import threading
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jbptt._src import buckets as buckets_lib
from jbptt._src import checks, processes, sharding
from jbptt._src import train_plan as plan_lib
from jbptt._src.train_step import ACCUMULATE, ADVANCE, UPDATE, StepIn

tree_map = jax.tree_util.tree_map


# Backend compile seconds per thread (jax.monitoring calls its listeners in
# the compiling thread), to leave the loop's own compilations out of
# History.seconds; those started ahead in other threads are left out as the
# time spent waiting for them.
_COMPILE_SECONDS: collections.defaultdict = collections.defaultdict(float)


def _on_duration(event: str, duration: float, **kwargs) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILE_SECONDS[threading.get_ident()] += duration


jax.monitoring.register_event_duration_secs_listener(_on_duration)


def _compiled_here() -> float:
    return _COMPILE_SECONDS[threading.get_ident()]


class TrainState(NamedTuple):
    """Everything an online run carries from one call to the next.

    Attributes:
      params: current params.
      opt_state: the optimizer state.
      h: the cell state after the last trained step (``None`` before the
        first call: it starts from the cell's initial state).
      est_state: what the estimator carries (``()`` for truncation; ``None``
        before the first call: the rule's ``init``).
      key: the run's key: cuts and segment keys are folded from it by the
        global step and segment index, never split per call.
      step: global index of the next step of the stream (steps consumed,
        the pending ones included).
      segment: number of segments trained so far (global segment index).
      cut: the cut law's carry (steps since the last cut).
      pending: ``(xs, ys, w[, resets])`` of the unfinished last segment
        (``None`` when there is none): steps already cut, waiting for the
        next call's data to end their segment. Pass ``flush=True`` at the
        stream's end.
      stream_cut: with ``stream_cuts=``, every stream's own cut-law carry
        (``[n_streams]`` steps since its last own cut), else ``None``.
      h_reset: the reset target of the run: the state an episode start
        (``resets=``) restarts from in this and every later call (``None``:
        the cell's initial state). :meth:`Trainer.init` sets it to ``h0``;
        a call's ``reset_state=`` replaces it from that call on.

    A segment whose loss, gradients, state or new params are not finite
    (``on_nonfinite``) leaves the fields as follows:

    * ``"raise"``: nothing is returned (a :class:`jbptt.checks.DivergenceError`
      is raised); the state passed in is unchanged, as always.
    * ``"skip"``: the update is not applied (``params``, ``opt_state`` as
      before the segment) but the stream moves past the segment as if it had
      trained with a zero step: ``h`` and ``est_state`` are the segment's end
      under the unchanged params (where that end state is not finite, ``h``
      restarts from ``h_reset`` and ``est_state`` keeps its value from the
      segment's start); ``step``, ``segment``, ``cut``, ``stream_cut`` and
      ``pending`` as without the divergence; ``key``, ``h_reset`` unchanged.
    * ``"stop"``: the state returned is exactly the state before the
      diverged segment, every field as a call that ended right before it
      would leave it: ``params``, ``opt_state``, ``h``, ``est_state`` after
      the segment before; ``step`` the diverged segment's first global step,
      ``segment`` its index, ``cut`` and ``stream_cut`` the cut laws' carries
      as of that step, ``pending`` ``None``; ``key``, ``h_reset`` unchanged.
      When the diverged segment is the call's first, that is the state the
      call was given (its ``pending`` included). A run continued from it
      with the data from ``step`` on retries the segment.
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
    h_reset: Any = None


class Event(NamedTuple):
    """What a callback sees after each segment's update.

    Attributes:
      state: the :class:`TrainState` after the update, as a call ending
        after this segment would return it (its cut-law carries as of the
        segment's end, ``pending`` ``None``): a run continued from it takes
        the stream's steps from ``state.step`` on.
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


class History(NamedTuple):
    """What one call trained (:meth:`jbptt.train.Trainer.run`,
    :func:`jbptt.train.train`). Everything is of this call only.

    Attributes:
      params: params after the last update.
      opt_state: the optimizer state after the last update.
      h: the state after the last trained step; with ``flush=False`` the
        steps of ``state.pending`` come after it.
      loss: ``[S]`` mean per-step loss of each segment (before its update).
      grad_norm: ``[S]`` global norm of each segment's gradient (before
        clipping).
      length: ``[S]`` number of steps in each segment.
      start: ``[S]`` global index of each segment's first step.
      buckets: the static lengths this call's segments ran in.
      divergences: the segments whose loss, gradients or state were not
        finite (:class:`jbptt.checks.Divergence`); their updates were not
        applied.
      est_state: what the estimator carries between segments.
      step_loss: ``[sum(length)]`` the per-step losses ``ℓ_t``, each under
        the params of its segment.
      state: the :class:`TrainState` to continue from.
      compiles: compilations of the training step during this call (0 when
        every bucket it used was compiled before).
      padded_steps: bucket steps of the gradient passes, padding included
        (``padded_steps / length.sum()`` is the padding overhead; the loops
        stop at each segment's real length, so the padding costs only the
        GEMMs outside them).
      advanced_steps: forward-only steps re-run to split long segments.
      seconds: wall-clock of the call less the time spent waiting for
        compilation and in callbacks (never negative).
      stopped: whether a callback or ``on_nonfinite="stop"`` ended the call
        early (the rest of its data was not used). After ``"stop"`` the
        diverged segment is still recorded (its loss), while ``params``,
        ``opt_state``, ``h``, ``est_state`` and ``state`` are those before it.
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


class Setting(NamedTuple):
    """What one call's loop is run with, besides its plan and state."""

    ladder: tuple[int, ...] | None
    split: bool
    min_bucket: int
    on_nonfinite: str
    mesh: Any
    h_reset: Any
    callbacks: tuple
    policy: buckets_lib.Buckets
    h_restart: Any = None
    carries: Any = None


class _Loop:
    """One call's loop: the carried states, the records, the clock."""

    def __init__(self, steps, plan, state, setting: Setting):
        self.steps, self.plan, self.state, self.cfg = steps, plan, state, setting
        params, opt_state, h, est_state = state[:4]
        if setting.mesh is not None:  # params replicated, streams split
            params, opt_state = sharding.replicate((params, opt_state), setting.mesh)
            h = sharding.split_batch(h, setting.mesh)
        self.carry = (params, opt_state, h, est_state)
        self.h_reset = setting.h_reset
        if setting.mesh is not None and self.h_reset is not None:
            self.h_reset = sharding.split_batch(self.h_reset, setting.mesh)
        self.zeros_g = tree_map(jnp.zeros_like, params)
        self.zeros_h = tree_map(jnp.zeros_like, h)
        self.records, self.divergences, self.used = [], [], set()
        self.padded = self.advanced = 0
        self.waited = self.t_callbacks = 0.0
        self.ready = set()  # buckets whose compilation was waited for
        self.compiled0 = self.cb_compiled = 0.0
        # what, besides the bucket, keys the compilations started ahead
        xs = plan.xs
        self.sig = (signature((self.carry, self.h_reset)), xs.shape[1:], str(xs.dtype))
        self.h_restart = setting.h_restart
        if setting.mesh is not None and self.h_restart is not None:
            self.h_restart = sharding.split_batch(self.h_restart, setting.mesh)
        self.stop_state = None
        if setting.mesh is not None:
            _check_same_data(plan)

    def args(self, h, g_acc, dh, s, n, b, key, mode):
        """The step's arguments for ``n`` steps from ``s`` in bucket ``b``."""
        plan, mesh = self.plan, self.cfg.mesh
        data = (
            plan_lib.pad(plan.xs, s, n, b),
            tree_map(lambda a: plan_lib.pad(a, s, n, b), plan.ys),
            plan_lib.pad(plan.w, s, n, b),
        )
        r = None if plan.resets is None else plan_lib.pad(plan.resets, s, n, b)
        if mesh is not None:  # [T, B, ...] split on B; shared w[T] replicated
            # checked once per call (_check_same_data), not per segment
            data, r = sharding.split_batch((data, r), mesh, axis=1, check_same=False)
        params, _, _, est_state = self.carry
        return StepIn(params, h, est_state, g_acc, dh, *data, n, key, mode, r,
                      self.h_reset)  # fmt: skip

    def call(self, h, g_acc, dh, s, n, b, key, mode, whole=False):
        """One gradient pass: a ``whole`` segment, or a block of a split one
        (after waiting for its compilation, when it was started ahead)."""
        args = self.args(h, g_acc, dh, s, n, b, key, mode)
        if not whole and self.steps.blocks is not None:
            return self.steps.blocks(args)
        if b not in self.ready:
            self.waited += self.steps.wait((b, self.sig))
            self.ready.add(b)
        return self.steps.pieces(args)

    def compile_seconds(self) -> float:
        """Seconds this thread compiled since the loop started, outside the
        callbacks."""
        return _compiled_here() - self.compiled0 - self.cb_compiled

    def update(self, piece):
        """The guarded update with ``piece``'s gradient from the carried
        states. Only what it reads goes in: the per-step losses' length is
        the bucket's (the update compiles once for every bucket), and fewer
        leaves dispatch faster."""
        piece = piece._replace(losses=None, dh_start=None, total=None, norm=None)
        return self.steps.update(*self.carry, piece, self.h_restart)

    def probe_args(self, b):
        """A segment's arguments in bucket ``b`` (to compile it)."""
        n = min(b, len(self.plan.xs))
        return self.args(self.carry[2], self.zeros_g, self.zeros_h, 0, n, b,
                         self.state.key, UPDATE)  # fmt: skip

    def auto_top(self) -> None:
        """``Buckets(top="auto")``: cap the ladder where the steps' temporaries
        would pass the policy's limit (CPU only), the same choice in every
        chunked call of a run (memoised on the steps per signature)."""
        cfg, plan = self.cfg, self.plan
        step = [plan.xs[0], *jax.tree_util.tree_leaves(
            (tree_map(lambda a: a[0], plan.ys), self.carry[2]))]  # fmt: skip
        if cfg.policy.top != "auto" or not buckets_lib.may_page_fault(
            cfg.policy, cfg.ladder, cfg.split, step
        ):
            return
        key = (cfg.ladder, signature(self.probe_args(cfg.ladder[0])),
               cfg.policy.cpu_temp_bytes)  # fmt: skip
        if key not in self.steps.tops:

            def compiled(b):
                self.steps.wait((b, self.sig))
                return self.steps.compile(self.probe_args(b))

            limit = cfg.policy.cpu_temp_bytes
            self.steps.tops[key] = buckets_lib.auto_top(cfg.ladder, compiled, limit)
        top = self.steps.tops[key]
        self.cfg = cfg._replace(ladder=buckets_lib.capped(cfg.ladder, top, True, ""))

    def buckets(self) -> list:
        """Each trained segment's bucket (``None``: split)."""
        plan, cfg = self.plan, self.cfg
        n_max = int(plan.lengths.max())
        # Buckets.warmup: the stream's first steps train in two buckets only
        # (by where each segment starts, so chunked calls choose as one call)
        early = buckets_lib.warmup_ladder(cfg.ladder)
        starts = plan.base + plan.starts[: plan.n_train]
        ladders = [early if s < cfg.policy.warmup else cfg.ladder for s in starts]
        return [
            plan_lib.bucket_of(int(n), ladder, cfg.split, cfg.min_bucket, n_max)
            for n, ladder in zip(plan.lengths[: plan.n_train], ladders, strict=True)
        ]

    def compile_ahead(self, buckets) -> None:
        """Start compiling the buckets this plan needs, in order of first use
        (the same buckets the loop would compile, only sooner)."""
        top = None if self.cfg.ladder is None else self.cfg.ladder[-1]
        for b in dict.fromkeys(top if b is None else b for b in buckets):
            self.steps.ahead((b, self.sig), self.probe_args(b))

    def segment(self, i, b):
        """Train segment ``i`` in bucket ``b`` (``None``: split)."""
        s, n = int(self.plan.starts[i]), int(self.plan.lengths[i])
        key = self.state.key if self.cfg.split else None
        if key is None:
            key = jax.random.fold_in(self.state.key, self.state.segment + i)
        h = self.carry[2]
        if b is not None:
            self.used.add(b)
            self.padded += b
            out = self.call(h, self.zeros_g, self.zeros_h, s, n, b, key, UPDATE,
                            whole=True)  # fmt: skip
            return out, [(out.losses, n)], [out.total], None
        # Split: forward through blocks of the top bucket, then backward from
        # the last block, the cotangent of each block's initial state handed
        # to the block before, gradients summed; one update.
        top = self.cfg.ladder[-1]
        self.used.add(top)
        m = -(-n // top)
        sizes = [top] * (m - 1) + [n - top * (m - 1)]
        hs = [h]
        for j in range(m - 1):
            o = self.call(hs[-1], self.zeros_g, self.zeros_h, s + j * top, top, top,
                          key, ADVANCE)  # fmt: skip
            hs.append(o.h)
            self.advanced += top
        g_acc, dh, seg_losses, totals, h_end = self.zeros_g, self.zeros_h, [], [], None
        for j in reversed(range(m)):
            mode = UPDATE if j == 0 else ACCUMULATE
            out = self.call(hs[j], g_acc, dh, s + j * top, sizes[j], top, key, mode)
            self.padded += top
            g_acc, dh = out.grads, out.dh_start
            seg_losses.insert(0, (out.losses, sizes[j]))
            totals.insert(0, out.total)
            if j == m - 1:
                h_end = out.h
        # the update reads the first block's flags: those of the whole
        # segment's loss and end state in their place
        flags = checks.finite_flags(loss=functools.reduce(jnp.add, totals), state=h_end)
        out = out._replace(finite={**out.finite, **flags})
        return out, seg_losses, totals, h_end

    def carries_to(self, step: int) -> tuple:
        """The cut laws' carries ``(cut, stream_cut)`` as of global ``step``."""
        if self.cfg.carries is None:
            return self.state.cut, self.state.stream_cut
        return self.cfg.carries(step - self.state.step)

    def state_at(self, step: int, segment: int, carry) -> TrainState:
        """The :class:`TrainState` of a call ending at global ``step`` with
        ``carry`` (nothing pending)."""
        cut, stream_cut = self.carries_to(step)
        return self.state._replace(
            params=carry[0], opt_state=carry[1], h=carry[2], est_state=carry[3],
            step=step, segment=segment, cut=cut, pending=None, stream_cut=stream_cut,
        )  # fmt: skip

    def stop_before(self, i: int, carry) -> None:
        """``on_nonfinite="stop"`` at the call's segment ``i``: the state is
        the one before it (the call's own for ``i = 0``)."""
        self.carry = carry
        if i == 0:
            self.stop_state = self.state
            return
        step = self.plan.base + int(self.plan.starts[i])
        self.stop_state = self.state_at(step, self.state.segment + i, carry)

    def skipped_split(self, h_end) -> None:
        """A skipped split segment: the stream moves on to its end state, or
        restarts where that is not finite."""
        flags = checks.finite_flags(h=h_end)
        if not bool(checks.all_finite(flags)) and self.h_restart is not None:
            h_end = self.h_restart
        self.carry = (*self.carry[:2], h_end, self.carry[3])

    def check(self, index, finite, all_ok) -> bool:
        """Record a non-finite segment; whether training stops there."""
        if bool(all_ok):  # one transfer per segment, not one per flag
            return False
        div = checks.handle_nonfinite(index, finite, self.cfg.on_nonfinite)
        if div is not None:
            self.divergences.append(div)
        return div is not None and div.action == "stopped"

    def callbacks(self, index, s, n, total, norm, t_start) -> bool:
        """Call the callbacks with this segment's :class:`Event`; whether one
        asked to stop."""
        t0, c0 = time.perf_counter(), _compiled_here()
        base, stop = self.plan.base, False
        now = self.state_at(base + s + n, index + 1, self.carry)
        seconds = max(0.0, t0 - t_start - self.t_callbacks - self.waited
                      - self.compile_seconds())  # fmt: skip
        event = Event(now, index, base + s, n, total / n, norm, seconds)
        for cb in self.cfg.callbacks:
            if bool(cb(event)):  # NumPy and JAX scalars mean what bool() says
                stop = True
        self.t_callbacks += time.perf_counter() - t0
        self.cb_compiled += _compiled_here() - c0  # left out with the callbacks
        return stop


def _check_same_data(plan) -> None:
    """On a mesh spanning several processes, every process must train on the
    same stream: one digest comparison per call (each segment's arrays are
    then placed without ``jax.device_put``'s per-array check)."""
    bad = processes.differing((plan.xs, plan.ys, plan.w, plan.resets))
    if bad:
        raise ValueError(
            f"xs, ys: processes {bad} hold other data than process 0 for this "
            "call; on a mesh spanning processes every process passes the "
            "whole stream (each trains its own devices' streams from it)."
        )


def run_plan(steps, plan, state, setting: Setting) -> History:
    """Train the segments of ``plan`` from ``state`` with ``steps`` (a
    :class:`jbptt._src.train_step.Steps`); the :class:`History` of the call."""
    loop = _Loop(steps, plan, state, setting)
    loop.auto_top()
    buckets = loop.buckets()
    if setting.policy.ahead:
        loop.compile_ahead(buckets)
    cache0 = steps.compiled()
    loop.compiled0 = _compiled_here()
    t_start, stopped = time.perf_counter(), False
    # Without callbacks, the finite flags of segment i are read after segment
    # i + 1 is dispatched, so the host prepares the next segment while the
    # device runs this one; a divergence found late discards the segment
    # dispatched after it.
    lag, unchecked = not setting.callbacks, None
    for i, b in enumerate(buckets):
        s, n = int(plan.starts[i]), int(plan.lengths[i])
        index = state.segment + i
        before = loop.carry
        piece, seg_losses, totals, h_end = loop.segment(i, b)
        out = loop.update(piece)
        total = functools.reduce(jnp.add, totals)
        loop.carry = tuple(out[:4])
        loop.records.append((plan.base + s, n, total, piece.norm, seg_losses))
        if unchecked is not None and loop.check(*unchecked[:3]):  # the one before
            loop.stop_before(unchecked[3], unchecked[4])
            loop.records.pop()
            stopped, unchecked = True, None
            break
        unchecked = None
        if lag and b is not None:
            unchecked = (index, out.finite, out.ok, i, before)
        else:
            stopped = loop.check(index, out.finite, out.ok)
            if stopped:
                loop.stop_before(i, before)
            elif b is None:  # the split segment's end state (block 0 ends early)
                if bool(out.ok):
                    loop.carry = (*loop.carry[:2], h_end, loop.carry[3])
                else:
                    loop.skipped_split(h_end)
        if setting.callbacks and not stopped:
            stopped = loop.callbacks(index, s, n, total, piece.norm, t_start)
        if stopped:
            break
    if unchecked is not None and loop.check(*unchecked[:3]):
        loop.stop_before(unchecked[3], unchecked[4])
        stopped = True
    jax.block_until_ready(loop.carry[0])
    seconds = time.perf_counter() - t_start - loop.t_callbacks - loop.waited
    seconds -= loop.compile_seconds()
    return _history(loop, stopped, steps.compiled() - cache0, max(0.0, seconds))


def _history(loop: _Loop, stopped: bool, compiles: int, seconds: float) -> History:
    plan, state, records = loop.plan, loop.state, loop.records
    trained = len(records)
    if loop.stop_state is not None:  # on_nonfinite="stop"
        new = loop.stop_state
    elif stopped:  # by a callback, after the last record's segment
        end = plan.base + int(plan.starts[trained - 1] + plan.lengths[trained - 1])
        new = loop.state_at(end, state.segment + trained, loop.carry)
    else:
        new = state._replace(
            params=loop.carry[0], opt_state=loop.carry[1], h=loop.carry[2],
            est_state=loop.carry[3], step=plan.base + len(plan.xs),
            segment=state.segment + trained, cut=plan.cut,
            pending=plan_lib.pending(plan, trained), stream_cut=plan.stream_cut,
        )  # fmt: skip
    if records:
        step_loss = np.concatenate(
            [np.asarray(a)[:k] for r in records for a, k in r[4]]
        )
        # one host array per record: a jnp.stack of N operands compiles in
        # time growing with N (minutes at 20 000 updates)
        totals = np.stack([np.asarray(r[2]) for r in records])
        lengths = np.asarray([r[1] for r in records])
        loss = (totals / lengths).astype(totals.dtype)
        norms = np.stack([np.asarray(r[3]) for r in records])
    else:
        step_loss, loss, norms = np.zeros(0), np.zeros(0), np.zeros(0)
    params, opt_state, h, est_state = loop.carry
    return History(
        params, opt_state, h, loss, norms,
        np.asarray([r[1] for r in records], int),
        np.asarray([r[0] for r in records], int),
        tuple(sorted(loop.used)), tuple(loop.divergences), est_state, step_loss,
        new, compiles, loop.padded, loop.advanced, seconds, stopped,
    )  # fmt: skip


def signature(args) -> tuple:
    """The tree structure, shapes, dtypes and placements of a step's arguments
    (a batch split over devices compiles a step of its own)."""
    leaves, tree = jax.tree_util.tree_flatten(args)
    where = [getattr(a, "sharding", None) for a in leaves]
    kinds = [(np.shape(a), str(getattr(a, "dtype", type(a)))) for a in leaves]
    return (tree, *zip(kinds, where, strict=True))
