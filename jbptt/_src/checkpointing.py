"""Memory-budget checkpointing: run the optimal schedule of
:mod:`jbptt._src.revolve` (the fewest recomputed steps for M stored states).

Two executors:

* :func:`budget_loss` / :func:`budget_scan` (what
  ``jbptt.value_and_grad(..., adjoint=jbptt.Budget(M))`` and ``rnn_scan``
  use): the tree flattened into a :class:`revolve.Program` of
  advance/leaf actions, run by loops (``lax.scan`` over actions,
  ``fori_loop`` advances, ``lax.switch`` leaves) over a buffer of at most M
  states, so XLA's memory is O(M) and the forward steps are exactly F;
* :func:`scan_budget`: the tree as nested ``jax.checkpoint`` around any
  segment function; the steps JAX runs are F, but outside a loop XLA is
  free to keep buffers alive, so its memory does not fall with M.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jbptt._src import sequences
from jbptt._src.dtypes import cast, float_dtype
from jbptt._src.losses import total_loss
from jbptt._src.revolve import ADVANCE, Program, check_budget, program, schedule
from jbptt._src.scan import backward_unchecked, cell_path

tree_map = jax.tree_util.tree_map


# ------------------------------------------------------------- executor ---


def _slice(xs, a, b):
    return tree_map(lambda x: x[a:b], xs)


def scan_budget(segment, carry, xs, T: int, budget):
    """Run ``segment(carry, xs_seg) -> (carry, out)`` under a memory budget.

    The analogue of :func:`jbptt._src.scan.scan_segments` for
    ``adjoint=Budget(M)``: the T steps are split statically by the optimal
    schedule (:func:`revolve.schedule`) over blocks of ``budget.unit`` steps, heads
    are wrapped in ``jax.checkpoint`` and each leaf of the schedule (t ≤ m
    blocks, all kept) is one ``segment`` call, so differentiating keeps at
    most ``M`` block states and recomputes :func:`revolve.recomputations` blocks.

    Caveat: the schedule bounds what JAX's autodiff keeps and re-runs
    (checked by executing it: the tests count the steps XLA runs). Outside a
    loop, however, XLA is free to schedule a head's re-run as soon as its
    saved input exists, or to merge it with the first forward; on XLA:CPU
    temporaries did not drop with M. For memory that falls with M use
    :func:`budget_loss` (what ``value_and_grad`` runs), whose levels are
    loops.

    Args:
      segment: ``(carry, xs_seg) -> (carry, out)`` for any number of steps.
      carry: the initial carry (pytree).
      xs: inputs with a leading time axis of length ``T`` (pytree).
      T: number of steps (static).
      budget: a :class:`jbptt.Budget`.

    Returns:
      ``(carry, outs)``: ``outs`` is a tuple of the leaves' outputs in time
      order (sum them for a loss, concatenate them for per-step outputs).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jbptt._src.checkpointing import scan_budget
      >>> from jbptt import Budget
      >>> seg = lambda c, x: (c * jnp.prod(x), jnp.sum(x))
      >>> c, outs = scan_budget(seg, 1.0, jnp.full((5,), 2.0), 5, Budget(2))
      >>> float(c), len(outs)
      (32.0, 4)
    """
    check_budget(budget)
    u = budget.unit
    n = -(-T // u)  # blocks; the last one may be shorter
    bounds = [min(i * u, T) for i in range(n + 1)]
    tree = schedule(n, budget.max_states)

    def run(node, carry, first):  # first: index of the node's first block
        if node[0] == "leaf":  # one call: all its blocks' residuals are kept
            a, b = bounds[first], bounds[first + node[1]]
            carry, out = segment(carry, _slice(xs, a, b))
            return carry, (out,)
        _, s, head, tail = node
        # Keeps only the head's input; the backward re-runs the head.
        head_fn = jax.checkpoint(lambda c: run(head, c, first))
        carry, outs_h = head_fn(carry)
        carry, outs_t = run(tail, carry, first + s)
        return carry, outs_h + outs_t

    return run(tree, carry, 0)


def concat_outs(outs):
    """Concatenate per-block outputs along time (for ``rnn_scan``'s ``outs``)."""
    return tree_map(lambda *a: jnp.concatenate(a), *outs)


# ------------------------------------------------------ the interpreter ---


def _dslice(tree, a, n: int):
    return tree_map(lambda x: jax.lax.dynamic_slice_in_dim(x, a, n), tree)


def _index(tree, t):
    return tree_map(lambda x: jax.lax.dynamic_index_in_dim(x, t, keepdims=False), tree)


def _get(slots, i):
    return _index(slots, i)


def _put(slots, i, h):
    return tree_map(
        lambda s, a: jax.lax.dynamic_update_index_in_dim(s, a, i, 0), slots, h
    )


def _advance(cell, p, h, seq, a, b, acc, emit):
    """Steps ``a..b−1`` from ``h`` in a ``fori_loop`` (dynamic bounds), with
    the core's padding and reset rules; ``emit(acc, t, out, m_t)`` sees each
    step's output (the first pass sums losses or writes ``outs`` with it)."""
    xs, mask, resets, h_reset = seq

    def body(t, carry):
        h, acc = carry
        x_t = _index(xs, t)
        m_t = None if mask is None else _index(mask, t)
        h_in = h if resets is None else sequences.select(_index(resets, t), h_reset, h)
        h_new, out = cell.step(p, h_in, x_t)
        if m_t is not None:  # padding: the state stays as it was
            h_new = sequences.select(m_t, h_new, h)
        if emit is not None:
            acc = emit(acc, t, out, m_t)
        return h_new, acc

    return jax.lax.fori_loop(a, b, body, (h, acc))


def _first_pass(cell, params, h0, seq, prog: Program, acc, emit):
    """The spine's advances (a ``lax.scan`` over them, storing each end in
    its slot), then the first leaf's forward with residuals."""
    xs, mask, resets, h_reset = seq
    slots = tree_map(
        lambda a: jnp.zeros((prog.slots, *a.shape), a.dtype).at[0].set(a), h0
    )
    h = h0
    if len(prog.spine):
        p = cast(params, xs.dtype)

        def body(carry, act):
            h, slots, acc = carry
            i, a, b = act
            h, acc = _advance(cell, p, h, seq, a, b, acc, emit)
            return (h, _put(slots, i + 1, h), acc), None

        spine = jnp.asarray(prog.spine)
        acts = (jnp.arange(len(prog.spine)), spine[:, 0], spine[:, 1])
        (h, slots, acc), _ = jax.lax.scan(body, (h, slots, acc), acts)
    a, b = prog.first_leaf
    m_w, r_w = (None if v is None else v[a:b] for v in (mask, resets))
    h_T, outs, res = cell_path(cell).forward(
        cell, params, h, _slice(xs, a, b), m_w, r_w, h_reset
    )
    return h_T, outs, res, slots, acc


def _reverse(cell, params, seq, w, prog: Program, slots, first, dh_T, leaf_cot):
    """The backward: reverse the first leaf (``first = (residuals, douts,
    dparams of the loss)``), then run the remaining actions in one
    ``lax.scan``; a leaf is a ``lax.switch`` over its static length.

    Returns ``(dparams, dh0, dxs, dh_reset)``.
    """
    xs, mask, resets, h_reset = seq
    res, douts, dp_loss = first
    a, b = prog.first_leaf
    add = functools.partial(tree_map, jnp.add)
    dp, dh, dx, dr = backward_unchecked(cell, params, res, w[a:b], dh_T, douts)
    if dp_loss is not None:
        dp = add(dp, dp_loss)
    dxs = jax.lax.dynamic_update_slice_in_dim(jnp.zeros_like(xs), dx, a, 0)
    if not len(prog.kind):
        return dp, dh, dxs, dr
    p = cast(params, xs.dtype)

    def advance(op):
        slots, i, a, b, carry = op
        h, _ = _advance(cell, p, _get(slots, i), seq, a, b, None, None)
        return _put(slots, i + 1, h), carry

    def leaf(n):
        def run(op):
            slots, i, a, _, (dp, dh, dxs, dr) = op
            m_w, r_w = (None if v is None else _dslice(v, a, n) for v in (mask, resets))
            _, outs, res = cell_path(cell).forward(
                cell, params, _get(slots, i), _dslice(xs, a, n), m_w, r_w, h_reset
            )
            dp_l, douts = leaf_cot(params, outs, a, n, m_w)
            dp_c, dh, dx, dr_c = backward_unchecked(
                cell, params, res, _dslice(w, a, n), dh, douts
            )
            dp = add(dp, dp_c) if dp_l is None else add(dp, add(dp_c, dp_l))
            dxs = jax.lax.dynamic_update_slice_in_dim(dxs, dx, a, 0)
            return slots, (dp, dh, dxs, None if dr is None else add(dr, dr_c))

        return run

    branches = [leaf(n) for n in prog.leaf_lengths]

    def body(carry, act):
        slots, grads = carry
        kind, i, a, b, k = act
        op = (slots, i, a, b, grads)
        if not branches:
            return advance(op), None
        return jax.lax.cond(
            kind == ADVANCE,
            advance,
            lambda op: jax.lax.switch(k, branches, op),
            op,
        ), None

    acts = tuple(
        jnp.asarray(v)
        for v in (prog.kind, prog.slot, prog.start, prog.stop, prog.branch)
    )
    (_, (dp, dh, dxs, dr)), _ = jax.lax.scan(body, (slots, (dp, dh, dxs, dr)), acts)
    return dp, dh, dxs, dr


def budget_loss(cell, loss_fn, budget):
    """``(params, h0, xs, ys, w, mask=None, resets=None, h_reset=None) ->
    (L, h_T)`` whose gradient runs the optimal schedule under ``budget``.

    The schedule (:func:`revolve.schedule`, Gruslys et al.'s dynamic program
    solved in closed form) is flattened into a :class:`revolve.Program` and
    run by an interpreter whose every level lives in a loop, so XLA allocates
    O(M) states whatever T is:

    * the first pass is a ``lax.scan`` over the spine's advances (each a
      ``fori_loop`` over its steps, summing the losses and storing its end
      state in a ``[slots, ...]`` buffer), then the first leaf's forward
      with residuals;
    * the backward reverses that leaf with the core's reverse scan, then one
      ``lax.scan`` runs the remaining actions: an advance re-runs steps from
      a slot into the next slot; a leaf re-runs its ≤ M blocks with residuals
      (:func:`jbptt.forward`), takes the loss's cotangents and reverses them
      (:func:`jbptt.backward`), carrying the adjoint, the parameter
      gradient and ``dxs``.

    What is stored: the slot buffer (at most M states, the tree's depth + 1)
    and one leaf's residuals (at most M blocks of ``unit`` steps). The
    forward steps run are exactly :func:`revolve.forward_steps` ``(n, M)`` blocks of
    the optimal schedule (n = ⌈T / unit⌉; ``Program.steps`` in steps), the
    same count the brute force in the tests finds; nothing is traded for the
    loops. Gradients are exact (the same reverse scan, link weights, padding
    mask and resets as :func:`jbptt.value_and_grad`).

    ``mask`` (bool ``[T, *batch]``), ``resets`` and ``h_reset`` mean what they
    mean for the core (:mod:`jbptt._src.sequences`); with a mask the loss is
    evaluated per sequence. ``ys``, ``w``, ``mask`` and ``resets`` get no
    cotangent; ``h_reset`` gets the resets' one.

    Args:
      cell: a :class:`jbptt.cells.Cell`.
      loss_fn: per-step loss ``(params, out_t, y_t) -> scalar``.
      budget: a :class:`jbptt.Budget`; with ``unit > 1`` the schedule runs over
        blocks of ``unit`` steps.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt._src.checkpointing import budget_loss
      >>> from jbptt import Budget
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> p = model.init(jax.random.key(0), 1, 3)
      >>> h0, xs, ys = model.cell.initial_state(p), jnp.ones((9, 1)), jnp.ones((9, 1))
      >>> f = budget_loss(model.cell, model.loss_fn, Budget(3))
      >>> g = jax.grad(lambda p: f(p, h0, xs, ys, jnp.ones(9))[0])(p)
      >>> ref = jax.grad(lambda p: jbptt.loss(model.cell, model.loss_fn)(
      ...     p, h0, xs, ys)[0])(p)
      >>> bool(jnp.allclose(g["cell"]["W"], ref["cell"]["W"]))
      True
    """
    check_budget(budget)

    def window_loss(ys, a, n, m_w):
        return lambda p, o: total_loss(loss_fn, p, o, _dslice(ys, a, n), m_w)

    def first_pass(params, h0, xs, ys, mask, resets, h_reset):
        prog = program(xs.shape[0], budget)
        seq = (xs, mask, resets, h_reset)

        def emit(L, t, out, m_t):
            y_t = _dslice(ys, t, 1)
            m = None if m_t is None else m_t[None]
            return L + total_loss(
                loss_fn, params, tree_map(lambda o: o[None], out), y_t, m
            )

        L0 = jnp.zeros((), float_dtype(params) or xs.dtype)
        h_T, outs, res, slots, L = _first_pass(cell, params, h0, seq, prog, L0, emit)
        a, b = prog.first_leaf
        m_w = None if mask is None else mask[a:b]
        L_leaf, vjp = jax.vjp(window_loss(ys, a, b - a, m_w), params, outs)
        return L + L_leaf, h_T, (prog, slots, res, vjp)

    @jax.custom_vjp
    def objective(params, h0, xs, ys, w, mask=None, resets=None, h_reset=None):
        L, h_T, _ = first_pass(params, h0, xs, ys, mask, resets, h_reset)
        return L, h_T

    def fwd(params, h0, xs, ys, w, mask=None, resets=None, h_reset=None):
        L, h_T, (_, slots, res, vjp) = first_pass(
            params, h0, xs, ys, mask, resets, h_reset
        )
        return (L, h_T), (params, h0, xs, ys, w, mask, resets, h_reset, slots, res, vjp)

    def bwd(saved, cotangents):
        params, h0, xs, ys, w, mask, resets, h_reset, slots, res, vjp = saved
        dL, dh_T = cotangents
        prog = program(xs.shape[0], budget)
        dL = jnp.asarray(dL, float_dtype(params) or xs.dtype)
        dh_T = tree_map(lambda g, h: jnp.asarray(g, h.dtype), dh_T, h0)
        dp_loss, douts = vjp(dL)

        def leaf_cot(params, outs, a, n, m_w):
            _, vjp = jax.vjp(window_loss(ys, a, n, m_w), params, outs)
            return vjp(dL)

        seq = (xs, mask, resets, h_reset)
        dp, dh0, dxs, dr = _reverse(
            cell, params, seq, w, prog, slots, (res, douts, dp_loss), dh_T, leaf_cot
        )
        return (dp, dh0, dxs, None, jnp.zeros_like(w), None, None, dr)

    objective.defvjp(fwd, bwd)
    return objective


def budget_scan(cell, budget):
    """``(params, h0, xs, w, mask, resets, h_reset) -> (h_T, outs)`` on checked
    arguments (what ``jbptt.rnn_scan(..., adjoint=jbptt.Budget(M))`` runs
    after its checks): a ``jax.custom_vjp`` whose backward runs the optimal
    schedule under ``budget``. ``w``, ``mask`` and ``resets`` get no
    cotangent."""

    def first_pass(params, h0, xs, mask, resets, h_reset):
        prog = program(xs.shape[0], budget)
        seq = (xs, mask, resets, h_reset)

        def emit(outs, t, out, m_t):
            if m_t is not None:
                out = sequences.select(m_t, out, tree_map(jnp.zeros_like, out))
            return _put(outs, t, out)

        # The steps' outputs: shape and dtype from one step (never run).
        p = jax.eval_shape(lambda: cell.step(params, h0, _index(xs, 0))[1])
        outs0 = tree_map(lambda s: jnp.zeros((xs.shape[0], *s.shape), s.dtype), p)
        h_T, leaf_outs, res, slots, outs = _first_pass(
            cell, params, h0, seq, prog, outs0, emit
        )
        a, _ = prog.first_leaf
        outs = tree_map(
            lambda o, lo: jax.lax.dynamic_update_slice_in_dim(o, lo, a, 0),
            outs,
            leaf_outs,
        )
        return h_T, outs, prog, slots, res

    @jax.custom_vjp
    def scan(params, h0, xs, w, mask, resets, h_reset):
        h_T, outs, *_ = first_pass(params, h0, xs, mask, resets, h_reset)
        return h_T, outs

    def fwd(params, h0, xs, w, mask, resets, h_reset):
        h_T, outs, _, slots, res = first_pass(params, h0, xs, mask, resets, h_reset)
        return (h_T, outs), (params, h0, xs, w, mask, resets, h_reset, slots, res)

    def bwd(saved, cotangents):
        params, h0, xs, w, mask, resets, h_reset, slots, res = saved
        dh_T, douts = cotangents
        prog = program(xs.shape[0], budget)
        dh_T = tree_map(lambda g, h: jnp.asarray(g, h.dtype), dh_T, h0)
        a, b = prog.first_leaf

        def leaf_cot(params, outs, a, n, m_w):
            return None, _dslice(douts, a, n)

        seq = (xs, mask, resets, h_reset)
        first = (res, _slice(douts, a, b), None)
        dp, dh0, dxs, dr = _reverse(
            cell, params, seq, w, prog, slots, first, dh_T, leaf_cot
        )
        return (dp, dh0, dxs, jnp.zeros_like(w), None, None, dr)

    scan.defvjp(fwd, bwd)
    return scan
