"""The public gradient entry points: ``rnn_scan``, ``loss``, ``value_and_grad``
and ``grads_for_weights``.

Each checks its arguments once and hands them to the ``adjoint=`` strategy
(:mod:`jbptt._src.adjoint`), which decides how the reverse pass runs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jbptt._src import adjoint as adjoints
from jbptt._src import dtypes, sequences, validation
from jbptt._src.cell import Cell, token_vocab
from jbptt._src.losses import LossFn, total_loss
from jbptt._src.scan import reference_scan


def _prepare(cell, params, h0, xs, ys, w, lengths, resets, compute_dtype,
             reset_state=None):  # fmt: skip
    """Checks and the compute-dtype casts shared by :func:`loss` and
    :func:`value_and_grad`; returns ``(h0, xs, w, mask, resets, h_reset)``."""
    h0, xs, w, mask, resets, h_reset = _scan_args(
        cell, params, h0, xs, w, lengths, resets, reset_state, compute_dtype
    )
    validation.check_ys(ys, xs.shape[0])
    if mask is not None:
        sequences.check_ys_batched(ys, xs.shape[0], tuple(xs.shape[1:-1]))
    return h0, xs, w, mask, resets, h_reset


def _scan_args(cell, params, h0, xs, w, lengths, resets, reset_state, compute_dtype):
    """The checked arguments of a scan in the compute dtype (the one place
    the entry points cast, :func:`jbptt._src.dtypes.compute_dtype`):
    ``compute_dtype=`` casts ``xs``, ``h0`` and ``reset_state`` before the
    checks; without it they are checked in ``xs``'s dtype (``h0`` shares
    it) and cast to its promotion with the params' dtype. Returns ``(h0,
    xs, w, mask, resets, h_reset)``."""
    xs = sequences.as_inputs(cell, params, xs)  # integer token ids -> float ids
    if compute_dtype is not None:
        validation.check_xs(xs)
        _check_token_ids_fit(cell, compute_dtype)
        h0, xs, reset_state = dtypes.cast(
            (h0, xs, reset_state), jnp.dtype(compute_dtype)
        )
    w, mask, resets = sequences.check_args(cell, params, h0, xs, w, lengths, resets)
    h_reset = sequences.reset_target(cell, params, h0, xs, resets, reset_state)
    dtype = dtypes.compute_dtype(params, xs, compute_dtype)
    h0, xs, w, h_reset = dtypes.cast((h0, xs, w, h_reset), dtype)
    return h0, xs, w, mask, resets, h_reset


def _check_token_ids_fit(cell, compute_dtype):
    """A token model's ids travel as floats of the compute dtype: refuse a
    vocabulary that dtype cannot hold exactly (bfloat16: ids below 2^8)."""
    V = token_vocab(cell)
    exact = 2 ** (jnp.finfo(compute_dtype).nmant + 1)
    if V is not None and V > exact:
        raise ValueError(
            f"compute_dtype={jnp.dtype(compute_dtype).name} holds token ids "
            f"exactly only up to {exact}, but the model's vocab_size is {V}: "
            "ids would be rounded to other tokens. Use compute_dtype=None (or "
            "float32) for this token model."
        )


def _check_compute_dtype(compute_dtype):
    if compute_dtype is not None and not jnp.issubdtype(compute_dtype, jnp.floating):
        raise TypeError(
            f"compute_dtype must be None or a floating dtype (e.g. jnp.bfloat16), "
            f"got {compute_dtype!r}."
        )


def rnn_scan(
    cell: Cell,
    params,
    h0,
    xs,
    w=None,
    *,
    lengths=None,
    resets=None,
    reset_state=None,
    adjoint: adjoints.Adjoint | None = None,
    steps=None,
    checkpoint=None,
    mode: str | None = None,
    compute_dtype=None,
):
    """Run ``cell`` over ``xs``; its gradient is jbptt's reverse scan with ``w``.

    Differentiating any function of the outputs with ``jax.grad`` runs the
    explicit reverse scan (docs/design.md) with link weights ``w``: the forward
    values do not depend on ``w``, only the backward does.

    Args:
      cell: a :class:`jbptt.cells.Cell`.
      params: the cell's params (pytree of arrays).
      h0: initial state, batch shape matching ``xs``.
      xs: inputs ``[T, I]`` or ``[T, B, I]`` (time-major), in the dtype of
        ``h0``. The recurrence runs in JAX's promotion of it and the params'
        floating dtype (float32 params with float64 ``xs``: float64), unless
        ``compute_dtype`` is given; params keep their own dtype, and their
        gradient comes back in it (and ``xs``'s and ``h0``'s in theirs).
      w: link weights ``[T]`` (default: ones, i.e. full BPTT), or
        ``[T, *batch]`` per sequence. ``w[t]`` scales the gradient from step t
        into h_{t-1}; ``w[0]`` the one into ``h0``. ``w`` is a constant of the
        backward: its own cotangent is zero.
      lengths: ``None``, lengths ``[*batch]`` (ints in ``[1, T]``) or a bool
        mask ``[T, *batch]`` (true on real steps). Padded steps keep the state
        unchanged and output zeros (no gradient flows through them), so
        ``h_T`` is each sequence's state after its last real step.
      resets: ``None`` or bool ``[T, *batch]``, true where a new episode
        starts: the state entering that step is ``h0`` and the link into the
        previous step is cut (its cotangent goes to ``h0``).
      reset_state: the state a reset restarts from, shaped like ``h0``
        (default ``h0`` itself), e.g. the zero state when ``h0`` is a state
        carried over from an earlier segment of the stream.
      adjoint: how the reverse pass runs (see :func:`jbptt.value_and_grad`):
        ``jbptt.ReverseScan()`` (default) keeps every step's state for the
        backward; ``jbptt.ReverseScan(checkpoint="sqrt")`` keeps only the
        states at the starts of about √T segments of about √T steps and
        recomputes each segment's forward during the backward (O(√T) stored
        states for ~1 extra forward; an int sets the segment length);
        ``jbptt.Budget(max_states=M)`` stores at most M states and
        recomputes with the fewest forward steps; ``jbptt.Autodiff()`` runs
        the same forward as a plain ``lax.scan`` that JAX differentiates
        itself, so ``jax.jvp``/``jax.jacfwd`` work (and link weights still
        act, through :func:`jbptt._src.scan.link`). Values and gradients are
        unchanged.
      steps: ``None`` (all T steps) or how many leading steps to run, an int
        scalar that may be traced (e.g. the real length of a padded
        bucket): the forward and reverse loops stop there, so the work is
        that of ``steps`` steps in a buffer of T. ``h_T`` is the state after
        step ``steps − 1``, later outputs are zero and later cotangents are
        ignored. Values and gradients equal those of ``xs[:steps]``
        (tested). Only with the default ``adjoint=jbptt.ReverseScan()``.
      checkpoint, mode: deprecated spellings of ``adjoint=`` (see
        :func:`jbptt.value_and_grad`).
      compute_dtype: ``None`` or a floating dtype to cast ``xs``, ``h0`` and
        ``reset_state`` to and run the recurrence in (mixed precision, e.g.
        ``jnp.bfloat16`` with float32 params; see
        :func:`jbptt.value_and_grad`).

    Returns:
      ``(h_T, outs)`` with ``outs`` of shape ``[T, ..., H]``, in the compute
      dtype.

    Values are not checked (this runs under ``jit``): call
    :func:`jbptt.checks.check_finite` (and :func:`jbptt.checks.check_tokens`
    for token ids) on concrete data first; NaN inputs give NaN outputs.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt import cells, truncation
      >>> cell = cells.elman("tanh")
      >>> p = cell.init(jax.random.key(0), 2, 3)
      >>> xs = jnp.ones((6, 2))
      >>> def f(p, w):
      ...     h_T, outs = jbptt.rnn_scan(cell, p, cell.initial_state(p), xs, w)
      ...     return jnp.sum(outs ** 2)
      >>> g = jax.grad(f)(p, truncation.tbptt(6, 2))  # TBPTT(2) gradient
      >>> g["W"].shape
      (3, 3)

      The first 4 steps of a padded buffer, as ``xs[:4]`` would run them:

      >>> h0 = cell.initial_state(p)
      >>> h4, outs = jbptt.rnn_scan(cell, p, h0, xs, steps=4)
      >>> ref, _ = jbptt.rnn_scan(cell, p, h0, xs[:4])
      >>> bool(jnp.allclose(h4, ref)), outs[4:].tolist()
      (True, [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    """
    strategy = adjoints.resolve(adjoint, checkpoint, mode)
    _check_compute_dtype(compute_dtype)
    h0, xs, w, mask, resets, h_reset = _scan_args(
        cell, params, h0, xs, w, lengths, resets, reset_state, compute_dtype
    )
    if steps is not None:
        steps = adjoints.check_steps(steps, xs.shape[0], strategy)
    return strategy.scan(cell, params, h0, xs, w, mask, resets, h_reset, steps)


def loss(cell: Cell, loss_fn: LossFn, *, compute_dtype=None):
    """The forward ``(params, h0, xs, ys, w=None, *, lengths=None, resets=None)
    -> (L, h_T)`` by plain scan.

    This is the reference: ``jax.grad`` of it is ordinary autodiff through
    ``lax.scan`` (and ``jax.jvp`` works). Link weights, when given, are
    applied to the state entering each step as ``h + (w_t − 1)(h −
    stop_gradient(h))``, which leaves the forward unchanged and scales the
    backward by ``w_t`` exactly as :func:`value_and_grad` does.
    ``lengths``, ``resets`` and ``compute_dtype`` mean what they mean for
    :func:`value_and_grad`.

    Args:
      cell: a :class:`jbptt.cells.Cell`.
      loss_fn: per-step loss ``(params, out_t, y_t) -> scalar``; it reduces
        over the batch itself. Readout weights live inside ``params``.
      compute_dtype: ``None`` or a floating dtype for ``xs``, ``h0`` and the
        recurrence (see :func:`value_and_grad`).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> params = model.init(jax.random.key(0), 2, 4)
      >>> xs, ys = jnp.ones((5, 2)), jnp.zeros((5, 1))
      >>> forward = jbptt.loss(model.cell, model.loss_fn)
      >>> L, h_T = forward(params, model.cell.initial_state(params), xs, ys)
      >>> L.shape, h_T.shape
      ((), (4,))
    """
    _check_compute_dtype(compute_dtype)

    def forward(
        params, h0, xs, ys, w=None, *, lengths=None, resets=None, reset_state=None
    ):
        h0, xs, w, mask, resets, h_reset = _prepare(
            cell, params, h0, xs, ys, w, lengths, resets, compute_dtype, reset_state
        )
        h_T, outs = reference_scan(cell, params, h0, xs, w, mask, resets, h_reset)
        return total_loss(loss_fn, params, outs, ys, mask), h_T

    return forward


def value_and_grad(
    cell: Cell,
    loss_fn: LossFn,
    *,
    argnums=0,
    adjoint: adjoints.Adjoint | None = None,
    compute_dtype=None,
    checkpoint=None,
    mode: str | None = None,
):
    """``(params, h0, xs, ys, w=None, *, lengths=None, resets=None) -> ((L,
    h_T), grads)`` by the reverse scan.

    Same values and, for ``w = None`` (full BPTT), the same gradients as
    ``jax.value_and_grad(jbptt.loss(cell, loss_fn), argnums, has_aux=True)``,
    computed by jbptt's explicit reverse scan (:func:`jbptt.rnn_scan`). With
    link weights ``w`` it returns the estimator ĝ of docs/design.md: truncated
    (TBPTT), randomly truncated and reweighted (ARTBP), or anything else
    expressible as weights on the links between steps.

    Batches of real sequences (keyword arguments of the returned function):

    - ``lengths``: ints ``[*batch]`` in ``[1, T]``, or a bool mask
      ``[T, *batch]`` true on real steps. Padded steps add no loss and no
      gradient, and ``h_T`` is each sequence's own last state. The loss is
      then evaluated per sequence: ``loss_fn`` gets one sequence's step (no
      batch axes) and L = Σ_b Σ_{t real} ℓ(θ, out_{t,b}, y_{t,b}), so the
      gradient is the sum of the sequences' own gradients (divide by the
      number of real steps yourself for a mean).
    - ``resets``: bool ``[T, *batch]``, true where a new episode starts in a
      stream: the state restarts from ``h0`` and the link into the previous
      step is cut for that sequence, so a stream of concatenated episodes
      trains as separate episodes (``loss_fn`` keeps its batch reduction).
    - ``reset_state``: what a reset restarts from (default ``h0``), e.g. the
      zero state when ``h0`` is carried over from an earlier segment of the
      stream in online training. It is not differentiated.

    Mixed precision (``compute_dtype``, e.g. ``jnp.bfloat16``): params stay in
    their own dtype (say float32) and so does their gradient; ``xs`` and
    ``h0`` are cast to the compute dtype, in which the recurrence, its
    reverse scan and the link weights run; per-step weight cotangents are
    summed over all steps in the params' dtype (the weight-gradient GEMM
    after the reverse scan, or the generic path's accumulator), and the loss
    is evaluated in the params' dtype on the outputs cast up. ``rnn_scan``
    takes the same ``compute_dtype``. Without it the recurrence runs in
    JAX's promotion of the params' floating dtype and that of ``xs`` (which
    ``h0`` shares): float64 params with float32 ``xs`` run in float64, as do
    float32 params with float64 ``xs``.

    Args:
      cell: a :class:`jbptt.cells.Cell`.
      loss_fn: per-step loss ``(params, out_t, y_t) -> scalar``.
      argnums: which of ``(params, h0)`` to differentiate: ``0`` (default),
        ``1`` or ``(0, 1)``, as in ``jax.value_and_grad``.
      adjoint: how the reverse pass runs (:mod:`jbptt._src.adjoint`):
        ``None`` or ``jbptt.ReverseScan()`` (default; the fastest measured,
        docs/design.md "Segmenting by default") stores every step's state;
        ``jbptt.ReverseScan(checkpoint="sqrt")`` (or an int segment length)
        runs the sequence in segments of about √T steps, evaluating the loss
        inside each segment, and stores only the segment-start states:
        memory O(√T) states instead of O(T), for about one extra forward
        pass. ``jbptt.Budget(max_states=M)`` stores at most M states and
        recomputes the fewest steps (Gruslys et al. 2016's dynamic program,
        run as loops so that XLA's memory falls with M; takes ``lengths``
        and ``resets``, not ``compute_dtype``). ``jbptt.Autodiff()`` is
        ``jax.value_and_grad`` of the same forward by plain scan: slower, but
        ``jax.jvp`` of the returned function works, e.g. for Hessian-vector
        products. Values and gradients are the same for all.
      compute_dtype: ``None`` (compute in the promotion of the params' dtype
        and ``xs``'s) or a floating dtype to cast ``xs`` and ``h0`` to (see
        above).
      checkpoint: deprecated, use ``adjoint=jbptt.ReverseScan(checkpoint=...)``
        (or ``adjoint=jbptt.Budget(...)``).
      mode: deprecated: ``"autodiff"`` is ``adjoint=jbptt.Autodiff()``,
        ``"scan"`` is ``adjoint=jbptt.ReverseScan()``.

    Returns:
      A pure function; ``w`` is an ordinary (traceable, vmappable) argument.
      It does not check values (it runs under ``jit``): call
      :func:`jbptt.checks.check_finite` (and :func:`jbptt.checks.check_tokens`
      for token ids) on concrete data first; NaN data give a NaN loss and
      gradients. The trainer and the sweep check their data themselves.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt import truncation
      >>> model = jbptt.readout(jbptt.cells.lstm(), output_size=2)
      >>> params = model.init(jax.random.key(0), 3, 8)
      >>> xs, ys = jnp.ones((10, 4, 3)), jnp.zeros((10, 4, 2))
      >>> h0 = model.cell.initial_state(params, (4,))
      >>> grad_fn = jax.jit(jbptt.value_and_grad(model.cell, model.loss_fn))
      >>> (L, h_T), g = grad_fn(params, h0, xs, ys, truncation.tbptt(10, 5))
      >>> g["readout"]["V"].shape
      (2, 8)
      >>> lengths = jnp.array([10, 3, 7, 1])  # four sequences padded to T = 10
      >>> (L, h_T), g = grad_fn(params, h0, xs, ys, lengths=lengths)
    """
    if argnums not in (0, 1, (0, 1), (1, 0)):
        raise ValueError(
            f"argnums must be 0 (params), 1 (h0) or (0, 1), got {argnums!r}."
        )
    strategy = adjoints.resolve(adjoint, checkpoint, mode)
    _check_compute_dtype(compute_dtype)
    if compute_dtype is not None and not strategy.takes_compute_dtype:
        raise ValueError(
            f"adjoint={strategy!r} runs in the dtype of xs: drop compute_dtype, "
            "or use adjoint=jbptt.ReverseScan(checkpoint='sqrt')."
        )

    def objective(params, h0, xs, ys, w, lengths, resets, reset_state):
        h0_c, xs, w, mask, resets, h_reset = _prepare(
            cell, params, h0, xs, ys, w, lengths, resets, compute_dtype, reset_state
        )
        return strategy.loss(
            cell, loss_fn, params, h0_c, xs, ys, w, mask, resets, h_reset
        )

    vg = jax.value_and_grad(objective, argnums=argnums, has_aux=True)

    def grad_fn(
        params, h0, xs, ys, w=None, *, lengths=None, resets=None, reset_state=None
    ):
        return vg(params, h0, xs, ys, w, lengths, resets, reset_state)

    return grad_fn


def grads_for_weights(
    cell: Cell,
    loss_fn: LossFn,
    params,
    h0,
    xs,
    ys,
    ws,
    *,
    lengths=None,
    resets=None,
    adjoint: adjoints.Adjoint | None = None,
):
    """Gradients for K link-weight vectors from one shared forward pass.

    The forward values, the loss and the loss's own cotangents do not depend
    on ``w`` (only the reverse scan does), so with the default adjoint they
    are computed once; the K reverse scans run batched (``vmap`` over
    ``ws``), which also turns each step's ``[B, H] @ [H, G·H]`` product into
    a K-times larger one.

    Args:
      cell: a :class:`jbptt.cells.Cell`.
      loss_fn: per-step loss ``(params, out_t, y_t) -> scalar``.
      params, h0, xs, ys: as for :func:`value_and_grad`.
      ws: link weights ``[K, T]``, one row per estimator configuration.
      lengths, resets: as for :func:`value_and_grad`.
      adjoint: as for :func:`value_and_grad`; a strategy other than the
        default ``ReverseScan()`` runs one gradient per row (vmapped).

    Returns:
      ``((L, h_T), grads)``: the loss and final state (shared), and the
      params gradients stacked over K (each leaf ``[K, ...]``); row k equals
      ``value_and_grad(cell, loss_fn)(params, h0, xs, ys, ws[k])[1]``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt import truncation
      >>> model = jbptt.readout(jbptt.cells.gru(), output_size=1)
      >>> params = model.init(jax.random.key(0), 2, 4)
      >>> xs, ys = jnp.ones((6, 2)), jnp.zeros((6, 1))
      >>> h0 = model.cell.initial_state(params)
      >>> ws = jnp.stack([truncation.tbptt(6, k) for k in (1, 2, 6)])
      >>> (L, h_T), g = jbptt.grads_for_weights(
      ...     model.cell, model.loss_fn, params, h0, xs, ys, ws)
      >>> g["readout"]["V"].shape
      (3, 1, 4)
    """
    strategy = adjoints.resolve(adjoint)
    T = xs.shape[0] if hasattr(xs, "shape") and xs.ndim else None
    if getattr(ws, "ndim", None) != 2 or ws.shape[1] != T:
        raise ValueError(
            f"ws must have shape (K, T) = (K, {T}), got "
            f"{getattr(ws, 'shape', type(ws).__name__)}."
        )
    h0, xs, _, mask, resets, _ = _prepare(
        cell, params, h0, xs, ys, ws[0], lengths, resets, None
    )
    ws = jnp.asarray(ws, xs.dtype)
    h_reset = None if resets is None else h0
    return strategy.grads_for_weights(
        cell, loss_fn, params, h0, xs, ys, ws, mask, resets, h_reset
    )
