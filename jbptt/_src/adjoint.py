"""How the reverse pass runs: the ``adjoint=`` strategies and their one dispatch.

``jbptt.value_and_grad``, ``jbptt.rnn_scan`` and ``jbptt.grads_for_weights``
take ``adjoint=``, a strategy object (diffrax's shape), and hand it checked
arguments; the strategy alone decides how the forward is stored and the
reverse pass is run:

* :class:`ReverseScan` (the default): jbptt's hand-derived reverse scan,
  optionally in checkpointed segments (``checkpoint="sqrt"`` or an int);
* :class:`Budget`: at most ``max_states`` stored states, the fewest
  recomputed steps (:mod:`jbptt._src.checkpointing`);
* :class:`DiagonalScan`: for diagonal cells (``cell.diagonal``), the
  recurrence and its adjoint elementwise by a chosen scan (sequential,
  associative or blocked); ``ReverseScan()`` runs it with the scan measured
  fastest on the backend (:mod:`jbptt._src.diagonal_scan`);
* :class:`Autodiff`: JAX's own autodiff through the plain forward (the
  reference; forward mode works).

Values and gradients are the same for every strategy (the tests hold each
to :class:`Autodiff` at float64). A new strategy is one subclass of
:class:`Adjoint` (see its contract); nothing else needs editing.

The deprecated keywords ``checkpoint=`` and ``mode=`` are translated here, in
:func:`resolve`, with a ``DeprecationWarning`` naming the new spelling.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jbptt._src import (
    checkpointing,
    diagonal_scan,
    diagonal_solve,
    diagonal_stack,
    revolve,
    scan,
)
from jbptt._src.losses import total_loss

tree_map = jax.tree_util.tree_map


class Adjoint:
    """Base class of the ``adjoint=`` strategies: how the reverse pass runs.

    A new strategy (say a parallel scan for diagonal recurrences) plugs in
    by subclassing this class, in one module, and implementing:

    * ``scan(cell, params, h0, xs, w, mask, resets, h_reset, steps) ->
      (h_T, outs)``: the forward, whose ``jax.grad`` is this strategy's
      reverse pass with link weights ``w``. Arguments arrive checked: ``xs``
      floating ``[T, *batch, I]`` in the compute dtype (``h0`` in it too),
      ``w`` ``[T]`` or ``[T, *batch]`` in that dtype, ``mask`` bool
      ``[T, *batch]`` or ``None``, ``resets`` bool ``[T, *batch]`` or
      ``None``, ``h_reset`` the state a reset restarts from (``None``
      without resets), ``steps`` ``None`` or an int32 scalar (only when
      :attr:`takes_steps`). Padded steps keep the state and output zeros.

    and, where the defaults do not fit:

    * :meth:`check`: validate the strategy's own fields (called once, when
      ``value_and_grad``/``rnn_scan`` is given it); raise ``ValueError`` or
      ``TypeError`` naming the field.
    * :meth:`loss`: ``(L, h_T)`` of ``value_and_grad``; the default sums the
      losses of :meth:`scan`'s outputs. Override it to evaluate the loss
      inside segments, so that all T outputs are never stored.
    * :meth:`grads_for_weights`: gradients for K link-weight vectors; the
      default vmaps ``jax.value_and_grad`` of :meth:`loss` over them.
    * :attr:`takes_steps` (``rnn_scan(steps=)`` supported) and
      :attr:`takes_compute_dtype` (``value_and_grad(compute_dtype=)``).

    Values and gradients must equal :class:`Autodiff`'s (add the strategy
    to the core tests' parametrisations).
    """

    takes_steps = False
    takes_compute_dtype = True

    def check(self):
        """Validate the strategy's fields; returns the strategy."""
        return self

    def scan(self, cell, params, h0, xs, w, mask, resets, h_reset, steps=None):
        raise NotImplementedError(f"{type(self).__name__}.scan")

    def loss(self, cell, loss_fn, params, h0, xs, ys, w, mask, resets, h_reset):
        """``(L, h_T)``: the total loss of :meth:`scan`'s outputs."""
        h_T, outs = self.scan(cell, params, h0, xs, w, mask, resets, h_reset)
        return total_loss(loss_fn, params, outs, ys, mask), h_T

    def grads_for_weights(
        self, cell, loss_fn, params, h0, xs, ys, ws, mask, resets, h_reset
    ):
        """``((L, h_T), grads)`` for each row of ``ws`` ``[K, T]``, the
        gradients stacked over K: a vmap of ``jax.value_and_grad(loss)``."""

        def one(w):
            def f(p):
                return self.loss(cell, loss_fn, p, h0, xs, ys, w, mask, resets, h_reset)

            return jax.value_and_grad(f, has_aux=True)(params)

        (L, h_T), grads = jax.vmap(one)(ws)
        return (L[0], tree_map(lambda a: a[0], h_T)), grads


