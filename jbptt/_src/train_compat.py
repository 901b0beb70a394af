""":func:`train`, the one-call spelling of online training kept for existing
code: a :class:`~jbptt._src.train.Trainer` built per call, whose compiled
steps are shared with the calls before it that passed the same model,
optimizer and estimator rule (the steps of the last few such combinations
are kept). Its old keywords (``clip=``, ``clip_mode=``, ``progress=``,
``min_bucket=``, ``max_buckets=``, ``top_bucket=``) keep working with a
``DeprecationWarning`` naming the new spelling."""

from __future__ import annotations

import collections
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jbptt._src import buckets as buckets_lib
from jbptt._src import protocol, segment_rules, train_plan, train_step, validation
from jbptt._src.buckets import Buckets
from jbptt._src.cell import Cell
from jbptt._src.train import Trainer, check_callbacks, check_optimizer, progress_bar
from jbptt._src.train_loop import Event, History, TrainState

_CLIPS = {"global_norm": optax.clip_by_global_norm, "value": optax.clip}
_CLIP_NAMES = {"global_norm": "optax.clip_by_global_norm", "value": "optax.clip"}
_BUCKET_KEYWORDS = {"min_bucket": "min_bucket", "max_buckets": "max_buckets",
                    "top_bucket": "top"}  # fmt: skip

# The compiled steps of train()'s most recently used models, keyed on what
# the step closes over. Older ones are dropped with their executables (on
# XLA:CPU each holds some 200 memory maps of code, and a loop over ~60
# fresh models ran into vm.max_map_count when all were kept).
_PROGRAMS = 8
_programs: collections.OrderedDict = collections.OrderedDict()


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
    state: TrainState | None = None,
    flush: bool = True,
    callbacks: Sequence[Callable[[Event], Any]] = (),
    resets=None,
    reset_state=None,
    stream_cuts=None,
    buckets: Buckets | None = None,
    **options,
) -> History:
    """Train online along ``xs``, one optax update per segment: one call of
    a :class:`Trainer` (see it for the arguments and what holds across
    calls).

    For a stream fed in chunks, build one :class:`Trainer` and call its
    ``run``: this function shares compiled steps between calls only while
    they pass the same ``cell``, ``loss_fn`` and ``optimizer`` objects (a
    fresh ``optax.adam(1e-3)`` per chunked call compiles every bucket again,
    and warns).

    Args:
      cell, loss_fn, optimizer, estimator: as :class:`Trainer` takes them.
      params: initial params (ignored when ``state`` is given).
      xs, ys: as :meth:`Trainer.run` takes them.
      key: PRNG key for random estimators, ``jax.random.key(seed)``
        (ignored when ``state`` is given).
      h0: initial state (default: the cell's initial state); also the run's
        reset target (``TrainState.h_reset``: what ``resets`` restart from
        in this and every later call). With ``state`` it replaces the
        state's reset target, as ``reset_state`` does.
      state: a :class:`TrainState` to continue from (``History.state``): it
        carries the reset target of the call that started the run.
      flush, callbacks, resets, reset_state: as :meth:`Trainer.run` takes them.
      stream_cuts: as :class:`Trainer` takes it.
      buckets: the compile-tuning policy (:class:`Buckets`).
      **options: ``on_nonfinite``, ``mesh`` and ``adjoint`` (as
        :class:`Trainer` takes them); ``opt_state`` and ``est_state`` to
        resume from without a ``state``; and the deprecated ``clip``,
        ``clip_mode``, ``progress``, ``min_bucket``, ``max_buckets``,
        ``top_bucket``. ``lengths`` is refused: online training walks all
        streams of a batch in shared segments, so no stream can end early
        (concatenate episodes and mark their starts with ``resets``).

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
    """
    if options.pop("lengths", None) is not None:
        raise ValueError(
            "lengths is not taken by train: online training walks all streams of "
            "a batch in shared segments with loss_fn reducing over the batch, so "
            "no stream can end early. Train streams of different lengths in "
            "separate calls, or concatenate episodes in one stream and mark "
            "their starts with resets=."
        )
    check_optimizer(optimizer)
    tx, clip = _clipped(optimizer, options)
    buckets = _bucket_keywords(buckets, options)
    callbacks = check_callbacks(callbacks)
    if options.pop("progress", False):
        warnings.warn(
            "train(progress=True) is deprecated: pass "
            "callbacks=[jbptt.train.progress_bar(T)] (T: the steps of the call).",
            DeprecationWarning,
            stacklevel=2,
        )
        callbacks = (progress_bar(int(xs.shape[0])), *callbacks)
    kw = {
        k: options.pop(k) for k in ("on_nonfinite", "mesh", "adjoint") if k in options
    }
    kw["stream_cuts"] = stream_cuts
    opt_state, est_state = (
        options.pop("opt_state", None),
        options.pop("est_state", None),
    )
    if options:
        raise TypeError(
            f"train() got an unexpected keyword argument {next(iter(options))!r}."
        )
    tr = shared_trainer(cell, loss_fn, (optimizer, tx, clip), estimator, buckets, kw)
    if state is None:
        state = tr.init(params, key, h0)
        if opt_state is not None:
            state = state._replace(opt_state=opt_state)
        state = state._replace(est_state=est_state)
    _, hist = tr.run(
        state, xs, ys, resets=resets,
        reset_state=h0 if reset_state is None else reset_state,
        flush=flush, callbacks=callbacks,
    )  # fmt: skip
    return hist


