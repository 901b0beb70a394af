"""Memory-budget checkpointing: the fewest recomputed steps for M stored states.

The model (Gruslys et al. 2016; Griewank & Walther's revolve) counts *slots*:
a slot holds either a state h_i or the residuals r_i of step i, which are
enough to run step i's reverse without recomputing it (r_i includes h_i).
The caller's ``h0`` occupies one slot. Running step i from h_i costs one
forward step. Reversal goes from step T−1 down to 0 and needs r_i.

A schedule is a static split tree: a chain of t steps with m slots is either

* a *leaf* (t ≤ m): run all t steps with residuals, cost t, or
* a *split* at s: the head's s steps run keeping only its input (cost s),
  then the tail t − s steps with m − 1 slots, then, when the backward
  reaches the head, the head re-run with all m slots.

Its forward cost F(t, m) obeys the dynamic program

    F(t, m) = t                                            if t ≤ m,
    F(t, m) = min_{1≤s<t}  s + F(t − s, m − 1) + F(s, m)   otherwise,

and the recomputed steps are F(T, M) − T. For M ≥ T nothing is recomputed;
M = 2 gives T(T+1)/2 − 1 − T; any M ≥ 2 is feasible. The tests check F
against a brute-force search over every store/recompute strategy.

Two executors:

* :func:`budget_loss` / :func:`budget_rnn_scan` (what
  ``jbptt.value_and_grad(..., checkpoint=Budget(M))`` uses): the tree
  flattened into a :class:`Program` of advance/leaf actions, run by loops
  (``lax.scan`` over actions, ``fori_loop`` advances, ``lax.switch`` leaves)
  over a buffer of at most M states, so XLA's memory is O(M) and the forward
  steps are exactly F;
* :func:`scan_budget`: the tree as nested ``jax.checkpoint`` around any
  segment function; the steps JAX runs are F, but outside a loop XLA is
  free to keep buffers alive, so its memory does not fall with M.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

tree_map = jax.tree_util.tree_map


class Budget(NamedTuple):
    """Checkpoint policy that stores at most ``max_states`` states at once.

    Attributes:
      max_states: the number of slots M ≥ 2 (states or per-step residuals,
        the initial state included).
      unit: steps per schedule step (default 1). The schedule is optimal over
        blocks of ``unit`` steps; a leaf keeps up to M blocks of residuals,
        so memory is about M·unit steps' worth. Values above 1 keep the
        dynamic program (O(M·n²) for n = ⌈T / unit⌉ blocks, in Python) and
        the action list small for very long sequences.

    Examples:
      >>> from jbptt._src.checkpointing import Budget, recomputations
      >>> b = Budget(max_states=4)
      >>> recomputations(10, b.max_states)
      9
    """

    max_states: int
    unit: int = 1


def check_budget(budget) -> Budget:
    """Validate ``budget`` (a :class:`Budget`); raises a clear error otherwise."""
    if not isinstance(budget, Budget):
        raise TypeError(f"budget must be a Budget(max_states=M), got {budget!r}.")
    M, unit = budget.max_states, budget.unit
    for name, v, low in (("max_states", M, 2), ("unit", unit, 1)):
        if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < low:
            raise ValueError(f"Budget.{name} must be an int ≥ {low}, got {v!r}.")
    return budget


# ------------------------------------------------------ dynamic program ---


@functools.lru_cache(maxsize=64)
def _table(T: int, M: int):
    """F[m, t] (forward steps) and the best split S[m, t] (0: leaf)."""
    INF = np.iinfo(np.int64).max // 4
    F = np.full((M + 1, T + 1), INF, dtype=np.int64)
    S = np.zeros((M + 1, T + 1), dtype=np.int64)
    F[:, 0] = 0
    for m in range(1, M + 1):
        for t in range(1, T + 1):
            if t <= m:
                F[m, t] = t  # leaf: everything fits
                continue
            s = np.arange(1, t)
            c = s + F[m - 1, t - s] + F[m, s]  # head, tail with m−1, head again
            j = int(np.argmin(c))
            F[m, t], S[m, t] = min(int(c[j]), INF), s[j]
    return F, S


def forward_steps(T: int, M: int) -> int:
    """F(T, M): forward steps (first pass included) of the optimal schedule."""
    if M < 2 and T > 1:
        raise ValueError(f"max_states must be ≥ 2 for T > 1, got {M}.")
    return int(_table(T, min(M, T))[0][min(M, T), T])


def recomputations(T: int, M: int) -> int:
    """Recomputed forward steps F(T, M) − T of the optimal schedule."""
    return forward_steps(T, M) - T


def schedule(T: int, M: int):
    """The optimal split tree: ``("leaf", t)`` or ``("split", s, head, tail)``."""
    M = min(M, T)
    _, S = _table(T, M)

    def build(t, m):
        if t <= m:
            return ("leaf", t)
        s = int(S[m, t])
        return ("split", s, build(s, m), build(t - s, m - 1))

    return build(T, M)


def simulate(tree) -> tuple[int, int]:
    """Replay ``tree`` as JAX runs it: ``(forward steps, peak slots held)``.

    Independent of the dynamic program: walks the tree with the semantics of
    nested ``jax.checkpoint`` (a checkpointed head keeps only its input until
    the backward reaches it) and counts slots at every moment.
    """
    steps = 0
    peak = 0

    def length(node):
        return node[1] if node[0] == "leaf" else node[1] + length(node[3])

    def run(node, held):  # held: slots kept by enclosing levels (input incl.)
        nonlocal steps, peak
        if node[0] == "leaf":
            t = node[1]
            steps += t
            peak = max(peak, held - 1 + t)  # the input becomes r_0
            return
        _, s, head, tail = node
        steps += s  # head forward under checkpoint: keeps only its input
        run(tail, held + 1)  # the tail's input is a new slot
        run(head, held)  # backward reaches the head: re-run with residuals

    run(tree, 1)
    return steps, peak


# ------------------------------------------------------------- executor ---


def _slice(xs, a, b):
    return tree_map(lambda x: x[a:b], xs)


def scan_budget(segment, carry, xs, T: int, budget: Budget):
    """Run ``segment(carry, xs_seg) -> (carry, out)`` under a memory budget.

    The analogue of :func:`jbptt._src.scan.scan_segments` for
    ``checkpoint=Budget(M)``: the T steps are split statically by the optimal
    schedule (:func:`schedule`) over blocks of ``budget.unit`` steps, heads
    are wrapped in ``jax.checkpoint`` and each leaf of the schedule (t ≤ m
    blocks, all kept) is one ``segment`` call, so differentiating keeps at
    most ``M`` block states and recomputes :func:`recomputations` blocks.

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
      budget: a :class:`Budget`.

    Returns:
      ``(carry, outs)``: ``outs`` is a tuple of the leaves' outputs in time
      order (sum them for a loss, concatenate them for per-step outputs).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jbptt._src.checkpointing import Budget, scan_budget
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