@dataclasses.dataclass(frozen=True)
class _Segmented(Adjoint):
    """A per-step scan, run whole or in checkpointed segments."""

    checkpoint: str | int | None = None

    @staticmethod
    def step_scan(cell, params, h0, xs, w, mask, resets, h_reset):
        raise NotImplementedError

    def check(self):
        scan.segment_length(2, self.checkpoint)  # bad values fail here
        return self

    def scan(self, cell, params, h0, xs, w, mask, resets, h_reset, steps=None):
        T = xs.shape[0]
        S = scan.segment_length(T, self.checkpoint)
        if S is None:
            return self.step_scan(cell, params, h0, xs, w, mask, resets, h_reset)

        def segment(h, inp):
            xs_s, w_s, m_s, r_s = inp
            return self.step_scan(cell, params, h, xs_s, w_s, m_s, r_s, h_reset)

        h_T, (head, body) = scan.scan_segments(segment, h0, (xs, w, mask, resets), T, S)
        outs = tree_map(lambda a: a.reshape(-1, *a.shape[2:]), body)
        if head is not None:
            outs = tree_map(lambda a, b: jnp.concatenate([a, b]), head, outs)
        return h_T, outs

    def loss(self, cell, loss_fn, params, h0, xs, ys, w, mask, resets, h_reset):
        S = scan.segment_length(xs.shape[0], self.checkpoint)
        if S is None:
            return super().loss(
                cell, loss_fn, params, h0, xs, ys, w, mask, resets, h_reset
            )

        # Checkpointed: each segment computes its own losses, so neither the
        # states nor the outputs of all T steps are ever stored at once.
        # Resets restart from the sequence's h0, which every segment closes over.
        def segment(h, inp):
            xs_s, ys_s, w_s, m_s, r_s = inp
            h, outs = self.step_scan(cell, params, h, xs_s, w_s, m_s, r_s, h_reset)
            return h, total_loss(loss_fn, params, outs, ys_s, m_s)

        T = xs.shape[0]
        h_T, (head, losses) = scan.scan_segments(
            segment, h0, (xs, ys, w, mask, resets), T, S
        )
        L = jnp.sum(losses)
        return (L if head is None else head + L), h_T


@dataclasses.dataclass(frozen=True)
class ReverseScan(_Segmented):
    """jbptt's hand-derived reverse scan with link weights (the default).

    Attributes:
      checkpoint: ``None`` (default; the fastest measured, docs/design.md
        "Segmenting by default") stores every step's state for the
        backward; ``"sqrt"`` runs the sequence in ⌈√T⌉-step segments and
        stores only the segment-start states, recomputing each segment's
        forward during the backward (O(√T) stored states for about one
        extra forward); an int sets the segment length. Values and
        gradients are unchanged.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> p = model.init(jax.random.key(0), 2, 3)
      >>> h0, xs, ys = model.cell.initial_state(p), jnp.ones((9, 2)), jnp.ones((9, 1))
      >>> seg = jbptt.ReverseScan(checkpoint="sqrt")
      >>> (L, _), g = jbptt.value_and_grad(model.cell, model.loss_fn, adjoint=seg)(
      ...     p, h0, xs, ys)
      >>> (L0, _), g0 = jbptt.value_and_grad(model.cell, model.loss_fn)(p, h0, xs, ys)
      >>> bool(jnp.allclose(L, L0)), bool(jnp.allclose(g["cell"]["W"], g0["cell"]["W"]))
      (True, True)
    """

    step_scan = staticmethod(scan.scan_or_explain)

    @property
    def takes_steps(self) -> bool:
        return self.checkpoint is None

    def scan(self, cell, params, h0, xs, w, mask, resets, h_reset, steps=None):
        if steps is not None:  # checked by check_steps: no checkpoint
            return scan.scan_or_explain(
                cell, params, h0, xs, w, mask, resets, h_reset, steps=steps
            )
        return super().scan(cell, params, h0, xs, w, mask, resets, h_reset)

    def grads_for_weights(
        self, cell, loss_fn, params, h0, xs, ys, ws, mask, resets, h_reset
    ):
        if self.checkpoint is not None:
            return super().grads_for_weights(
                cell, loss_fn, params, h0, xs, ys, ws, mask, resets, h_reset
            )
        path = scan.cell_path(cell)
        args = (cell, loss_fn, params, h0, xs, ys, ws, mask, resets, h_reset)
        if path.backward is diagonal_scan.backward:  # a diagonal cell
            forward, many = diagonal_sweep(diagonal_solve.AUTO_HOW)
            return shared_forward_grads(forward, None, args, many=many)
        return shared_forward_grads(path.forward, scan.backward_unchecked, args)


