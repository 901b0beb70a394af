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

**Closed form.** Solving the program costs O(M·T²); this module never
tabulates it. With β(c, r) = C(c + r, c), β(m − 1, r) is the longest chain m
slots reverse running no step more than r times (a leaf runs each step once;
β(m−1, r) = β(m−1, r−1) + β(m−2, r): a head of β(m−1, r−1) steps re-run with
one run fewer to spare, a tail of β(m−2, r) with one slot fewer). Write a
longer chain as t = β(m − 1, r) + n, 0 < n ≤ β(m − 2, r + 1) (band r ≥ 1).
Every step costs 1 + the number of heads it lies in; the chain of
β(m − 1, r) steps has its leaves at head depth ≤ r − 1, and the n extra
steps come from splitting leaves at depth r − 1: splitting one at tail
depth τ (m − τ slots) moves one of its steps a level up and makes room for
up to g = m − 1 − τ more, each at cost r + 1, so its first extra step costs
r + 2 and the next g − 1 cost r + 1. There are c_r(g) = C(r + m − 2 − g,
r − 1) such *items* of size g, and the fewest items that hold n steps, k(n),
take the largest first. Hence

    F(t, m) = r·β(m−1, r) − β(m, r−2) + (r + 1)·n + k(n),

and an optimal split: s = 1 + min(n, m − 1) in band 1 (the root is the
first item); in band r ≥ 2 the head (m slots) lies in band r − 1 and the
tail (m − 1 slots) in band r, the head owning c_{r−1}(g) of the c_r(g)
items of size g (Pascal again), so s = β(m − 1, r − 1) + the steps of the
chosen items that are the head's. Each split costs O(log M) binomials; the
tests check F and every split against the dynamic program for all T ≤ 200,
M ≤ 8, and the schedule built from them against an independent replay.

This module is pure Python and NumPy (host side): the closed form, the split
tree, a replay that counts slots, and the tree flattened into a
:class:`Program` that :mod:`jbptt._src.checkpointing` runs with loops.
"""

from __future__ import annotations

import functools
import math
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
            why = " (a bool is not a number)" if isinstance(v, bool) else ""
            raise ValueError(f"Budget.{name} must be an int ≥ {low}, got {v!r}{why}.")
    return budget


# ----------------------------------------------------------- closed form ---


def _beta(c: int, r: int) -> int:
    """β(c, r) = C(c + r, c); 0 for r < 0."""
    return math.comb(c + r, c) if r >= 0 else 0


def _band(t: int, m: int, r: int = 1) -> int:
    """The band r ≥ 1 of t > m ≥ 2: β(m−1, r) < t ≤ β(m−1, r+1); ``r`` is a
    guess (a parent's band is at most two above its children's)."""
    if m == 2:  # β(1, r) = r + 1: each band holds one chain length
        return t - 2
    lo, hi = 1, r
    while _beta(m - 1, hi + 1) < t:  # a low guess grows geometrically
        lo, hi = hi + 1, 2 * hi + 2
    while lo < hi:  # β(m−1, lo) < t ≤ β(m−1, hi + 1): bisect, the top first
        if _beta(m - 1, hi) < t:
            return hi
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi - 1) if _beta(m - 1, mid + 1) < t else (lo, mid)
    return lo


def _items(g: int, r: int, m: int) -> int:
    """c_r(g) = C(r + m − 2 − g, r − 1): band r's items of size g."""
    return math.comb(r + m - 2 - g, r - 1) if r >= 1 else 0


def _room(g: int, r: int, m: int) -> int:
    """Steps held by band r's items of size ≥ g: Σ_{h≥g} h·c_r(h)."""
    if r < 1:
        return 0
    return (g - 1) * math.comb(r + m - 1 - g, r) + math.comb(r + m - g, r + 1)


def _greedy(n: int, r: int, m: int) -> tuple[int, int]:
    """The smallest item size g the largest-first cover of n steps uses, and
    the steps left to the items of size g."""
    lo, hi = 1, m - 1  # the largest g with _room(g) ≥ n (_room falls with g)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _room(mid, r, m) >= n else (lo, mid - 1)
    return lo, n - _room(lo + 1, r, m)