# ------------------------------------------- the schedule as a program ---

_ADVANCE, _LEAF = 0, 1


class Program(NamedTuple):
    """The optimal schedule (:func:`schedule`) flattened into the order it runs.

    Walking the split tree depth first, tail before head, gives one list of
    two kinds of action, in steps (blocks of ``unit`` steps resolved):

    * *advance* ``(slot, a, b)``: from the state in ``slot`` run steps
      ``a..b−1`` keeping nothing, and store the result in ``slot + 1``
      (a split: its head is crossed, the tail's input stored);
    * *leaf* ``(slot, a, b)``: from the state in ``slot`` run steps
      ``a..b−1`` with residuals and reverse them at once.

    Depth in the tree is the slot index (each tail has one slot fewer), so
    ``slots`` ≤ M states are ever stored. The first forward pass runs the
    leading advances (the tree's spine) and the first leaf's forward; the
    backward reverses that leaf and runs everything after it.

    Attributes:
      spine: ``[d, 2]`` step ranges of the leading advances; the end of the
        i-th is stored in slot i + 1.
      first_leaf: ``(a, b)``, the leaf whose residuals the first pass keeps.
      kind, slot, start, stop, branch: ``[K]`` arrays, the remaining actions
        in run order (``branch`` indexes ``leaf_lengths`` for leaves).
      leaf_lengths: the distinct leaf lengths in steps (one compiled branch
        each).
      slots: state slots used (the tree's depth + 1, at most M).
      steps: forward steps run in all (first pass included).
    """

    spine: np.ndarray
    first_leaf: tuple[int, int]
    kind: np.ndarray
    slot: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    branch: np.ndarray
    leaf_lengths: tuple[int, ...]
    slots: int
    steps: int


