"""The estimator protocol: one way to ask any gradient estimator for samples,
its cost, and how it trains online (docs/design.md, "The estimator protocol").

Truncation estimators (full BPTT, TBPTT, Williams–Peng, ARTBP: link weights
on the one reverse scan), forward-mode estimators (RTRL, UORO, SnAp-1) and
any user-written estimator implement :class:`GradientEstimator`.
:func:`jbptt.sweep.sweep` calls only ``samples`` and ``cost``;
:func:`jbptt.train.train` calls only ``online``. Neither asks what kind of
estimator it holds, in the spirit of diffrax's ``AbstractAdjoint``: forward
mode is just another strategy.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from jbptt._src import adjoint as _adjoint
from jbptt._src import scan as _scan
from jbptt._src import sequences, validation
from jbptt._src.cell import Cell
from jbptt._src.losses import per_sequence_losses, per_step_losses

tree_map = jax.tree_util.tree_map


class Problem(NamedTuple):
    """A gradient problem: L(θ) = Σ_t ℓ_t(θ, out_t, y_t) along one sequence.

    A plain NamedTuple of eight fields; the last two default to ``None``.
    Unpack all eight (``cell, loss_fn, params, h0, xs, ys, lengths, resets =
    problem``) or the first six with ``problem[:6]``.

    Attributes:
      cell: a :class:`jbptt.cells.Cell`.
      loss_fn: per-step loss ``(params, out_t, y_t) -> scalar``.
      params: the point θ at which gradients are estimated (pytree).
      h0: initial state.
      xs: inputs ``[T, I]`` or ``[T, B, I]``.
      ys: targets, time-major.
      lengths: ``None`` (default), lengths ``[*batch]`` in ``[1, T]`` or a
        bool mask ``[T, *batch]``: padded steps add no loss and no gradient,
        and ``loss_fn`` is called per sequence (as in
        :func:`jbptt.value_and_grad`). Truncation estimators honour it;
        forward-mode and zeroth-order ones refuse it.
      resets: ``None`` (default) or bool ``[T, *batch]``, true where an
        episode starts: the state restarts from ``h0`` and the link into the
        previous step is cut. Truncation and forward-mode estimators honour
        it (forward mode zeroes the influence at a reset).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt import estimators
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> p = model.init(jax.random.key(0), 1, 4)
      >>> xs = jnp.ones((6, 2, 1))
      >>> resets = jnp.zeros((6, 2), bool).at[3, 1].set(True)
      >>> prob = estimators.Problem(model.cell, model.loss_fn, p,
      ...                           model.cell.initial_state(p, (2,)), xs, xs,
      ...                           resets=resets)
      >>> len(prob), prob.resets.shape, prob._replace(resets=None).resets
      (8, (6, 2), None)
    """

    cell: Cell
    loss_fn: Any
    params: Any
    h0: Any
    xs: jax.Array
    ys: Any
    lengths: Any = None
    resets: Any = None


class Cost(NamedTuple):
    """What one gradient estimate costs, in units every estimator shares.

    Attributes:
      depth: mean backpropagation depth ``E[min(L, T)]`` for the truncation
        length L (``T`` when nothing is truncated): the axis on which
        truncation estimators are compared.
      backward_steps: reverse-scan cell steps per estimate (``T`` for full
        BPTT, TBPTT and ARTBP; more for Williams–Peng; 0 for forward mode).
      forward_steps: forward cell steps per estimate (``T`` unless the
        estimator re-runs the sequence, e.g. with perturbed params).
      state_bytes: memory carried from step to step beyond the cell state
        (forward mode's influence, per sequence batch).
      reverse_scans: reverse scans per estimate (the number J of windows; 0
        when the estimator runs none).
    """

    depth: float
    backward_steps: float
    forward_steps: float
    state_bytes: int = 0
    reverse_scans: int = 0


class OnlineRule(NamedTuple):
    """How an estimator trains online: the one hook :func:`jbptt.train.train`
    calls.

    The loop walks along the stream in segments; after each segment it applies
    one optimizer update with the segment's gradient.

    Attributes:
      init: ``(cell, params, h0, x0) -> est_state``: what the estimator carries
        from segment to segment besides the cell state (``()`` when nothing;
        forward mode's influence). ``x0`` is one step's input.
      plan: ``(key, T) -> (lengths, w)``, on the host: the segment lengths
        (ints summing to T) and the link weights ``w[T]`` handed to the
        segments (or ``None``).
      segment: ``(cell, loss_fn, params, h, est_state, xs, ys, w, mask, key)
        -> (losses, grads, h_new, est_state_new)``, traceable: one segment's
        per-step losses ``[n]`` (zero on padding), the gradient to apply, the
        state after the segment's last real step and the carried estimator
        state. ``xs``, ``ys``, ``w`` and ``mask`` are the segment's steps padded
        to a static length ``n``; ``mask[t]`` is 1 on real steps, 0 on padding.
        Return the same function object from every ``online()`` call, so the
        training step compiles once per segment length.
      cuts: optional ``(key, t0, T, d) -> (w[T], d)``, on the host: link
        weights for the global steps ``t0 .. t0 + T − 1`` of a stream, a zero
        marking a cut before that step, drawn from ``key`` and the global
        step only, and ``d``, what the draws carry from chunk to chunk (steps
        since the last cut). When given, :func:`jbptt.train.train` uses it
        instead of ``plan``, so a stream fed in chunks is cut as if fed at
        once, and the unfinished last segment of a chunk waits for the next.
      stream_cuts: optional ``(keys, t0, T, d[n]) -> (w[T, n], d[n])``, on
        the host: ``cuts``'s draws for ``n`` streams at once, stream ``j``
        from ``keys[j]`` (``train(stream_cuts=)``; the built-in laws give
        it). ``None``: ``cuts`` is called per stream (or its ``streams``
        attribute, read for compatibility).
      buckets: optional ``(min_bucket, max_buckets=6) -> tuple[int, ...]``:
        the static segment lengths the training step compiles (at most
        ``max_buckets`` of them), fixed by the estimator (not by one draw).
        Segments run in the smallest bucket that holds them; a longer one
        is split into blocks of the largest (needs ``advance``, ``block``
        and ``splits``). Without it, buckets are powers of two capped at the
        call's longest segment.
      advance: optional ``(cell, params, h, xs, mask) -> h_new``, traceable:
        the state after a block's real steps, forward only.
      block: optional ``(cell, loss_fn, params, h, xs, ys, w, mask, dh_end) ->
        (losses, grads, h_new, dh_start)``, traceable: ``segment`` on one
        block of a split segment, with ``dh_end`` the cotangent arriving at
        the block's last real step from later blocks and ``dh_start`` the one
        leaving through its first link. The gradients summed over the blocks
        must equal ``segment``'s on the whole (for stateless estimators, whose
        ``est_state`` is ``()``).
      splits: the ``segment`` function that ``advance`` and ``block`` split
        (the built-in truncation rules name their own). Blocks run only
        while it is this rule's ``segment``: a rule made by
        ``_replace(segment=f)`` runs ``f`` whole unless it also passes
        ``splits=f``. ``None`` (compatibility only): blocks run when
        ``advance`` and ``block`` are given, unless ``block`` carries a
        ``splits`` attribute naming another segment.
      takes_resets: whether ``segment`` (and ``advance``, ``block``) take
        ``resets=`` and ``reset_state=``: episode starts ``[n, *batch]`` and
        the state they restart from (``Trainer.run(resets=)`` needs it).
        ``None`` (compatibility only): read from ``segment``'s signature.
      takes_adjoint: whether ``segment`` and ``block`` take ``adjoint=``, a
        reverse-pass strategy (``Trainer(adjoint=)`` needs it). ``None``
        (compatibility only): whether ``segment``'s signature names it.
        Both describe the ``segment`` they came with: when ``splits`` names
        another function than ``segment`` (a rule made by
        ``_replace(segment=f)``), they are read from ``f``'s signature.
    """

    init: Callable[..., Any]
    plan: Callable[[jax.Array, int], tuple[np.ndarray, Any]]
    segment: Callable[..., tuple[jax.Array, Any, Any, Any]]
    cuts: Callable[..., tuple[np.ndarray, Any]] | None = None
    buckets: Callable[[int], tuple[int, ...]] | None = None
    advance: Callable[..., Any] | None = None
    block: Callable[..., tuple[jax.Array, Any, Any, Any]] | None = None
    stream_cuts: Callable[..., tuple[np.ndarray, Any]] | None = None
    splits: Callable[..., Any] | None = None
    takes_resets: bool | None = None
    takes_adjoint: bool | None = None


@runtime_checkable
class GradientEstimator(Protocol):
    """What every estimator implements (duck-typed; a NamedTuple with these
    methods is enough).

    Attributes:
      name: label for tables and plots (unique within a sweep).
      deterministic: whether samples ignore the key (then a sweep draws one).
      hparams: hyperparameters, for reports.

    Examples:
      A user-written estimator, as a NamedTuple with the three methods: twice
      the exact gradient (sweep and train accept it like any other).

      >>> import jax, jax.numpy as jnp
      >>> from typing import NamedTuple
      >>> from jax.flatten_util import ravel_pytree
      >>> import jbptt
      >>> from jbptt import estimators
      >>> class Doubled(NamedTuple):  # 2 × the exact gradient, deterministic
      ...     name: str = "doubled"
      ...     deterministic: bool = True
      ...     hparams: dict = {}
      ...     def samples(self, problem, key, n, *, chunk=64, mesh=None):
      ...         g = estimators.full().samples(problem, key, n, chunk=chunk)
      ...         return 2.0 * g
      ...     def cost(self, problem):
      ...         return estimators.full().cost(problem)
      ...     def online(self):
      ...         return estimators.full().online()
      >>> isinstance(Doubled(), estimators.GradientEstimator)
      True
    """

    name: str
    deterministic: bool
    hparams: dict

    def samples(
        self, problem: Problem, key: jax.Array, n: int, *, chunk: int = 64, mesh=None
    ) -> jax.Array:
        """``[n, D]``: n flattened gradient estimates of ∇_θ L (rows in the
        order of ``ravel_pytree(problem.params)``) from keys
        ``split(key, n)``; traceable, vmapped over draws ``chunk`` at a time
        with :func:`jbptt.sharding.map_rows` (split over ``mesh`` if given)."""
        ...

    def cost(self, problem: Problem) -> Cost:
        """The :class:`Cost` of one estimate on ``problem``."""
        ...

    def online(self) -> OnlineRule:
        """The :class:`OnlineRule` of online training; raises ``ValueError``
        if the estimator cannot train online."""
        ...


def check_estimator(estimator) -> GradientEstimator:
    """``estimator`` if it implements the protocol, else a ``TypeError``."""
    missing = [
        a
        for a in ("name", "deterministic", "samples", "cost", "online")
        if not hasattr(estimator, a)
    ]
    if missing:
        raise TypeError(
            "estimator must be a jbptt Estimator or link weights w[T], got "
            f"{type(estimator).__name__}: an estimator implements "
            "jbptt.estimators.GradientEstimator (name, deterministic, samples, "
            "cost, online), e.g. estimators.tbptt(8) or forward_mode.uoro(); "
            f"this one lacks {', '.join(missing)}."
        )
    return estimator


def check_problem(problem: Problem) -> int:
    """Validate a :class:`Problem` (its ``lengths`` and ``resets`` too);
    returns T."""
    if not isinstance(problem, Problem):
        raise TypeError(
            f"problem must be a jbptt.estimators.Problem, got {type(problem).__name__}."
        )
    validation.check_scan_args(
        problem.cell, problem.params, problem.h0, problem.xs, None
    )
    T, batch_shape = problem.xs.shape[0], tuple(problem.xs.shape[1:-1])
    validation.check_ys(problem.ys, T)
    try:
        mask = sequences.check_mask(problem.lengths, T, batch_shape)
        sequences.check_resets(problem.resets, T, batch_shape)
        if mask is not None:
            sequences.check_ys_batched(problem.ys, T, batch_shape)
    except (TypeError, ValueError) as err:
        raise type(err)(f"Problem: {err}") from err
    return T


def estimator_key(key, estimator) -> jax.Array:
    """``fold_in(key, crc32(name))``: an estimator's samples in a sweep do not
    depend on which other estimators share it."""
    return jax.random.fold_in(key, zlib.crc32(estimator.name.encode()) & 0x7FFFFFFF)


# ------------------------------------------------- the shared forward pass ---

_SHARED: contextvars.ContextVar[_Context | None] = contextvars.ContextVar(
    "jbptt_shared_forward", default=None
)


class _Context(NamedTuple):
    """What :func:`shared_forward` holds: the forwards it ran and the
    reverse-pass strategy its :func:`gradient_fn` calls use."""

    entries: list
    adjoint: Any


class _Shared(NamedTuple):
    """One shared forward: the arguments it was computed for (held, and
    compared with ``is``) and the two gradient functions."""

    problem: Problem
    lengths: Any
    resets: Any
    grad: Callable
    windowed: Callable

    def serves(self, problem, lengths, resets) -> bool:
        return (
            self.problem is problem
            and self.lengths is lengths
            and self.resets is resets
        )


@contextlib.contextmanager
def shared_forward(adjoint=None):
    """Within this context :func:`gradient_fn` runs the forward once per
    :class:`Problem` object, so estimators sampled on the same problem (a
    sweep) share it and only their reverse scans differ. The context holds
    the problems it served (no cache outlives it, none is keyed on ``id``).

    Args:
      adjoint: the reverse-pass strategy of the :func:`gradient_fn` calls
        made inside (``None``: ``jbptt.ReverseScan()``, the shared forward
        above); another strategy (``jbptt.Budget(M)``,
        ``jbptt.ReverseScan(checkpoint="sqrt")``, ``jbptt.Autodiff()``) runs
        each estimate through its own loss instead, with the same values.
    """
    token = _SHARED.set(_Context([], _adjoint.resolve(adjoint)))
    try:
        yield
    finally:
        _SHARED.reset(token)


def gradient_fn(
    problem: Problem, *, lengths=None, resets=None, span=None, adjoint=None
):
    """One shared forward; returns ``(w[T], m[T]) -> ∇^{(w)} Σ_t m_t ℓ_t``.

    The forward scan and the vjp of the per-step losses run once (when this
    is called, typically inside ``jit``); the returned function runs only the
    reverse scan (:func:`jbptt.backward`), so vmapping it over ``(w, m)``
    batches reverse scans that share one forward.

    With ``span=L`` the returned function runs the loss vjp and the reverse
    scan over ``L`` steps only: from ``a``, the last cut (``w_t = 0``,
    ``t ≥ 1``) at or before the first loss of ``m`` (0 if none), to
    ``a + L`` (shifted back to end at T). Before ``a`` the cotangent is
    zero, because nothing crosses the cut and no loss lies there; the
    result is exact when every loss of ``m`` lies before ``a + L`` (what
    ``span`` of :class:`jbptt.estimators.Estimator` promises), so a window of a
    Williams–Peng estimator costs ``k2`` reverse steps instead of ``T``.

    Args:
      problem: the :class:`Problem`.
      lengths: ``None``, lengths ``[*batch]`` or a bool mask ``[T, *batch]``:
        padded steps add no loss and no gradient, and ``ℓ_t`` becomes the sum
        of the sequences' own losses at step t (``loss_fn`` called per
        sequence), as in :func:`jbptt.value_and_grad`. Default:
        ``problem.lengths``.
      resets: ``None`` or bool ``[T, *batch]``: episode starts in a stream
        (the state restarts from ``h0``, the link is cut per sequence).
        Default: ``problem.resets``.
      span: ``None`` (every step) or the static number of steps ``L ≤ T``
        each window's reverse scan covers (above); ``w`` and ``m`` must then
        be ``[T]`` (one window).
      adjoint: how the reverse pass runs (``None``: the enclosing
        :func:`shared_forward`'s, else ``jbptt.ReverseScan()``). The default
        runs one forward per problem and one reverse scan per ``(w, m)``;
        another strategy (e.g. ``jbptt.Budget(max_states=M)`` for long
        sequences) differentiates ``Σ_t m_t ℓ_t`` through its own loss,
        one forward per call, with the same gradients.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt import estimators, truncation
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> p = model.init(jax.random.key(0), 1, 4)
      >>> xs, ys = jnp.ones((6, 1)), jnp.zeros((6, 1))
      >>> prob = estimators.Problem(model.cell, model.loss_fn, p,
      ...                           model.cell.initial_state(p), xs, ys)
      >>> grad = estimators.gradient_fn(prob)
      >>> g = grad(truncation.full(6), jnp.ones(6))
      >>> ref = jax.grad(lambda p: jbptt.loss(model.cell, model.loss_fn)(
      ...     p, prob.h0, xs, ys)[0])(p)
      >>> bool(jnp.allclose(g["cell"]["W"], ref["cell"]["W"], atol=1e-6))
      True

      A window cut at step 2 with losses at steps 2–4 needs 3 reverse steps:

      >>> w = jnp.array([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
      >>> m = jnp.array([0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
      >>> a, b = grad(w, m), estimators.gradient_fn(prob, span=3)(w, m)
      >>> bool(jnp.allclose(a["cell"]["W"], b["cell"]["W"], atol=1e-6))
      True
    """
    lengths = problem.lengths if lengths is None else lengths
    resets = problem.resets if resets is None else resets
    shared = _SHARED.get()
    if adjoint is None and shared is not None:
        adjoint = shared.adjoint
    adjoint = _adjoint.resolve(adjoint)
    if adjoint != _adjoint.ReverseScan():
        return _strategy_grad(problem, lengths, resets, adjoint)
    for entry in shared.entries if shared else ():
        if entry.serves(problem, lengths, resets):
            grad = entry.grad
            return grad if span is None else entry.windowed(_check_span(span, problem))
    T = check_problem(problem)
    if span is not None:
        span = _check_span(span, problem)
    cell, loss_fn, params, h0, xs, ys = problem[:6]
    _, mask, resets = sequences.check_args(cell, params, h0, xs, None, lengths, resets)
    if mask is not None:
        sequences.check_ys_batched(ys, xs.shape[0], tuple(xs.shape[1:-1]))
    _, outs, residuals = _scan.forward(
        cell, params, h0, xs, lengths=mask, resets=resets
    )

    def step_losses(p, o, ys=ys, mask=mask):  # [T] or [T, *batch] (masked)
        if mask is None:
            return per_step_losses(loss_fn, p, o, ys)
        ls = per_sequence_losses(loss_fn, p, o, ys, mask.ndim - 1)
        return jnp.where(mask, ls, jnp.zeros((), ls.dtype))

    def loss_weights(m, mask=mask):  # m[T] as the loss vector's cotangent
        m = m.astype(xs.dtype)
        if mask is None:
            return m
        return jnp.broadcast_to(sequences.bcast(m, mask), mask.shape)

    # ∂(Σ_t m_t ℓ_t) = vjp of the loss vector with cotangent m: linear in m.
    _, loss_vjp = jax.vjp(step_losses, params, outs)
    dh_T = tree_map(jnp.zeros_like, h0)

    def grad(w, m):
        dp_loss, douts = loss_vjp(loss_weights(m))
        dp_cell, *_ = _scan.backward(
            cell, params, residuals, w.astype(xs.dtype), dh_T, douts
        )
        return tree_map(jnp.add, dp_cell, dp_loss)

    def windowed(L: int):
        def grad_span(w, m):  # grad(w, m) over the L steps from the window's start
            if w.shape != (T,) or m.shape != (T,):
                raise ValueError(
                    f"span: w and m must be one window [T] = [{T}], got "
                    f"{tuple(w.shape)} and {tuple(m.shape)}."
                )
            t = jnp.arange(T)
            first = jnp.argmax(m != 0)  # first loss (0 when there is none)
            a = jnp.max(jnp.where((w == 0) & (t >= 1) & (t <= first), t, 0))
            a = jnp.minimum(a, T - L)  # the last cut at or before it, fitted
            sl = lambda x: jax.lax.dynamic_slice_in_dim(x, a, L, 0)  # noqa: E731
            at = lambda x: None if x is None else tree_map(sl, x)  # noqa: E731
            h_a = tree_map(  # the state entering step a
                lambda x0, xs_: jnp.where(a == 0, x0, xs_[jnp.maximum(a - 1, 0)]),
                h0,
                residuals.hs,
            )
            r = residuals._replace(
                h0=h_a, xs=sl(xs), hs=at(residuals.hs), res=at(residuals.res),
                mask=at(mask), resets=at(residuals.resets),
            )  # fmt: skip
            losses_a = functools.partial(step_losses, ys=at(ys), mask=at(mask))
            _, vjp_a = jax.vjp(losses_a, params, at(outs))
            dp_loss, douts = vjp_a(loss_weights(sl(m), at(mask)))
            dp_cell, *_ = _scan.backward(
                cell, params, r, sl(w.astype(xs.dtype)), dh_T, douts
            )
            return tree_map(jnp.add, dp_cell, dp_loss)

        return grad if L == T else grad_span

    if shared is not None:
        shared.entries.append(_Shared(problem, lengths, resets, grad, windowed))
    return grad if span is None else windowed(span)


def _strategy_grad(problem: Problem, lengths, resets, adjoint):
    """``grad(w, m)`` = ∇θ Σ_t m_t ℓ_t with link weights ``w``, through the
    strategy's own loss (:meth:`jbptt._src.adjoint.Adjoint.loss`)."""
    check_problem(problem)
    cell, loss_fn, params, h0, xs, ys = problem[:6]
    _, mask, resets = sequences.check_args(cell, params, h0, xs, None, lengths, resets)
    if mask is not None:
        sequences.check_ys_batched(ys, xs.shape[0], tuple(xs.shape[1:-1]))
    h_reset = None if resets is None else h0

    def weighted(p, out, y_m):  # m_t ℓ_t: the window's losses only
        y, m_t = y_m
        return m_t * loss_fn(p, out, y)

    def grad(w, m):
        m = m.astype(xs.dtype)
        if mask is not None:  # per sequence: one weight per (t, b)
            m = jnp.broadcast_to(sequences.bcast(m, mask), mask.shape)

        def L(p):
            w_ = w.astype(xs.dtype)
            args = (cell, weighted, p, h0, xs, (ys, m), w_, mask, resets, h_reset)
            return adjoint.loss(*args)[0]

        return jax.grad(L)(params)

    return grad


def _check_span(span, problem: Problem) -> int:
    T = problem.xs.shape[0]
    span = validation.positive_int("span", span)
    if span > T:
        raise ValueError(f"span must be ≤ T = {T} (len(xs)), got {span}.")
    return span


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


def plain(value):
    """A hyperparameter as the user meant it: a NumPy or JAX scalar becomes
    the Python number of its shortest repr in its own dtype (float32 ``0.1``
    stays ``0.1``, not ``0.10000000149011612``); anything else is returned
    as given (Python numbers, arrays ``[T]``, schedules).

    Examples:
      >>> import numpy as np
      >>> from jbptt._src.protocol import plain
      >>> plain(np.float32(0.1)), plain(0.25), plain(np.int32(3))
      (0.1, 0.25, 3)
    """
    if isinstance(value, bool | int | float | str) or callable(value):
        return value
    try:
        a = np.asarray(value)
    except Exception:  # noqa: BLE001 -- traced or exotic: keep as given
        return value
    if a.ndim != 0:
        return value
    if np.issubdtype(a.dtype, np.floating):
        return float(np.format_float_scientific(a[()], unique=True, trim="-"))
    if np.issubdtype(a.dtype, np.integer):
        return int(a)
    return value


def label(value) -> str:
    """How a hyperparameter reads in an estimator's name: numbers as the
    user wrote them (:func:`plain`), a schedule by its ``__name__``."""
    if callable(value):
        return getattr(value, "__name__", type(value).__name__)
    return str(plain(value))


def describe(name: str, hparams: dict) -> str:
    """A readable repr of an estimator: its name if it shows its
    hyperparameters, else ``name(k=v, ...)``."""
    if "(" in name or not hparams:
        return name
    return f"{name}({', '.join(f'{k}={label(v)}' for k, v in hparams.items())})"