def forward_steps(T: int, M: int) -> int:
    """F(T, M): forward steps (first pass included) of the optimal schedule.

    The closed form of the module docstring: O(log T + log M) binomials.

    Examples:
      >>> from jbptt._src.revolve import forward_steps
      >>> forward_steps(10, 2), forward_steps(10, 4), forward_steps(10, 10)
      (54, 19, 10)
    """
    if T <= M:
        return T
    if M < 2:
        raise ValueError(f"max_states must be ≥ 2 (or ≥ T = {T}), got {M}.")
    r = _band(T, M)
    n = T - _beta(M - 1, r)
    g, rest = _greedy(n, r, M)
    k = math.comb(r + M - 2 - g, r) + -(-rest // g)  # items of size > g, then g
    return r * _beta(M - 1, r) - _beta(M, r - 2) + (r + 1) * n + k


def recomputations(T: int, M: int) -> int:
    """Recomputed forward steps F(T, M) − T of the optimal schedule."""
    return forward_steps(T, M) - T


def split(t: int, m: int, r: int = 1) -> tuple[int, int]:
    """An optimal split ``(s, r)`` of t > m steps over m ≥ 2 slots: the head's
    length s and t's band r (``r`` on input: a guess, e.g. the parent's).

    Examples:
      >>> from jbptt._src.revolve import split, forward_steps
      >>> s, _ = split(100, 5)
      >>> s + forward_steps(s, 5) + forward_steps(100 - s, 4) == forward_steps(100, 5)
      True
    """
    r = _band(t, m, r)
    n = t - _beta(m - 1, r)
    if r == 1:  # the root is the first item: its head holds 1 + its share
        return 1 + min(n, m - 1), r
    g, rest = _greedy(n, r, m)
    head = _room(g + 1, r - 1, m) + min(_items(g, r - 1, m) * g, rest)
    return _beta(m - 1, r - 1) + head, r


def schedule(T: int, M: int):
    """The optimal split tree: ``("leaf", t)`` or ``("split", s, head, tail)``."""
    M = min(M, T)

    def build(t, m):
        if t <= m:
            return ("leaf", t)
        s, _ = split(t, m)
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
    ``max_states`` and ``unit``, checked by :func:`check_budget`). Host side,
    O(K log M) for K actions (at most about 2T/unit) and O(K) memory in
    NumPy arrays.

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
    kind, slot, start, stop = _actions(n, min(budget.max_states, n))
    start, stop = np.minimum(start * u, T), np.minimum(stop * u, T)  # blocks → steps
    d = int(np.argmax(kind == LEAF))  # the first leaf: the first pass's
    lengths = np.unique((stop - start)[d + 1 :][kind[d + 1 :] == LEAF])
    rest = slice(d + 1, None)
    branch = np.where(
        kind[rest] == LEAF, np.searchsorted(lengths, stop[rest] - start[rest]), 0
    )
    return Program(
        spine=np.stack([start[:d], stop[:d]], axis=1).astype(np.int32),
        first_leaf=(int(start[d]), int(stop[d])),
        kind=kind[rest],
        slot=slot[rest],
        start=start[rest].astype(np.int32),
        stop=stop[rest].astype(np.int32),
        branch=branch.astype(np.int32),
        leaf_lengths=tuple(int(x) for x in lengths),
        slots=int(np.max(slot + (kind == ADVANCE))) + 1,
        steps=int(np.sum(stop - start)),
    )


def _pairs(t: int, m: int, first: int, slot: int) -> np.ndarray:
    """The subtree of t ≤ m (a leaf) or of t > m = 2 blocks, as action rows.

    With two slots every split is s = t − 1 (a tail of one block), so the
    subtree is t − 2 pairs (advance over blocks first..j−1, leaf j−1) and a
    last leaf of two blocks, made without a Python loop.
    """
    if t <= m:
        return np.array([[LEAF, slot, first, first + t]], np.int64)
    j = np.arange(t, 2, -1, dtype=np.int64) + first  # each pair's end
    rows = np.empty((2 * (t - 2) + 1, 4), np.int64)
    rows[:-1:2] = (ADVANCE, slot, first, 0)
    rows[:-1:2, 3] = j - 1
    rows[1:-1:2] = (LEAF, slot + 1, 0, 0)
    rows[1:-1:2, 2], rows[1:-1:2, 3] = j - 1, j
    rows[-1] = (LEAF, slot, first, first + 2)
    return rows


class _Rows:
    """A growing ``[K, 4]`` table of actions (kind, slot, a, b)."""

    def __init__(self):
        self.data, self.n = np.empty((1024, 4), np.int64), 0

    def add(self, rows):
        while self.n + len(rows) > len(self.data):  # amortised doubling
            self.data = np.concatenate([self.data, np.empty_like(self.data)])
        self.data[self.n : self.n + len(rows)] = rows
        self.n += len(rows)


def _actions(n: int, M: int):
    """The split tree of n blocks over M slots, depth first, tail before
    head, as ``(kind, slot, a, b)`` arrays in blocks (see :class:`Program`).

    A subtree (t, m) recurs many times (the same head or tail length at the
    same depth): its rows are made once and later copied, shifted in blocks
    and slots, so the Python work is one split per *distinct* subtree (a
    few hundred at T = 100 000) and the rest is NumPy.
    """
    out, done = _Rows(), {}  # done: (t, m) → (rows' span, first block, slot)
    todo = [(0, n, M, 0, 1)]  # (first block, blocks, slots, slot, band guess)
    while todo:  # iterative: the tree can be thousands deep
        first, t, m, slot, r = todo.pop()
        if m < 0:  # the end of subtree (t, −m − 1)'s rows: remember them
            done[(t, -m - 1)] = ((r, out.n), first, slot)
        elif t <= m or m == 2:
            out.add(_pairs(t, m, first, slot))
        elif (t, m) in done:
            (a, b), first0, slot0 = done[(t, m)]
            shift = np.array([0, slot - slot0, first - first0, first - first0])
            out.add(out.data[a:b] + shift)
        else:
            s, r = split(t, m, r)
            todo.append((first, t, -m - 1, slot, out.n))  # after the head
            todo.append((first, s, m, slot, max(r - 1, 1)))  # head: after tail
            todo.append((first + s, t - s, m - 1, slot + 1, r))  # tail: next
            out.add(np.array([[ADVANCE, slot, first, first + s]], np.int64))
    kind, slot, a, b = out.data[: out.n].T
    return kind.astype(np.int32), slot.astype(np.int32), a, b
