"""Loss and gradient of a recurrent model: the autodiff reference and the
hand-derived reverse scan, both for the same forward."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jbptt._src import scan as _scan
from jbptt._src import sequences, validation
from jbptt._src.cell import Cell
from jbptt._src.checkpointing import Budget, budget_loss, check_budget
from jbptt._src.scan import rnn_scan

LossFn = Callable  # (params, out_t, y_t) -> scalar, reduced over the batch


def per_step_losses(loss_fn: LossFn, params, outs, ys) -> jax.Array:
    """[T]: ℓ_t(θ, out_t, y_t) for every step, evaluated as one batch."""
    return jax.vmap(loss_fn, in_axes=(None, 0, 0))(params, outs, ys)


def sum_of_losses(loss_fn: LossFn, params, outs, ys) -> jax.Array:
    """L = Σ_t ℓ_t(θ, out_t, y_t)."""
    return jnp.sum(per_step_losses(loss_fn, params, outs, ys))


def per_sequence_losses(loss_fn: LossFn, params, outs, ys, batch_ndim: int):
    """[T, *batch]: ℓ(θ, out_{t,b}, y_{t,b}), ``loss_fn`` called on one
    sequence's step (no batch axes) and vmapped over time and batch."""
    f = loss_fn
    for _ in range(batch_ndim + 1):
        f = jax.vmap(f, in_axes=(None, 0, 0))
    return f(params, outs, ys)


def total_loss(loss_fn: LossFn, params, outs, ys, mask=None) -> jax.Array:
    """L = Σ_t ℓ_t, or with a padding mask Σ_{t,b} mask_{t,b} ℓ(out_{t,b},
    y_{t,b}): the sum of the sequences' own losses over their real steps.

    Mixed precision: the loss is evaluated in the params' dtype (the outputs
    are cast to it), so the readout and the sum over steps are exact to it.
    """
    dtype = _scan._float_dtype(params)
    if dtype is not None:
        outs = _scan._cast(outs, dtype)
    if mask is None:
        return sum_of_losses(loss_fn, params, outs, ys)
    ls = per_sequence_losses(loss_fn, params, outs, ys, mask.ndim - 1)
    return jnp.sum(jnp.where(mask, ls, jnp.zeros((), ls.dtype)))


link = _scan.link


def _prepare(cell, params, h0, xs, ys, w, lengths, resets, compute_dtype):
    """Checks and the compute-dtype casts shared by :func:`loss` and
    :func:`value_and_grad`; returns ``(h0, xs, w, mask, resets)``."""
    xs = sequences.as_inputs(cell, params, xs)  # integer token ids -> float ids
    if compute_dtype is not None:
        validation.check_xs(xs)
        _check_token_ids_fit(cell, compute_dtype)
        h0, xs = _scan._cast((h0, xs), jnp.dtype(compute_dtype))
    w, mask, resets = sequences.check_args(cell, params, h0, xs, w, lengths, resets)
    validation.check_ys(ys, xs.shape[0])
    if mask is not None:
        sequences.check_ys_batched(ys, xs.shape[0], tuple(xs.shape[1:-1]))
    return h0, xs, w, mask, resets


def _check_token_ids_fit(cell, compute_dtype):
    """A token model's ids travel as floats of the compute dtype: refuse a
    vocabulary that dtype cannot hold exactly (bfloat16: ids below 2^8)."""
    V = sequences.token_vocab(cell)
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
        h0, xs, w, mask, resets = _prepare(
            cell, params, h0, xs, ys, w, lengths, resets, compute_dtype
        )
        if reset_state is not None and compute_dtype is not None:
            reset_state = _scan._cast(reset_state, jnp.dtype(compute_dtype))
        h_reset = sequences.reset_target(cell, params, h0, xs, resets, reset_state)
        h_T, outs = _scan.reference_scan(cell, params, h0, xs, w, mask, resets, h_reset)
        return total_loss(loss_fn, params, outs, ys, mask), h_T

    return forward


