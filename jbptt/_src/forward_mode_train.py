"""Online training with a forward-mode estimator, as it was spelled before
the estimator protocol: :func:`train` returns an :class:`OnlineHistory` with
per-step losses and resumes from an :class:`OnlineState`. The loop itself is
:class:`jbptt.train.Trainer`, the same for every estimator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jbptt._src import validation
from jbptt._src.buckets import Buckets
from jbptt._src.cell import Cell
from jbptt._src.forward_mode import OnlineEstimator, OnlineState
from jbptt._src.train_compat import shared_trainer


class OnlineHistory(NamedTuple):
    """What :func:`train` returns.

    Attributes:
      params: params after the last update.
      opt_state: the optimizer state after the last update.
      state: the estimator's :class:`OnlineState` after the last step (cell
        state and influence; pass it back as ``state=`` to continue).
      loss: ``[T]`` per-step loss ``ℓ_t`` under the params of that step.
      grad_norm: ``[T // update_every]`` global norm of each update's
        gradient (before clipping).
    """

    params: Any
    opt_state: Any
    state: OnlineState
    loss: jax.Array
    grad_norm: jax.Array


def train(
    cell: Cell,
    loss_fn: Callable,
    params,
    xs,
    ys,
    optimizer,
    estimator: OnlineEstimator,
    *,
    key: jax.Array | None = None,
    h0=None,
    state: OnlineState | None = None,
    opt_state=None,
    update_every: int = 1,
    clip: float | None = None,
    resets=None,
    reset_state=None,
) -> OnlineHistory:
    """Train online along ``xs`` with a forward-mode estimator.

    At every step ``t`` the estimator returns ``g_t`` (module docstring),
    computed with the current params and the influence carried from earlier
    steps, which were taken under earlier params (the usual online
    approximation of RTRL and its relatives). Every ``update_every`` steps
    the sum of the ``g_t`` since the last update goes through ``optimizer``.
    The loop is :func:`jbptt.train.train` with segments of ``update_every``
    steps.

    Args:
      cell: a :class:`jbptt.cells.Cell`.
      loss_fn: per-step loss ``(params, out_t, y_t) -> scalar``.
      params: initial params.
      xs: inputs ``[T, ..., I]`` (one long sequence or a batch, time-major).
      ys: targets, time-major, length T.
      optimizer: an ``optax.GradientTransformation``.
      estimator: :func:`rtrl`, :func:`uoro` or :func:`snap1`.
      key: PRNG key (required for random estimators such as UORO).
      h0: initial cell state (default: zeros); ignored when ``state`` given.
      state: an :class:`OnlineState` to resume from.
      opt_state: optimizer state to resume from (default: ``optimizer.init``).
      update_every: steps between updates (``T`` must be a multiple).
      clip: if given, clip each update's gradient to this global norm
        (``optax.chain(optax.clip_by_global_norm(clip), optimizer)``; pass
        back the returned ``opt_state``, which is that chain's).
      resets: ``None`` or bool ``[T, *batch]``, true where a new episode
        starts: the state restarts from ``reset_state`` and the influence
        is zeroed there (as in :func:`jbptt.train.train`).
      reset_state: what a reset restarts from (default: ``h0`` when given,
        else ``cell.initial_state``).

    Returns:
      An :class:`OnlineHistory`.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import jbptt
      >>> from jbptt import forward_mode
      >>> from jbptt._src.forward_mode_train import train
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> params = model.init(jax.random.key(0), 1, 4)
      >>> xs = jax.random.normal(jax.random.key(1), (32, 1))
      >>> hist = train(model.cell, model.loss_fn, params, xs, xs,
      ...              optax.sgd(1e-2), forward_mode.snap1())
      >>> hist.loss.shape
      (32,)
    """
    if not isinstance(estimator, OnlineEstimator):
        raise TypeError(
            "estimator must be a forward_mode OnlineEstimator (rtrl(), uoro(), "
            f"snap1()), got {type(estimator).__name__}."
        )
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}.")
    if not hasattr(optimizer, "init") or not hasattr(optimizer, "update"):
        raise TypeError(
            f"optimizer must be an optax.GradientTransformation, got "
            f"{type(optimizer).__name__}."
        )
    if key is None and not estimator.deterministic:
        raise ValueError(f"estimator {estimator.name} is random: pass key=.")
    if state is None:
        _, batch_shape = validation.check_xs(xs)
        h0 = cell.initial_state(params, batch_shape) if h0 is None else h0
    else:
        h0 = state.h
    validation.check_scan_args(cell, params, h0, xs, None)
    validation.check_ys(ys, xs.shape[0])
    T = xs.shape[0]
    update_every = validation.positive_int("update_every", update_every)
    if T % update_every:
        raise ValueError(
            f"update_every must be a positive int dividing T = {T}, got "
            f"{update_every!r}."
        )
    clip = validation.positive_float("clip", clip, allow_none=True)
    tx = optimizer
    if clip is not None:
        tx = optax.chain(optax.clip_by_global_norm(clip), optimizer)
    tr = shared_trainer(
        cell, loss_fn, (optimizer, tx, (clip, "global_norm")),
        estimator.every(update_every),
        Buckets(min_bucket=update_every), {},
    )  # fmt: skip
    run = tr.init(params, key, h0)
    if opt_state is not None:
        run = run._replace(opt_state=opt_state)
    run = run._replace(est_state=None if state is None else state.influence)
    _, hist = tr.run(
        run, xs, ys, resets=resets,
        reset_state=h0 if reset_state is None else reset_state,
    )  # fmt: skip
    return OnlineHistory(
        hist.params,
        hist.opt_state,
        OnlineState(hist.h, hist.est_state),
        jnp.asarray(hist.step_loss),
        jnp.asarray(hist.grad_norm),
    )
