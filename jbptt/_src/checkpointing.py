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