def diagonal_sweep(how):
    """``(forward, backward_many)`` of a diagonal cell for K link-weight
    vectors at once: the forward's chunks hold
    ``diagonal_scan.SWEEP_CHUNK_ELEMENTS`` state numbers, as the K adjoints
    of a chunk run side by side."""

    def forward(cell, params, h0, xs, *args):
        chunk_bytes = diagonal_scan.SWEEP_CHUNK_ELEMENTS * jnp.dtype(h0.dtype).itemsize
        return diagonal_scan.forward(
            cell, params, h0, xs, *args, how=how, chunk_bytes=chunk_bytes
        )

    return forward, functools.partial(diagonal_scan.backward_many, how=how)


def shared_forward_grads(forward, backward, args, many=None):
    """``((L, h_T), grads[K])`` for the rows of ``ws``: one ``forward``
    ``(cell, params, h0, xs, mask, resets, h_reset) -> (h_T, outs, saved)``,
    one loss vjp, then K reverse passes ``backward(cell, params, saved, w,
    dh_T, douts)`` batched by ``jax.vmap`` (what does not depend on ``w``
    running once), or all K by ``many(cell, params, saved, ws, dh_T,
    douts)``, the params' gradients stacked over K (for a reverse pass with
    its own way over K, e.g. :func:`jbptt._src.diagonal_scan.backward_many`).

    ``args`` is ``(cell, loss_fn, params, h0, xs, ys, ws, mask, resets,
    h_reset)``."""
    cell, loss_fn, params, h0, xs, ys, ws, mask, resets, h_reset = args
    h_T, outs, saved = forward(cell, params, h0, xs, mask, resets, h_reset)
    L, loss_vjp = jax.vjp(
        lambda p, o: total_loss(loss_fn, p, o, ys, mask), params, outs
    )
    dparams_loss, douts = loss_vjp(jnp.ones_like(L))
    dh_T = tree_map(jnp.zeros_like, h_T)

    if many is not None:
        dparams = many(cell, params, saved, ws, dh_T, douts)
        return (L, h_T), tree_map(jnp.add, dparams, dparams_loss)

    def one(w):
        dparams, *_ = backward(cell, params, saved, w, dh_T, douts)
        return tree_map(jnp.add, dparams, dparams_loss)

    return (L, h_T), jax.vmap(one)(ws)


