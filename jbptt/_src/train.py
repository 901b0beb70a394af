"""Online (streaming) training with truncated or randomly truncated BPTT.

A :class:`Trainer` walks along a long sequence (or a batch of sequences,
time-major) in segments delimited by the cuts of its estimator (a cut is a
link weight ``w_t = 0``): TBPTT(k) (Williams & Peng 1990; Jaeger 2002),
ARTBP (Tallec & Ollivier 2017, cuts drawn at random with probability c_t),
any single-window estimator of :mod:`jbptt.estimators` or raw ``w``,
forward-mode estimators (RTRL, UORO, SnAp-1: one update per step) and any
estimator of the protocol: the trainer asks each for its
:class:`~jbptt.estimators.OnlineRule` and never for its kind.

At the end of each segment ``[s, e]`` one optax update is applied with

    g_seg = ∇_θ^{(w)} Σ_{t=s}^{e} ℓ_t(θ, h_t, y_t),  h_{s−1} = stop_gradient(·),

the reverse scan inside the segment using the link weights ``w_t`` for
``s < t ≤ e`` (1 for TBPTT; ARTBP's compensation ``1/(1 − c_t)``), so
within a segment the backward signal is

    δ̃_t = ∂ℓ_t/∂h_t + J_{t+1}ᵀ δ̃_{t+1} / (1 − c_{t+1}),   s ≤ t < e,

exactly Tallec & Ollivier's online ARTBP. With a learning rate of zero the
sum of the segment gradients equals :func:`jbptt.value_and_grad` with the
same ``w`` over the whole sequence (tested); with updates in between each
segment sees the params of the previous update.

The pieces: a host plan (:mod:`jbptt._src.train_plan`: cuts, link weights,
buckets, padding, pure NumPy), one jitted segment step
(:mod:`jbptt._src.train_step`) that the trainer owns, compiled once per
static segment length (:class:`Buckets`, the compile-tuning policy), and the
short host loop here. Random segment lengths do not recompile: a segment
runs in the smallest bucket that holds it, its extra steps masked out, and a
longer one is split into blocks with the same gradient.

Streams in chunks: everything a run carries is one :class:`TrainState`. Cuts
are drawn from the key and the global step only, and with ``flush=False``
the unfinished last segment waits for the next call's data, so a stream fed
in any number of :meth:`Trainer.run` calls gives bitwise the same run as one
call (same devices and XLA flags; tested).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jbptt._src import adjoint as adjoint_lib
from jbptt._src import buckets as buckets_lib
from jbptt._src import checks, dtypes, estimators, sequences, sharding, validation
from jbptt._src import train_plan as plan_lib
from jbptt._src import train_step as step_lib
from jbptt._src.buckets import Buckets
from jbptt._src.cell import Cell
from jbptt._src.train_loop import Event, Setting, TrainState, run_plan
from jbptt._src.train_plan import read_rule

tree_map = jax.tree_util.tree_map


class Trainer:
    """Online training of one model with one optimizer and one estimator,
    owning its compiled segment steps.

    Build it once per run and feed the stream in any number of
    :meth:`run` calls: every call reuses the steps compiled before (one per
    static segment length), and dropping the trainer releases them.

    Args:
      cell: a :class:`jbptt.cells.Cell` (built-in, Flax via
        ``cells.from_flax``, or a :func:`jbptt.readout` model's ``cell``).
      loss_fn: per-step loss ``(params, out_t, y_t) -> scalar``, reducing
        over the batch itself.
      optimizer: any ``optax.GradientTransformation``; clip with
        ``optax.chain(optax.clip_by_global_norm(c), optimizer)``.
      estimator: any estimator of the protocol with an online rule: a
        single-window :class:`jbptt.estimators.Estimator` (``full()``,
        ``tbptt(k)``, ``tbptt(k, random_offset=True)``, ``artbp(c)``; its
        cuts delimit segments), link weights ``w[T]``, a forward-mode
        estimator (``rtrl()``, ``uoro()``, ``snap1()``: one update per
        step) or your own.
      stream_cuts: ``None`` (shared cuts) or an estimator with a cut law
        (e.g. ``estimators.artbp_matched(k)``) whose cuts are drawn for each
        stream of a batch ``[T, B, I]`` independently, on top of the shared
        cuts of ``estimator`` (which still end the segments). A link of
        stream b then has weight ``w_t · w_t^(b)``: both factors are
        independent with mean 1, so ARTBP laws stay unbiased
        (:func:`link_weights` gives the weights for offline study).
      buckets: the compile-tuning policy, a :class:`Buckets` (default
        ``Buckets()``); it changes compilation and speed, never the segments.
      on_nonfinite: what to do when a segment's loss, gradients, state or
        new params are NaN or inf (its update is never applied): ``"raise"``
        a :class:`jbptt.checks.DivergenceError`, ``"stop"`` and return the
        history so far with the state exactly as before that segment (a
        run continued from it retries the segment), or ``"skip"`` the
        update and train on (the stream moves past the segment); either
        way it is listed in ``History.divergences``. What each policy does
        to every field of the state: :class:`TrainState`.
      mesh: ``None`` (one device) or a device count, device list or 1-D
        mesh (:func:`jbptt.sharding.make_mesh`) to split the batch over
        (data parallel): params and optimizer state replicated, gradients
        summed across devices; ``B`` must divide evenly.
      adjoint: how each segment's reverse pass runs: ``None`` (default,
        ``jbptt.ReverseScan()``) or another strategy, e.g.
        ``jbptt.Budget(max_states=M)`` or ``jbptt.ReverseScan(checkpoint="sqrt")``
        to bound the memory of long segments; same gradients. Truncation
        estimators only (forward-mode rules run no reverse scan).

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import jbptt
      >>> from jbptt import estimators, train
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> xs = jax.random.normal(jax.random.key(1), (64, 1))
      >>> tr = train.Trainer(model.cell, model.loss_fn, optax.adam(1e-2),
      ...                    estimators.tbptt(8))
      >>> state = tr.init(model.init(jax.random.key(0), 1, 8), jax.random.key(2))
      >>> state, hist = tr.run(state, xs[:30], xs[:30], flush=False)
      >>> state, hist = tr.run(state, xs[30:], xs[30:])
      >>> hist.length.tolist(), hist.compiles  # the bucket was compiled before
      ([8, 8, 8, 8, 8], 0)
    """

    def __init__(self, cell: Cell, loss_fn: Callable, optimizer, estimator, *,
                 stream_cuts=None, buckets: Buckets | None = None,
                 on_nonfinite: str = "raise", mesh=None, adjoint=None):  # fmt: skip
        if not isinstance(cell, Cell):
            raise TypeError(f"cell must be a jbptt Cell, got {type(cell).__name__}.")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}.")
        check_optimizer(optimizer)
        self.cell, self.loss_fn, self.optimizer = cell, loss_fn, optimizer
        self.buckets = buckets_lib.check(buckets)
        self.on_nonfinite = checks.check_policy(on_nonfinite)
        self.mesh = None if mesh is None else sharding.resolve_mesh(_mesh_kind(mesh))
        self.estimator = estimators.as_estimator(estimator)
        self.host, self.rule = read_rule(self.estimator.online())
        if adjoint is not None:
            adjoint = adjoint_lib.resolve(adjoint)
        self.adjoint = adjoint
        self.rule = plan_lib.with_adjoint(self.rule, adjoint, self.estimator.name)
        self.stream_cuts = stream_cuts
        if stream_cuts is not None and self.host.cuts is None:
            plan_lib.stream_rule(stream_cuts, (1,))  # its own errors first
            raise ValueError(
                f"stream_cuts: estimator {self.estimator.name} draws no shared "
                "cuts along the stream (OnlineRule.cuts), so there are no "
                "segments to cut further; use a truncation estimator (tbptt, artbp)."
            )
        self.steps = step_lib.Steps(cell, loss_fn, optimizer, self.rule)
        self._ladder = buckets_lib.ladder(
            self.buckets, self.host.buckets, self.estimator.name
        )
        if self.buckets.top not in (None, "auto"):
            self._ladder = buckets_lib.capped(
                self._ladder, self.buckets.top, self.rule.splits, self.estimator.name
            )

    def init(self, params, key: jax.Array | None = None, h0=None) -> TrainState:
        """The :class:`TrainState` of a run from ``params``: the optimizer's
        state, ``h0`` (default: the cell's initial state, shaped at the
        first :meth:`run`; also the run's reset target ``h_reset``) and
        ``key`` (a PRNG key, ``jax.random.key(seed)``; needed by random
        estimators)."""
        if key is None:
            if not self.estimator.deterministic:
                raise ValueError(
                    f"estimator {self.estimator.name} is random: pass key=."
                )
            key = jax.random.key(0)
        key = validation.prng_key("key", key)
        return TrainState(params, self.optimizer.init(params), h0, None, key,
                          h_reset=h0)  # fmt: skip

    def run(self, state: TrainState, xs, ys, *, resets=None, reset_state=None,
            flush: bool = True,
            callbacks: Sequence[Callable[[Event], Any]] = ()):  # fmt: skip
        """Train along ``xs``, one update per segment.

        Args:
          state: a :class:`TrainState` (:meth:`init`, or the one the previous
            call returned).
          xs: inputs ``[T, I]`` or ``[T, B, I]`` (time-major; integer token
            ids ``[T, *batch]`` for a token model); all streams of a batch
            share the segments.
          ys: targets, time-major, length T.
          resets: ``None`` or bool ``[T, *batch]``, true where a new episode
            starts: the state entering that step is ``reset_state`` and no
            gradient crosses the reset. Resets do not move the cuts; pending
            steps keep theirs.
          reset_state: what a reset restarts from in this and every later
            call: it replaces ``state.h_reset`` (kept in the returned state).
            ``None`` (default) keeps ``state.h_reset`` (``Trainer.init``'s
            ``h0``), and the cell's initial state when that is ``None`` too.
          flush: whether the stream ends with this call: the last segment is
            trained even though no cut ends it. With ``flush=False`` it waits
            in ``state.pending`` for the next call. A bool (NumPy and 0-d
            array bools too).
          callbacks: a list of functions ``event -> bool | None`` called
            after every segment with an :class:`Event` (:func:`every`,
            :func:`progress_bar`); one returning a true value (as ``bool()``
            reads it: ``np.bool_(True)``, ``jnp.array(True)``) stops
            training after that segment.

        Returns:
          ``(state, history)``: the :class:`TrainState` to continue from and
          the :class:`History` of this call.
        """
        state = self._check_state(state)
        xs = sequences.as_inputs(self.cell, state.params, xs)
        T, batch_shape = _check_data(xs, ys), tuple(xs.shape[1:-1])
        if self.mesh is not None:
            _check_mesh(self.mesh, batch_shape)
        if resets is not None:
            resets = np.asarray(sequences.check_resets(resets, T, batch_shape))
            self._check_takes_resets()
        checks.check_data(self.cell, self.loss_fn, xs=xs, ys=ys)  # values, ids
        checks.check_finite(h0=state.h)
        flush = _flag("flush", flush)
        callbacks = check_callbacks(callbacks)
        own = None
        if self.stream_cuts is not None:
            own = plan_lib.stream_rule(self.stream_cuts, batch_shape)
        _check_pending(state, xs, ys)
        state, xs = self._started(state, xs, reset_state)
        h_reset, h_restart = self._reset_targets(state, resets, batch_shape)
        xs_np, ys_np = np.asarray(xs), tree_map(np.asarray, ys)
        plan = plan_lib.plan_call(
            self.host, own, state, xs_np, ys_np, resets, flush, self.estimator.name
        )
        mb = 8 if self.buckets.min_bucket is None else self.buckets.min_bucket
        carries = plan_lib.carries(plan, state.step, state.cut, state.stream_cut)
        setting = Setting(
            self._ladder, self.rule.splits, mb, self.on_nonfinite, self.mesh,
            h_reset, callbacks, self.buckets, h_restart, carries,
        )  # fmt: skip
        hist = run_plan(self.steps, plan, state, setting)
        return hist.state, hist

    def _check_state(self, state) -> TrainState:
        """``state`` checked: a :class:`TrainState` with a PRNG key and the
        optimizer state of this trainer's optimizer."""
        if not isinstance(state, TrainState):
            raise TypeError(
                "state must be a jbptt.train.TrainState (Trainer.init, "
                f"History.state), got {type(state).__name__}."
            )
        key = state.key
        if key is None and self.estimator.deterministic:
            key = jax.random.key(0)
        state = state._replace(key=validation.prng_key("state.key", key))
        _check_opt_state(self.optimizer, state)
        return state

    def _check_takes_resets(self) -> None:
        if not self.rule.takes_resets:
            raise ValueError(
                f"resets: estimator {self.estimator.name} cannot train on a "
                "stream with resets (its OnlineRule.segment takes no resets= "
                "and reset_state= arguments); use a truncation or "
                "forward-mode estimator, or split the stream at the episode "
                "starts."
            )

    def _started(self, state: TrainState, xs, reset_state):
        """``(state, xs)`` in the compute dtype (JAX's promotion of the
        params' floating dtype and that of ``xs``), with ``reset_state``
        (when given) as the state's reset target, and the cell's initial
        state and the rule's estimator state filled in where they are still
        ``None``."""
        if reset_state is not None:
            state = state._replace(h_reset=reset_state)
        dtype = dtypes.compute_dtype(state.params, xs)
        xs = dtypes.cast(xs, dtype)
        h = state.h
        if h is None:
            h = self.cell.initial_state(state.params, tuple(xs.shape[1:-1]))
        h, h_reset = dtypes.cast((h, state.h_reset), dtype)
        est_state = state.est_state
        if est_state is None:
            est_state = self.rule.init(self.cell, state.params, h, xs[0])
        return state._replace(h=h, est_state=est_state, h_reset=h_reset), xs

    def _reset_targets(self, state, resets, batch_shape):
        """What a reset restarts from (``None`` without resets: the step's
        argument) and what a skipped segment whose end state is not finite
        restarts from: ``state.h_reset``, by default the cell's initial
        state (checked like ``h0``)."""
        target, dtype = state.h_reset, dtypes.float_dtype(state.h)
        # the carried state first, named as given (h0)
        validation.check_h0(self.cell, state.params, state.h, batch_shape, dtype)
        if target is None:
            target = self.cell.initial_state(state.params, batch_shape)
            if dtype is not None:
                target = dtypes.cast(target, dtype)
        try:
            validation.check_h0(self.cell, state.params, target, batch_shape, dtype)
        except (TypeError, ValueError) as err:
            raise type(err)(
                f"reset_state (checked like h0): {err} (the run's reset target, "
                "state.h_reset)"
            ) from err
        return (None if resets is None else target), target


def check_optimizer(optimizer) -> None:
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            "optimizer must be an optax.GradientTransformation (e.g. "
            f"optax.adam(1e-3)), got {type(optimizer).__name__}."
        )