def _clipped(optimizer, options):
    """The optimizer after the deprecated ``clip=`` (checked, then warned
    about), and ``(clip, clip_mode)`` for the steps' key."""
    clip, mode = options.pop("clip", None), options.pop("clip_mode", None)
    if mode is not None and mode not in _CLIPS:
        raise ValueError(
            f"Unknown clip_mode {mode!r}. It needs to be one of {sorted(_CLIPS)}."
        )
    mode = "global_norm" if mode is None else mode
    if clip is None:
        return optimizer, (None, mode)
    validation.real("clip", clip, low=0.0, low_open=True,
                    what="a positive number or None")  # fmt: skip
    warnings.warn(
        f"train(clip=, clip_mode=) is deprecated: pass optax.chain("
        f"{_CLIP_NAMES[mode]}(c), opt) as the optimizer.",
        DeprecationWarning,
        stacklevel=3,
    )
    return optax.chain(_CLIPS[mode](clip), optimizer), (clip, mode)


def _bucket_keywords(buckets, options) -> Buckets | None:
    """``buckets`` with the deprecated ``min_bucket=``, ``max_buckets=`` and
    ``top_bucket=`` folded in (checked, then warned about)."""
    old = {k: options.pop(k) for k in list(_BUCKET_KEYWORDS) if k in options}
    if not old:
        return buckets
    new = (buckets or Buckets())._replace(
        **{_BUCKET_KEYWORDS[k]: v for k, v in old.items()}
    )
    buckets_lib.check(new)
    spelled = ", ".join(f"{_BUCKET_KEYWORDS[k]}={v!r}" for k, v in old.items())
    warnings.warn(
        f"train({', '.join(f'{k}=' for k in old)}) is deprecated: pass "
        f"buckets=jbptt.train.Buckets({spelled}).",
        DeprecationWarning,
        stacklevel=3,
    )
    return new


def shared_trainer(cell, loss_fn, opt, estimator, buckets, kw) -> Trainer:
    """A :class:`Trainer` for one call, on the compiled gradient passes of an
    earlier call with the same model and rule (and its update too when the
    optimizer and clipping are the same objects). ``opt`` is ``(optimizer,
    tx, (clip, clip_mode))``: the object given, the transformation trained
    with and what clipping made of it (a fresh optimizer per chunked call
    compiles only its update)."""
    optimizer, tx, clip = opt
    tr = Trainer(cell, loss_fn, tx, estimator, buckets=buckets, **kw)
    p = tr.rule
    key = (cell, loss_fn, p.segment, p.advance, p.block)
    updates = _programs.pop(key, None)
    if updates is None:
        updates = {}
    tx_key = (optimizer, *clip)
    steps = updates.get(tx_key)
    if steps is None:
        steps = next(iter(updates.values()), None)
        steps = tr.steps if steps is None else steps.with_tx(tx, p)
        updates[tx_key] = steps
        while len(updates) > _PROGRAMS:  # a fresh optimizer per call
            updates.pop(next(iter(updates)))
    tr.steps = steps
    _programs[key] = updates  # most recently used last
    while len(_programs) > _PROGRAMS:
        _programs.popitem(last=False)
    return tr


def make_step(cell: Cell, loss_fn: Callable, optimizer, *, guard: bool = False):
    """Deprecated: the jitted online update on one segment of a link-weight
    estimator (:class:`Trainer` drives the same update).

    Returns ``step(params, opt_state, h, xs, ys, w, start, n, bucket,
    resets=None, reset_state=None) -> (params, opt_state, h, mean_loss,
    grad_norm[, finite])``: the segment is ``xs[start : start + bucket]``
    (padded by the caller), of which the first ``n`` steps are real;
    ``bucket`` is static. An update whose loss, gradients, state or params
    are not finite is not applied; ``guard=True`` also returns the
    :func:`jbptt.checks.finite_flags`.
    """
    check_optimizer(optimizer)
    rule = protocol.OnlineRule(
        segment_rules.no_state, None, segment_rules.truncation_segment,
        takes_resets=True, takes_adjoint=True,
    )  # fmt: skip
    program = train_step.Steps(cell, loss_fn, optimizer, train_plan.read_rule(rule)[1])

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
        piece = program.pieces(
            train_step.StepIn(
                params, h, (), None, None, cut(xs),
                jax.tree_util.tree_map(cut, ys), cut(w), n, None, train_step.UPDATE,
                resets, h_reset,
            )
        )  # fmt: skip
        out = program.update(params, opt_state, h, (), piece)
        res = (out.params, out.opt_state, out.h, piece.total / n, piece.norm)
        return res + ((out.finite,) if guard else ())

    return step