@dataclasses.dataclass(frozen=True)
class DiagonalScan(Adjoint):
    """The reverse pass of a diagonal cell, elementwise, by a chosen scan.

    For cells with ``cell.diagonal`` (:func:`jbptt.cells.diagonal`,
    ``lru``, ``min_gru``, ``min_lstm``), and a :func:`jbptt.cells.stack` of
    them (layer by layer, each layer this way): the gates on all steps, the
    recurrence ``h_t = a_t ⊙ h_{t-1} + b_t`` as one scan, and in reverse the
    same elementwise recurrence on the cotangents (scaled by the link
    weights), then one vjp of the gates over all steps (docs/design.md,
    "Diagonal recurrences"). The default ``jbptt.ReverseScan()`` runs this
    path with ``method="auto"`` on diagonal cells already; this strategy
    picks the scan. Values and gradients are those of every other strategy.

    Attributes:
      method: ``"auto"`` (default: the fastest measured on the backend,
        ``jax.default_backend()``: ``"sequential"`` on CPU, ``"associative"``
        on GPU/TPU), ``"sequential"`` (a fused ``lax.scan``),
        ``"associative"`` (``jax.lax.associative_scan``, depth O(log T)) or
        ``"blocked"`` (sequential in chunks run side by side, then the
        chunks' carries: about 2C + T/C sequential steps).
      chunk: the chunk length C in steps. For ``"blocked"``, the chunks run
        side by side (``None``: ⌈√(T/2)⌉); for ``"sequential"``, the chunks
        whose gates and states the reverse pass recomputes, keeping only the
        state entering each (``None``: about 512 KiB of states per chunk, and
        one chunk for a sequence of at most 2^18 state numbers): a smaller C
        keeps less, a larger one recomputes in fewer, larger pieces.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> cell = jbptt.cells.min_gru()
      >>> p = cell.init(jax.random.key(0), 2, 3)
      >>> h0, xs, ys = cell.initial_state(p), jnp.ones((9, 2)), jnp.ones((9, 3))
      >>> mse = lambda p, o, y: jnp.sum((o - y) ** 2)
      >>> par = jbptt.DiagonalScan(method="associative")
      >>> (L, _), g = jbptt.value_and_grad(cell, mse, adjoint=par)(p, h0, xs, ys)
      >>> (L0, _), g0 = jbptt.value_and_grad(cell, mse)(p, h0, xs, ys)
      >>> bool(jnp.allclose(L, L0)), bool(jnp.allclose(g["W_z"], g0["W_z"]))
      (True, True)
    """

    method: str = "auto"
    chunk: int | None = None

    takes_steps = True

    def check(self):
        diagonal_solve.check_method(self.method, self.chunk)
        return self

    def scan(self, cell, params, h0, xs, w, mask, resets, h_reset, steps=None):
        diagonal_scan.check_cell(cell)
        how = (self.method, self.chunk)
        run = diagonal_scan if cell.diagonal is not None else diagonal_stack
        args = (cell, how, params, h0, xs, w, mask, resets, h_reset, steps)
        return scan.explained(run.scan, *args)

    def grads_for_weights(
        self, cell, loss_fn, params, h0, xs, ys, ws, mask, resets, h_reset
    ):
        diagonal_scan.check_cell(cell)
        how = (self.method, self.chunk)
        args = (cell, loss_fn, params, h0, xs, ys, ws, mask, resets, h_reset)
        if cell.diagonal is None:  # a stack: its K reverse passes vmapped
            forward = functools.partial(diagonal_stack.forward, how=how)
            backward = functools.partial(diagonal_stack.backward, how=how)
            return shared_forward_grads(forward, backward, args)
        # one cell: each chunk recomputed once for all K
        forward, many = diagonal_sweep(how)
        return shared_forward_grads(forward, None, args, many=many)


@dataclasses.dataclass(frozen=True)
class Autodiff(_Segmented):
    """JAX's autodiff through the plain forward (a ``lax.scan`` of
    ``cell.step``): the reference every other strategy is tested against.

    Slower than :class:`ReverseScan`, but ``jax.jvp``/``jax.jacfwd`` (and so
    forward-over-reverse, e.g. Hessian-vector products) work through it.
    Link weights act through :func:`jbptt._src.scan.link` on the state
    entering each step. ``checkpoint`` segments the plain scan as it does
    :class:`ReverseScan`'s.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> cell = jbptt.cells.gru()
      >>> p = cell.init(jax.random.key(0), 2, 3)
      >>> h0, xs = cell.initial_state(p), jnp.ones((4, 2))
      >>> f = lambda p: jbptt.rnn_scan(cell, p, h0, xs, adjoint=jbptt.Autodiff())[0]
      >>> t = jax.tree_util.tree_map(jnp.ones_like, p)
      >>> jax.jvp(f, (p,), (t,))[1].shape
      (3,)
    """

    step_scan = staticmethod(scan.reference_scan)