def _check_data(xs, ys) -> int:
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


def _check_mesh(mesh, batch_shape) -> None:
    """A 1-D mesh whose devices divide the batch evenly."""
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


def check_callbacks(callbacks) -> tuple:
    """``callbacks`` as a tuple: a list (or tuple) of callables."""
    if callable(callbacks) or not isinstance(callbacks, list | tuple):
        raise TypeError(
            "callbacks must be a list of callables event -> bool (e.g. "
            f"callbacks=[fn]), got {type(callbacks).__name__} {callbacks!r}."
        )
    callbacks = tuple(callbacks)
    for cb in callbacks:
        if not callable(cb):
            raise TypeError(f"callbacks must be callables event -> bool, got {cb!r}.")
    return callbacks


def _flag(name: str, value) -> bool:
    """A flag as Python's ``bool()`` reads it: a bool, a NumPy bool or a 0-d
    boolean array (JAX's included)."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    dtype = getattr(value, "dtype", None)
    if dtype is not None and np.shape(value) == () and dtype == np.bool_:
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {value!r}.")


def _mesh_kind(mesh):
    """``mesh`` if it is of a kind :func:`jbptt.sharding.resolve_mesh` takes
    (a device count, a list of devices or a 1-D mesh)."""
    count = isinstance(mesh, int | np.integer) and not isinstance(mesh, bool)
    if count or isinstance(mesh, jax.sharding.Mesh | list | tuple):
        return mesh
    dtype = getattr(mesh, "dtype", None)
    if dtype is not None and np.shape(mesh) == () and np.issubdtype(dtype, np.integer):
        return int(mesh)  # a concrete 0-d integer array
    raise TypeError(
        "mesh must be None, a device count (int), a list of jax devices or a "
        "1-D jax.sharding.Mesh (jbptt.sharding.make_mesh), got "
        f"{type(mesh).__name__} {mesh!r}."
    )


def _check_opt_state(optimizer, state) -> None:
    """``state.opt_state`` has the tree structure of ``optimizer.init``'s."""
    want = jax.tree_util.tree_structure(jax.eval_shape(optimizer.init, state.params))
    got = jax.tree_util.tree_structure(state.opt_state)
    if got != want:
        raise ValueError(
            "state: its opt_state was not made by this trainer's optimizer "
            f"(optimizer.init(params) has structure {want}, state.opt_state "
            f"has {got}); continue a run with the optimizer it started with, "
            "or start from Trainer.init(params, key)."
        )


