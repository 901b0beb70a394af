"""Memory-budget checkpointing: the fewest recomputed steps for M stored states.

The model (Gruslys et al. 2016; Griewank & Walther's revolve) counts *slots*:
a slot holds either a state h_i or the residuals r_i of step i, which are
enough to run step i's reverse without recomputing it (r_i includes h_i).
The caller's ``h0`` occupies one slot. Running step i from h_i costs one
forward step. Reversal goes from step T−1 down to 0 and needs r_i.

jbptt runs a schedule as nested ``jax.checkpoint`` over a static split:
a chain of t steps with m slots is either

* a *leaf* (t ≤ m): run all t steps with residuals, cost t, or
* a *split* at s: the head s steps under ``jax.checkpoint`` (only its input is
  kept, cost s), then the tail t − s steps with m − 1 slots, then, when the
  backward reaches the head, the head re-run with all m slots.

Its forward cost F(t, m) obeys the dynamic program

    F(t, m) = t                                            if t ≤ m,
    F(t, m) = min_{1≤s<t}  s + F(t − s, m − 1) + F(s, m)   otherwise,

and the recomputed steps are F(T, M) − T. For M ≥ T nothing is recomputed;
M = 2 gives T(T+1)/2 − 1 − T; any M ≥ 2 is feasible. The tests check F
against a brute-force search over every store/recompute strategy.
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
        blocks of ``unit`` steps; a block's reverse keeps its ``unit`` steps of
        residuals, so memory is about M·unit states. Values above 1 keep the
        compiled program small for very long sequences (the program has one
        segment call per block and recursion level).

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
    ``benchmarks/bench_memory.py`` measures no drop in temporaries against
    M (and run times below the schedule's step count), while ``"sqrt"``
    (checkpoints inside a ``lax.scan``) does drop.

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


# ------------------------------------------- explicit reverse under budget ---


def _steps(cell, params, h, xs):
    """Advance without keeping anything but the carry (a forward re-run)."""
    return jax.lax.scan(lambda h, x: (cell.step(params, h, x)[0], None), h, xs)[0]


def _after(values, deps):
    """``values`` made data-dependent on ``deps`` (unchanged in value)."""
    tok = sum(jnp.sum(a) for a in jax.tree_util.tree_leaves(deps))
    zero = jnp.where(jnp.isfinite(tok), tok, 0.0) * 0.0
    return tree_map(
        lambda a: (
            a + zero.astype(a.dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a
        ),
        values,
    )


def budget_loss(cell, loss_fn, budget: Budget):
    """``(params, h0, xs, ys, w) -> (L, h_T)`` whose gradient runs the optimal
    schedule (:func:`schedule`) as an explicit reverse.

    Unlike :func:`scan_budget` (nested ``jax.checkpoint``, which XLA may
    merge or hoist), the schedule is spelled out: the forward walks the
    schedule's spine, keeping only each split's input state (and the last
    leaf's residuals); the backward reverses the last leaf with
    :func:`jbptt.backward`, then re-runs each head from its saved input. Each
    re-run's input (and xs, ys) is made data-dependent on the adjoint and the
    parameter gradient accumulated so far (XLA:CPU drops
    ``lax.optimization_barrier``), so XLA can neither hoist a re-run nor
    defer the weight-gradient GEMMs. The forward steps run are
    :func:`forward_steps` ``(T, M)`` blocks and gradients are exact.

    Measured (``benchmarks/bench_memory.py``, LSTM H=64, B=8, T=2000,
    float32, unit=40): compiled temporaries 40 MiB for M = 2, 4 and 8 against
    70 MiB uncheckpointed, so they drop but do not yet fall with M: an O(T)
    term remains that is not the schedule's (unlike ``"sqrt"``, whose
    segments run inside a ``lax.scan``). Compile time grows with the number
    of re-runs (minutes for M = 2 over 50 blocks).

    Only ``params`` and ``h0`` are differentiated (with ``xs`` too, from the
    reverse scan); ``ys`` and ``w`` get zero cotangents.

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
    from jbptt._src.api import sum_of_losses
    from jbptt._src.scan import _backward
    from jbptt._src.scan import forward as _forward

    check_budget(budget)
    u = budget.unit

    def plan(T):
        n = -(-T // u)
        return [min(i * u, T) for i in range(n + 1)], schedule(n, budget.max_states)

    def leaf_forward(params, h, xs, ys, a, b):
        h_b, outs, res = _forward(cell, params, h, _slice(xs, a, b))
        L, vjp = jax.vjp(
            lambda p, o: sum_of_losses(loss_fn, p, o, _slice(ys, a, b)), params, outs
        )
        return L, h_b, (res, vjp)

    def leaf_reverse(params, saved, w, a, b, dh, dL):
        res, vjp = saved
        dp_loss, douts = vjp(dL)
        dp, dh_in, dxs, _ = _backward(cell, params, res, w[a:b], dh, douts)
        return tree_map(jnp.add, dp, dp_loss), dh_in, dxs

    def head_loss(params, h, xs, ys, a, b):  # the head's forward, no residuals
        def body(h, inp):
            x, y = inp
            h, out = cell.step(params, h, x)
            return h, loss_fn(params, out, y)

        h, losses = jax.lax.scan(body, h, (_slice(xs, a, b), _slice(ys, a, b)))
        return jnp.sum(losses), h

    def spine(params, h, xs, ys, node, first, bounds):
        """The forward: ``(L, h_T, [(head, first, h_in)], (leaf, saved))``."""
        L, stack = 0.0, []
        while node[0] == "split":
            _, s, head, tail = node
            a, b = bounds[first], bounds[first + s]
            L_h, h_next = head_loss(params, h, xs, ys, a, b)
            stack.append((head, first, h))
            L, h, node, first = L + L_h, h_next, tail, first + s
        a, b = bounds[first], bounds[first + node[1]]
        L_leaf, h_T, saved = leaf_forward(params, h, xs, ys, a, b)
        return L + L_leaf, h_T, stack, (a, b, saved)

    def statics(node, first):  # the spine's static part: [(head, first)], (a, b)
        heads = []
        while node[0] == "split":
            heads.append((node[2], first))
            node, first = node[3], first + node[1]
        return heads, (first, first + node[1])

    def unwind(params, xs, ys, w, stack, last, dh, dL, bounds):
        """Reverse the last leaf, then re-run and reverse each saved head:
        ``(dparams, dh_in, [dxs pieces in time order])``."""
        a, b, saved = last
        dp, dh, dxs = leaf_reverse(params, saved, w, a, b, dh, dL)
        pieces = [dxs]
        for head, f, h_in in reversed(stack):
            # The re-run waits for the adjoint from the steps after it (and
            # for dp, so every earlier leaf's weight-gradient GEMM is done):
            # XLA:CPU drops lax.optimization_barrier, so the dependency is
            # made arithmetic, a zero that XLA cannot fold (x·0 is not 0 for
            # floats). xs and ys take it too, or XLA would hoist the re-run's
            # input projections (a GEMM of xs alone) and keep them all.
            h_in, xs, ys = _after((h_in, xs, ys), (dh, dp))
            _, _, stack_h, last_h = spine(params, h_in, xs, ys, head, f, bounds)
            dp_h, dh, pieces_h = unwind(
                params, xs, ys, w, stack_h, last_h, dh, dL, bounds
            )
            dp = tree_map(jnp.add, dp, dp_h)
            pieces = pieces_h + pieces
        return dp, dh, pieces

    @jax.custom_vjp
    def objective(params, h0, xs, ys, w):
        bounds, tree = plan(xs.shape[0])
        L, h_T, _, _ = spine(params, h0, xs, ys, tree, 0, bounds)
        return L, h_T

    def fwd(params, h0, xs, ys, w):
        bounds, tree = plan(xs.shape[0])
        L, h_T, stack, (_, _, leaf) = spine(params, h0, xs, ys, tree, 0, bounds)
        h_ins = [h for _, _, h in stack]  # ≤ M − 1 states, plus the leaf's
        return (L, h_T), (params, h0, xs, ys, w, h_ins, leaf)

    def bwd(saved, cotangents):
        params, h0, xs, ys, w, h_ins, leaf = saved
        dL, dh_T = cotangents
        bounds, tree = plan(xs.shape[0])
        heads, (i, j) = statics(tree, 0)
        stack = [(hd, f, h) for (hd, f), h in zip(heads, h_ins, strict=True)]
        last = (bounds[i], bounds[j], leaf)
        dh_T = tree_map(lambda g, h: g.astype(h.dtype), dh_T, h0)
        dL = jnp.asarray(dL, xs.dtype)
        dp, dh, pieces = unwind(params, xs, ys, w, stack, last, dh_T, dL, bounds)
        dxs = jnp.concatenate(pieces)
        zeros = tree_map(jnp.zeros_like, (ys, w))
        return (dp, dh, dxs, *zeros)

    objective.defvjp(fwd, bwd)
    return objective