@functools.lru_cache(maxsize=64)
def program(T: int, budget: Budget) -> Program:
    """Flatten the optimal schedule of ``T`` steps under ``budget``.

    Examples:
      >>> from jbptt._src.checkpointing import Budget, program, forward_steps
      >>> p = program(10, Budget(3))
      >>> p.steps == forward_steps(10, 3), p.slots <= 3
      (True, True)
    """
    check_budget(budget)
    u = budget.unit
    n = -(-T // u)
    bounds = [min(i * u, T) for i in range(n + 1)]
    M = min(budget.max_states, n)
    _, S = _table(n, M)
    acts = []  # (kind, slot, a, b)
    todo = [(0, n, M, 0)]  # (first block, blocks, slots left, slot): a stack
    while todo:  # iterative: the tree can be thousands deep
        first, t, m, slot = todo.pop()
        a = bounds[first]
        if t <= m:
            acts.append((_LEAF, slot, a, bounds[first + t]))
            continue
        s = int(S[m, t])
        acts.append((_ADVANCE, slot, a, bounds[first + s]))
        todo.append((first, s, m, slot))  # head: after the tail, same slots
        todo.append((first + s, t - s, m - 1, slot + 1))  # tail: next
    d = next(i for i, act in enumerate(acts) if act[0] == _LEAF)
    rest = acts[d + 1 :]
    lengths = tuple(sorted({b - a for k, _, a, b in rest if k == _LEAF}))
    col = np.array([(k, s, a, b) for k, s, a, b in rest], np.int32).reshape(-1, 4)
    branch = np.array(
        [lengths.index(b - a) if k == _LEAF else 0 for k, _, a, b in rest], np.int32
    )
    return Program(
        spine=np.array([(a, b) for _, _, a, b in acts[:d]], np.int32).reshape(-1, 2),
        first_leaf=(acts[d][2], acts[d][3]),
        kind=col[:, 0],
        slot=col[:, 1],
        start=col[:, 2],
        stop=col[:, 3],
        branch=branch,
        leaf_lengths=lengths,
        slots=1 + max(s + (k == _ADVANCE) for k, s, _, _ in acts),
        steps=sum(b - a for _, _, a, b in acts),
    )


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
    from jbptt._src import sequences

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
    from jbptt._src.scan import _cast, _path

    xs, mask, resets, h_reset = seq
    slots = tree_map(
        lambda a: jnp.zeros((prog.slots, *a.shape), a.dtype).at[0].set(a), h0
    )
    h = h0
    if len(prog.spine):
        p = _cast(params, xs.dtype)

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
    h_T, outs, res = _path(cell).forward(
        cell, params, h, _slice(xs, a, b), m_w, r_w, h_reset
    )
    return h_T, outs, res, slots, acc


def _reverse(cell, params, seq, w, prog: Program, slots, first, dh_T, leaf_cot):
    """The backward: reverse the first leaf (``first = (residuals, douts,
    dparams of the loss)``), then run the remaining actions in one
    ``lax.scan``; a leaf is a ``lax.switch`` over its static length.

    Returns ``(dparams, dh0, dxs, dh_reset)``.
    """
    from jbptt._src.scan import _backward, _cast, _path

    xs, mask, resets, h_reset = seq
    res, douts, dp_loss = first
    a, b = prog.first_leaf
    add = functools.partial(tree_map, jnp.add)
    dp, dh, dx, dr = _backward(cell, params, res, w[a:b], dh_T, douts)
    if dp_loss is not None:
        dp = add(dp, dp_loss)
    dxs = jax.lax.dynamic_update_slice_in_dim(jnp.zeros_like(xs), dx, a, 0)
    if not len(prog.kind):
        return dp, dh, dxs, dr
    p = _cast(params, xs.dtype)

    def advance(op):
        slots, i, a, b, carry = op
        h, _ = _advance(cell, p, _get(slots, i), seq, a, b, None, None)
        return _put(slots, i + 1, h), carry

    def leaf(n):
        def run(op):
            slots, i, a, _, (dp, dh, dxs, dr) = op
            m_w, r_w = (None if v is None else _dslice(v, a, n) for v in (mask, resets))
            _, outs, res = _path(cell).forward(
                cell, params, _get(slots, i), _dslice(xs, a, n), m_w, r_w, h_reset
            )
            dp_l, douts = leaf_cot(params, outs, a, n, m_w)
            dp_c, dh, dx, dr_c = _backward(
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
            kind == _ADVANCE,
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


def budget_loss(cell, loss_fn, budget: Budget):
    """``(params, h0, xs, ys, w, mask=None, resets=None, h_reset=None) ->
    (L, h_T)`` whose gradient runs the optimal schedule under ``budget``.

    The schedule (:func:`schedule`, Gruslys et al.'s dynamic program) is
    flattened into a :class:`Program` and run by an interpreter whose every
    level lives in a loop, so XLA allocates O(M) states whatever T is:

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
    forward steps run are exactly :func:`forward_steps` ``(n, M)`` blocks of
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
      budget: a :class:`Budget`; with ``unit > 1`` the schedule runs over
        blocks of ``unit`` steps.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt._src.checkpointing import Budget, budget_loss
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
    from jbptt._src.api import total_loss
    from jbptt._src.scan import _float_dtype

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

        L0 = jnp.zeros((), _float_dtype(params) or xs.dtype)
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
        dL = jnp.asarray(dL, _float_dtype(params) or xs.dtype)
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


def budget_rnn_scan(
    cell,
    params,
    h0,
    xs,
    w=None,
    *,
    lengths=None,
    resets=None,
    reset_state=None,
    budget: Budget,
):
    """:func:`jbptt.rnn_scan` under a memory budget: ``(h_T, outs)``, whose
    gradient (any loss of ``outs`` and ``h_T``) runs the optimal schedule.

    The same interpreter as :func:`budget_loss` (see there for what is
    stored and what is recomputed), with the cotangents of ``outs`` in place
    of the loss's: ``outs`` itself is ``[T, ...]``, so the budget bounds the
    states and residuals, not the outputs. Arguments as for
    :func:`jbptt.rnn_scan`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt._src.checkpointing import Budget, budget_rnn_scan
      >>> cell = jbptt.cells.gru()
      >>> p = cell.init(jax.random.key(0), 2, 3)
      >>> xs = jnp.ones((7, 2))
      >>> def f(scan, **kw):
      ...     h0 = cell.initial_state(p)
      ...     return lambda p: jnp.sum(scan(cell, p, h0, xs, **kw)[1] ** 2)
      >>> g = jax.grad(f(budget_rnn_scan, budget=Budget(2)))(p)
      >>> ref = jax.grad(f(jbptt.rnn_scan))(p)
      >>> jax.tree_util.tree_all(jax.tree_util.tree_map(jnp.allclose, g, ref))
      True
    """
    from jbptt._src import sequences

    check_budget(budget)
    w, mask, resets = sequences.check_args(cell, params, h0, xs, w, lengths, resets)
    h_reset = sequences.reset_target(cell, params, h0, xs, resets, reset_state)
    return _budget_scan(cell, budget)(params, h0, xs, w, mask, resets, h_reset)


def _budget_scan(cell, budget: Budget):
    from jbptt._src import sequences

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