def value_and_grad(
    cell: Cell,
    loss_fn: LossFn,
    *,
    argnums=0,
    checkpoint=None,
    compute_dtype=None,
    mode: str = "scan",
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
    applies the same policy whenever ``xs`` has another dtype than the params.

    Args:
      cell: a :class:`jbptt.cells.Cell`.
      loss_fn: per-step loss ``(params, out_t, y_t) -> scalar``.
      argnums: which of ``(params, h0)`` to differentiate: ``0`` (default),
        ``1`` or ``(0, 1)``, as in ``jax.value_and_grad``.
      checkpoint: ``None`` (default; the fastest measured, docs/design.md
        "Segmenting by default") stores every step's state; ``"sqrt"`` (or
        an int segment length) runs the sequence in segments of about √T
        steps, evaluating the loss inside each segment, and stores only
        the segment-start states: memory O(√T) states instead of O(T), for
        about one extra forward pass. ``jbptt.Budget(max_states=M)`` stores
        at most M states and recomputes the fewest steps (Gruslys et al.
        2016's dynamic program, run as loops so that XLA's memory falls
        with M; takes ``lengths`` and ``resets``, not ``compute_dtype`` or
        ``mode="autodiff"``). Values and gradients are unchanged.
      compute_dtype: ``None`` (compute in the dtype of ``xs``) or a floating
        dtype to cast ``xs`` and ``h0`` to (see above).
      mode: ``"scan"`` (default, jbptt's reverse scan) or ``"autodiff"``
        (``jax.value_and_grad`` of the same forward by plain scan: slower, but
        ``jax.jvp`` of the returned function works, e.g. for Hessian-vector
        products).

    Returns:
      A pure function; ``w`` is an ordinary (traceable, vmappable) argument.

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
    _scan.check_mode(mode)
    _check_compute_dtype(compute_dtype)
    if isinstance(checkpoint, Budget):
        budgeted = budget_loss(cell, loss_fn, check_budget(checkpoint))
        if compute_dtype is not None or mode != "scan":
            raise ValueError(
                "checkpoint=Budget(...) runs in the dtype of xs with jbptt's "
                "reverse scan: drop compute_dtype and mode, or use "
                "checkpoint='sqrt'."
            )
    else:
        budgeted = None
        _scan.segment_length(2, checkpoint)  # bad values fail here, not at call

    def objective(params, h0, xs, ys, w, lengths, resets, reset_state):
        h0_c, xs, w, mask, resets = _prepare(
            cell, params, h0, xs, ys, w, lengths, resets, compute_dtype
        )
        if reset_state is not None and compute_dtype is not None:
            reset_state = _scan._cast(reset_state, jnp.dtype(compute_dtype))
        h_reset = sequences.reset_target(cell, params, h0_c, xs, resets, reset_state)
        if budgeted is not None:
            return budgeted(params, h0_c, xs, ys, w, mask, resets, h_reset)
        S = _scan.segment_length(xs.shape[0], checkpoint)
        if S is None:
            h_T, outs = rnn_scan(
                cell,
                params,
                h0_c,
                xs,
                w,
                lengths=mask,
                resets=resets,
                reset_state=h_reset,
                mode=mode,
            )
            return total_loss(loss_fn, params, outs, ys, mask), h_T

        # Checkpointed: each segment computes its own losses, so neither the
        # states nor the outputs of all T steps are ever stored at once.
        # Resets restart from the sequence's h0, which every segment closes over.
        scan = _scan.reference_scan if mode == "autodiff" else _scan.scan_or_explain

        def segment(h, inp):
            xs_s, ys_s, w_s, m_s, r_s = inp
            h, outs = scan(cell, params, h, xs_s, w_s, m_s, r_s, h_reset)
            return h, total_loss(loss_fn, params, outs, ys_s, m_s)

        T = xs.shape[0]
        h_T, (head, losses) = _scan.scan_segments(
            segment, h0_c, (xs, ys, w, mask, resets), T, S
        )
        L = jnp.sum(losses)
        return (L if head is None else head + L), h_T

    vg = jax.value_and_grad(objective, argnums=argnums, has_aux=True)

    def grad_fn(
        params, h0, xs, ys, w=None, *, lengths=None, resets=None, reset_state=None
    ):
        return vg(params, h0, xs, ys, w, lengths, resets, reset_state)

    return grad_fn


def grads_for_weights(
    cell: Cell, loss_fn: LossFn, params, h0, xs, ys, ws, *, lengths=None, resets=None
):
    """Gradients for K link-weight vectors from one shared forward pass.

    The forward values, the loss and the loss's own cotangents do not depend
    on ``w`` (only the reverse scan does), so they are computed
    once; the K reverse scans run batched (``vmap`` over ``ws``), which also
    turns each step's ``[B, H] @ [H, G·H]`` product into a K-times larger one.

    Args:
      cell: a :class:`jbptt.cells.Cell`.
      loss_fn: per-step loss ``(params, out_t, y_t) -> scalar``.
      params, h0, xs, ys: as for :func:`value_and_grad`.
      ws: link weights ``[K, T]``, one row per estimator configuration.
      lengths, resets: as for :func:`value_and_grad`.

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
    T = xs.shape[0] if hasattr(xs, "shape") and xs.ndim else None
    if getattr(ws, "ndim", None) != 2 or ws.shape[1] != T:
        raise ValueError(
            f"ws must have shape (K, T) = (K, {T}), got "
            f"{getattr(ws, 'shape', type(ws).__name__)}."
        )
    h0, xs, _, mask, resets = _prepare(
        cell, params, h0, xs, ys, ws[0], lengths, resets, None
    )
    ws = jnp.asarray(ws, xs.dtype)
    # One forward and one loss vjp, then K reverse scans: a vmap of backward.
    h_reset = None if resets is None else h0
    h_T, outs, residuals = _scan._path(cell).forward(
        cell, params, h0, xs, mask, resets, h_reset
    )
    L, loss_vjp = jax.vjp(
        lambda p, o: total_loss(loss_fn, p, o, ys, mask), params, outs
    )
    dparams_loss, douts = loss_vjp(jnp.ones_like(L))
    dh_T = jax.tree_util.tree_map(jnp.zeros_like, h_T)

    def one(w):
        dparams, *_ = _scan._backward(cell, params, residuals, w, dh_T, douts)
        return jax.tree_util.tree_map(jnp.add, dparams, dparams_loss)

    return (L, h_T), jax.vmap(one)(ws)
