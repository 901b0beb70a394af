"""The optimal store/recompute schedule for M stored states (revolve).

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

This module is pure NumPy (host side): the dynamic program, the split tree,
a replay that counts slots, and the tree flattened into a :class:`Program`
that :mod:`jbptt._src.checkpointing` runs with loops.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np


def check_budget(budget):
    """Validate a :class:`jbptt.Budget` (``max_states`` ≥ 2, ``unit`` ≥ 1,
    both ints); raises a clear error otherwise, returns it unchanged.

    Examples:
      >>> import jbptt
      >>> from jbptt._src.revolve import check_budget
      >>> check_budget(jbptt.Budget(max_states=4)).max_states
      4
    """
    if not (hasattr(budget, "max_states") and hasattr(budget, "unit")):
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


# ------------------------------------------- the schedule as a program ---

ADVANCE, LEAF = 0, 1  # the two kinds of action of a Program


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
def program(T: int, budget) -> Program:
    """Flatten the optimal schedule of ``T`` steps under ``budget``.

    ``budget`` is a :class:`jbptt.Budget` (anything hashable with int
    ``max_states`` and ``unit``, checked by :func:`check_budget`).

    Examples:
      >>> import jbptt
      >>> from jbptt._src.revolve import program, forward_steps
      >>> p = program(10, jbptt.Budget(3))
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
            acts.append((LEAF, slot, a, bounds[first + t]))
            continue
        s = int(S[m, t])
        acts.append((ADVANCE, slot, a, bounds[first + s]))
        todo.append((first, s, m, slot))  # head: after the tail, same slots
        todo.append((first + s, t - s, m - 1, slot + 1))  # tail: next
    d = next(i for i, act in enumerate(acts) if act[0] == LEAF)
    rest = acts[d + 1 :]
    lengths = tuple(sorted({b - a for k, _, a, b in rest if k == LEAF}))
    col = np.array([(k, s, a, b) for k, s, a, b in rest], np.int32).reshape(-1, 4)
    branch = np.array(
        [lengths.index(b - a) if k == LEAF else 0 for k, _, a, b in rest], np.int32
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
        slots=1 + max(s + (k == ADVANCE) for k, s, _, _ in acts),
        steps=sum(b - a for _, _, a, b in acts),
    )