def _check_pending(state, xs, ys) -> None:
    """The steps of a call continue ``state.pending``'s: same rank, batch
    and feature size (and targets' shapes)."""
    if state.pending is None:
        return
    pxs, pys = state.pending[0], state.pending[1]
    if tuple(np.shape(pxs)[1:]) != tuple(xs.shape[1:]):
        raise ValueError(
            f"xs: steps of shape {tuple(xs.shape[1:])} ([T, *batch, I] less T) "
            f"cannot continue the pending steps of state, of shape "
            f"{tuple(np.shape(pxs)[1:])}: every call of a run takes the same "
            "batch and feature size (or flush=True ends the stream first)."
        )
    got = [np.shape(a)[1:] for a in jax.tree_util.tree_leaves(ys)]
    want = [np.shape(a)[1:] for a in jax.tree_util.tree_leaves(pys)]
    if jax.tree_util.tree_structure(ys) != jax.tree_util.tree_structure(pys) or (
        got != want
    ):
        raise ValueError(
            f"ys: targets of per-step shapes {got} cannot continue the pending "
            f"steps of state, of per-step shapes {want}: every call of a run "
            "takes targets of the same shapes."
        )


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
    n = validation.positive_int("n", n)  # NumPy and 0-d integers too

    def callback(event: Event):
        if (event.start + event.length) // n > event.start // n:
            return fn(event)
        return None

    return callback