@dataclasses.dataclass(frozen=True)
class Budget(Adjoint):
    """Store at most ``max_states`` states and recompute the fewest steps.

    Gruslys et al. 2016's dynamic program, planned by its closed form in
    binomial coefficients (:mod:`jbptt._src.revolve`: milliseconds at
    T = 100 000), run as loops so that XLA's memory falls with M
    (:mod:`jbptt._src.checkpointing`). Takes ``lengths`` and ``resets``, not
    ``compute_dtype`` or ``rnn_scan(steps=)``. Values and gradients are
    unchanged.

    Attributes:
      max_states: the number of slots M ≥ 2 (states or per-step residuals,
        the initial state included).
      unit: steps per schedule step (default 1). The schedule is optimal over
        blocks of ``unit`` steps; a leaf keeps up to M blocks of residuals,
        so memory is about M·unit steps' worth. Values above 1 keep the
        action list (at most 2n actions for n = ⌈T / unit⌉ blocks) small for
        very long sequences.

    Examples:
      >>> import jbptt
      >>> from jbptt._src.revolve import recomputations
      >>> b = jbptt.Budget(max_states=4)
      >>> recomputations(10, b.max_states)
      9
    """

    max_states: int
    unit: int = 1

    takes_compute_dtype = False

    def check(self):
        return revolve.check_budget(self)

    def scan(self, cell, params, h0, xs, w, mask, resets, h_reset, steps=None):
        run = checkpointing.budget_scan(cell, self)
        return run(params, h0, xs, w, mask, resets, h_reset)

    def loss(self, cell, loss_fn, params, h0, xs, ys, w, mask, resets, h_reset):
        run = checkpointing.budget_loss(cell, loss_fn, self)
        return run(params, h0, xs, ys, w, mask, resets, h_reset)


# ------------------------------------------------------------ the dispatch ---

_MODES = ("scan", "autodiff")
_EXPECTED = (
    "jbptt.ReverseScan(checkpoint=None | 'sqrt' | int), "
    "jbptt.Budget(max_states=M), jbptt.DiagonalScan(method=...) or jbptt.Autodiff()"
)


def resolve(adjoint=None, checkpoint=None, mode=None) -> Adjoint:
    """The checked strategy for ``adjoint=`` (``None``: :class:`ReverseScan`),
    or for the deprecated ``checkpoint=``/``mode=`` keywords.

    The old keywords map to ``ReverseScan(checkpoint)``, ``Autodiff(checkpoint)``
    (``mode="autodiff"``) or the given :class:`Budget`, with a
    ``DeprecationWarning`` naming that spelling (after the values are checked,
    so a bad value raises its own error).

    Examples:
      >>> from jbptt._src.adjoint import resolve
      >>> resolve(None)
      ReverseScan(checkpoint=None)
    """
    if checkpoint is None and mode is None:
        if adjoint is None:
            return ReverseScan()
        if not isinstance(adjoint, Adjoint):
            raise TypeError(
                f"adjoint must be a reverse-pass strategy: {_EXPECTED}; "
                f"got {adjoint!r}."
            )
        return adjoint.check()
    if adjoint is not None:
        raise ValueError(
            "adjoint= replaces checkpoint= and mode=: pass adjoint= alone "
            f"({_EXPECTED})."
        )
    if mode is not None and mode not in _MODES:
        raise ValueError(f"Unknown mode {mode!r}. It needs to be one of {_MODES}.")
    if isinstance(checkpoint, Budget):
        if mode == "autodiff":
            raise ValueError(
                "checkpoint=Budget(...) runs jbptt's reverse scan; drop "
                "mode='autodiff' (or the budget)."
            )
        new = checkpoint
    elif mode == "autodiff":
        new = Autodiff(checkpoint)
    else:
        new = ReverseScan(checkpoint)
    new.check()
    old = ", ".join(
        f"{k}={v!r}" for k, v in (("checkpoint", checkpoint), ("mode", mode)) if v
    )
    warnings.warn(
        f"{old} is deprecated: pass adjoint=jbptt.{new!r} instead.",
        DeprecationWarning,
        stacklevel=3,
    )
    return new


def check_steps(steps, T: int, adjoint: Adjoint):
    """``rnn_scan(steps=)``: an int scalar in [1, T] (checked when concrete),
    for a strategy that takes it."""
    if not adjoint.takes_steps:
        raise ValueError(
            "steps= runs jbptt's own forward and reverse loops over the leading "
            f"steps: it needs adjoint=jbptt.ReverseScan() (no checkpoint), got "
            f"adjoint={adjoint!r}."
        )
    if isinstance(steps, int | np.integer) and not isinstance(steps, bool):
        if not 1 <= steps <= T:
            raise ValueError(f"steps must be in [1, T = {T}], got {steps}.")
        return jnp.asarray(steps, jnp.int32)
    dtype = getattr(steps, "dtype", None)
    if dtype is None or np.shape(steps) != () or not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(
            f"steps must be an int scalar (the number of leading steps to run), "
            f"got {steps!r}."
        )
    return steps