def progress_bar(total: int, **tqdm_kwargs) -> Callable[[Event], None]:
    """A callback showing a progress bar (tqdm) over ``total`` steps with the
    last segment's loss and the segments per second; it closes itself when
    the steps reach ``total``.

    Examples:
      >>> from jbptt import train
      >>> cb = train.progress_bar(16, disable=True)
      >>> cb(train.Event(None, 0, 0, 16, 0.5, 1.0, 0.1)) is None
      True
    """
    total = validation.positive_int("total", total)
    try:
        from tqdm.auto import tqdm
    except ImportError as err:
        raise ImportError(
            "train.progress_bar draws with tqdm: pip install tqdm "
            '(or pip install "jbptt[experiments]").'
        ) from err

    bar = tqdm(total=total, unit="step", mininterval=0.5, **tqdm_kwargs)
    t0, count = time.perf_counter(), [0]

    def callback(event: Event) -> None:
        count[0] += 1
        bar.update(event.length)
        rate = count[0] / max(time.perf_counter() - t0, 1e-9)
        loss = float(event.loss)
        bar.set_postfix(loss=f"{loss:.4g}", seg_s=f"{rate:.3g}", refresh=False)
        if bar.n >= total:
            bar.close()

    return callback


def link_weights(estimator, key, T: int, *, batch_shape=(), stream_cuts=None):
    """The link weights a :class:`Trainer` uses on the first ``T`` steps of a
    stream: ``[T]`` shared, or ``[T, *batch_shape]`` with ``stream_cuts``
    (the shared weights times each stream's own).

    Feed them to :func:`jbptt.value_and_grad` (or the sweep) to study the
    online estimator offline: with no update in between, the sum of the
    trainer's segment gradients is that gradient (tested).

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
    own = (
        None if stream_cuts is None else plan_lib.stream_rule(stream_cuts, batch_shape)
    )
    dtype = jnp.result_type(float)
    _, w, _, _, _ = plan_lib.draw(rule, own, key, 0, T, 1, None, batch_shape, dtype)
    return w
