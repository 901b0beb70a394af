"""Cuts along an unbounded stream, and the static segment lengths they need.

Online training (:func:`jbptt.train.train`) walks a stream that may arrive in
chunks. For the run to be the same however the stream is chunked, the cut
before global step ``t`` must depend only on ``t``, on the steps since the
last cut ``d`` and on the run's key, never on where a chunk starts. A
:class:`CutLaw` says exactly that:

    P(cut before step t | past) = c(t, d),   w_t = 0 if cut else 1/(1 − c),

with one uniform draw ``u_t`` per global step, ``u_t`` the ``t mod 4096``-th
entry of ``uniform(fold_in(key, t // 4096), [4096])``. TBPTT(k) is the
deterministic law ``c = 1`` where ``(t − offset) % k == 0``, else 0; ARTBP is
``c = c(d)`` (Tallec & Ollivier 2017); full BPTT never cuts.

The same law fixes the static lengths (buckets) a segment is padded to:
:func:`buckets` chooses at most ``max_buckets`` lengths from the law's
segment-length distribution, the largest at its ``quantile``, so that the
expected padding is smallest (dynamic programming over the lengths). A longer
segment is split at the largest bucket (train.py carries the state forward
and the cotangent backward across the split, so its gradient is unchanged).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_BLOCK = 4096  # uniforms drawn per key fold: u_t for t in one block


class CutLaw(NamedTuple):
    """The law of the cuts along a stream.

    Attributes:
      prob: ``key -> c``, where ``c(t, d)`` is the probability (in [0, 1]) of a
        cut before global step ``t ≥ 1`` when the last cut was ``d`` steps
        earlier (the stream start counts as a cut at t = 0); without
        ``memory``, ``t`` is an integer array and ``c`` a float array of its
        shape.
      survival: ``n -> P(L > d)`` for ``d = 0..n`` (array ``[n + 1]``), the
        law of a segment's length L; ``None`` when segments never end
        (full BPTT).
      random: whether cuts depend on the key's draws.
      memory: whether ``c`` depends on ``d`` (a renewal law, e.g. ARTBP's
        ``c(d)``): its cuts are drawn one step at a time (``c`` then gets
        integer scalars); without it, all steps' cuts at once.
      renewal: optional ``n -> c(d)`` for ``d = 1..n`` (array ``[n]``), the
        same values ``prob(key)(t, d)`` gives for every key and ``t``: a law
        whose cut probability depends on ``d`` only. :func:`draw_streams`
        then walks many streams' steps together.
    """

    prob: Callable[[jax.Array], Callable[[np.ndarray, np.ndarray], np.ndarray]]
    survival: Callable[[int], np.ndarray] | None
    random: bool
    memory: bool = False
    renewal: Callable[[int], np.ndarray] | None = None


def never() -> CutLaw:
    """No cuts (full BPTT): the whole stream is one segment."""
    return CutLaw(lambda key: lambda t, d: np.zeros(np.shape(t)), None, False)


def periodic(k: int, random_offset: bool = False) -> CutLaw:
    """TBPTT(k): a cut before every step with ``(t − offset) % k == 0``;
    ``offset`` uniform on ``{0, …, k − 1}`` from the key when
    ``random_offset``, else 0."""

    def prob(key):
        off = int(jax.random.randint(key, (), 0, k)) if random_offset else 0
        return lambda t, d: np.where((t - off) % k == 0, 1.0, 0.0)

    def survival(n):
        return (np.arange(n + 1) < k).astype(float)

    return CutLaw(prob, survival, False)


def _survival_from_table(table: np.ndarray) -> np.ndarray:
    # P(L > d) = ∏_{i ≤ d} (1 − c_i), c_i the cut probability i steps in.
    return np.concatenate([[1.0], np.cumprod(1.0 - table)])


def constant(c: float) -> CutLaw:
    """ARTBP with one cut probability ``c`` at every step (geometric lengths)."""
    c = float(c)
    return CutLaw(
        lambda key: lambda t, d: np.full(np.shape(t), c),
        lambda n: _survival_from_table(np.full(n, c)),
        True,
    )


def positional(c) -> CutLaw:
    """ARTBP with ``c[t]`` the cut probability before global step t; the
    stream may not run past ``len(c)``."""
    c = np.asarray(c, float)

    def at(t, d):
        if np.size(t) and np.max(t) >= c.shape[0]:
            raise ValueError(
                f"c has cut probabilities for {c.shape[0]} steps; the stream "
                f"reached step {max(np.min(t), c.shape[0])}. Use a float or a "
                "schedule for long streams."
            )
        return c[t]

    def survival(n):
        table = np.concatenate([c[1:], np.full(max(0, n + 1 - c.shape[0]), 0.0)])
        return _survival_from_table(table[:n])

    return CutLaw(lambda key: at, survival, True)


def schedule(fn: Callable) -> CutLaw:
    """ARTBP with ``c = fn(d)``, ``d`` the steps since the last cut."""

    @functools.cache
    def table(size):  # fn(1..size), evaluated once per doubling of d
        d = jnp.arange(1, size + 1, dtype=jnp.result_type(float))
        return np.asarray(fn(d), float)

    def prob(key):
        size = [256]

        def c(t, d):  # a law with memory: called with one step's ints
            while d > size[0]:
                size[0] *= 2
            return float(table(size[0])[d - 1])

        return c

    def upto(n):  # c(1..n), read from the same tables as prob's
        size = 256
        while size < n:
            size *= 2
        return table(size)[:n]

    def survival(n):
        return _survival_from_table(upto(n))

    return CutLaw(prob, survival, True, memory=True, renewal=upto)


@functools.partial(jax.jit, static_argnums=1)
def _uniforms(key, dtype):
    return jax.random.uniform(key, (_BLOCK,), dtype)


def _uniforms_at(key, t0: int, T: int) -> np.ndarray:
    """``u_t`` for ``t = t0 .. t0 + T − 1``: entry ``t mod 4096`` of the
    uniforms of ``fold_in(key, t // 4096)``."""
    dtype = jnp.result_type(float)
    first, last = t0 // _BLOCK, (t0 + T - 1) // _BLOCK
    u = np.concatenate(
        [np.asarray(_uniforms(jax.random.fold_in(key, j), dtype))
         for j in range(first, last + 1)]
    )  # fmt: skip
    return u[t0 - first * _BLOCK : t0 - first * _BLOCK + T]


def _cut(c: np.ndarray, u: np.ndarray | None) -> np.ndarray:
    """Cut where ``c ≥ 1``, never where ``c ≤ 0``, else where ``u < c`` (``c``
    compared in ``u``'s float width, as a scalar ``u_t < c`` would be)."""
    if u is None:
        return c >= 1.0
    return (c >= 1.0) | ((c > 0.0) & (u < c.astype(u.dtype)))


def _weights(cut: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Link weights: 0 at a cut, else the compensation ``1 / (1 − c)``."""
    return np.where(cut, 0.0, 1.0 / (1.0 - np.where(cut, 0.0, c)))


def draw(law: CutLaw, key, t0: int, T: int, d: int):
    """Link weights for global steps ``t0 .. t0 + T − 1``.

    Args:
      law: a :class:`CutLaw`.
      key: the run's key (the same for every chunk of the stream).
      t0: global index of the first step.
      T: number of steps.
      d: steps since the last cut, as of step ``t0`` (1 at ``t0 = 1``; any
        value at ``t0 = 0``, whose link into the initial state is never cut).

    Returns:
      ``(w, d)``: numpy link weights ``[T]`` (``w = 0`` marks a cut before
      that step) and the steps since the last cut as of step ``t0 + T``.

    Examples:
      >>> import jax
      >>> from jbptt._src import stream
      >>> w, d = stream.draw(stream.periodic(3), jax.random.key(0), 0, 7, 1)
      >>> w.tolist(), d
      ([1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0], 1)
    """
    c_of = law.prob(key)
    w = np.ones(T)  # link weights, float64 (1 / (1 − c))
    i = 0
    if t0 == 0 and T:  # the link into the initial state: never cut
        d, i = 1, 1
    if i == T:
        return w, d
    t = np.arange(t0 + i, t0 + T)
    u = _uniforms_at(key, t0 + i, T - i) if law.random else None
    if law.memory:
        return _draw_renewal(c_of, t, u, w, i, d)
    c = np.broadcast_to(np.asarray(c_of(t, np.zeros_like(t)), float), t.shape)
    cut = _cut(c, u)
    w[i:] = _weights(cut, c)
    last = np.flatnonzero(cut)
    return w, (len(t) - int(last[-1]) if len(last) else d + len(t))


def _draw_renewal(c_of, t, u, w, i, d):
    """``draw`` for a law with memory, one step at a time (the cut before a
    step sets the ``d`` of the next); ``w[i:]`` gets the weights of ``t``."""
    for j, tj in enumerate(t.tolist()):
        c = float(c_of(tj, d))
        if c >= 1.0 or (c > 0.0 and u is not None and u[j] < c):
            w[i + j], d = 0.0, 1
        else:
            w[i + j], d = 1.0 / (1.0 - c), d + 1
    return w, d


_TOGETHER = 12  # streams from which a vector step beats a Python step each


def draw_streams(law: CutLaw, keys, t0: int, T: int, d):
    """:func:`draw` for many streams, stream ``j`` with its own key.

    Args:
      law: a :class:`CutLaw`.
      keys: one key per stream (a sequence of ``n`` keys).
      t0, T: as in :func:`draw`, shared by the streams.
      d: steps since each stream's last cut, ints ``[n]``.

    Returns:
      ``(w, d)``: link weights ``[T, n]``, column ``j`` bitwise
      ``draw(law, keys[j], t0, T, d[j])``, and the new ``d`` ``[n]``. A
      renewal law (``law.renewal``) walks the steps once for all streams
      (from 12 streams on), a few vector operations per step instead of one
      Python step per stream and step, with the same draws; other laws draw
      each stream at once along its steps.

    Examples:
      >>> import jax
      >>> from jbptt import truncation
      >>> from jbptt._src import stream
      >>> law = stream.schedule(truncation.poly_tail(8.0, 4.0))
      >>> keys = [jax.random.key(j) for j in range(3)]
      >>> w, d = stream.draw_streams(law, keys, 0, 100, [1, 1, 1])
      >>> w.shape, d.shape
      ((100, 3), (3,))
    """
    d = np.asarray(d, int).reshape(-1)
    n = len(keys)
    if d.shape[0] != n:
        raise ValueError(f"d: one count per stream expected ({n}), got {d.shape[0]}.")
    if law.renewal is None or n < _TOGETHER:
        cols = [draw(law, k, t0, T, int(dj)) for k, dj in zip(keys, d, strict=True)]
        w = np.stack([c[0] for c in cols], axis=1) if n else np.ones((T, 0))
        return w, np.asarray([c[1] for c in cols], int)
    w = np.ones((T, n))
    i = 0
    if t0 == 0 and T:  # the link into the initial state: never cut
        d, i = np.ones(n, int), 1
    if i == T:
        return w, d
    u = None
    if law.random:
        u = np.stack([_uniforms_at(k, t0 + i, T - i) for k in keys], axis=1)
    D = np.empty((T - i, n), int)  # each step's d, before its cut is drawn
    fresh, size = 0, 256  # c must grow from step fresh on (d grows ≤ 1 a step)
    for j in range(T - i):
        if j == fresh:  # c[1..size] covers every d so far and the next ones
            top = int(d.max())
            while size <= top + 1:
                size *= 2
            c = np.concatenate([[np.nan], np.asarray(law.renewal(size), float)])
            cut_at = c >= 1.0 if u is None else c.astype(u.dtype)  # c[d], d ≥ 1
            fresh = j + size - top
        D[j] = d
        # draw's rule: a cut iff c ≥ 1, or c > 0 and u < c; for u in [0, 1)
        # that is u < c (in u's width)
        cut = cut_at[d] if u is None else u[j] < cut_at[d]
        d = np.where(cut, 1, d + 1)
    C = c[D]
    w[i:] = _weights(_cut(C, u), C)
    return w, d


@functools.lru_cache(maxsize=256)  # once per law: train asks on every call
def buckets(
    law: CutLaw,
    min_bucket: int = 8,
    max_buckets: int = 6,
    quantile: float = 0.99,
    max_length: int = 512,
) -> tuple[int, ...]:
    """Static segment lengths for a law: at most ``max_buckets`` lengths, the
    largest the ``quantile`` of the segment length (at most ``max_length``;
    ``max_length`` itself when segments never end), the others chosen to
    minimise the expected padding ``E[b(L) − L]`` over ``L ≤`` the largest,
    ``b(L)`` the smallest bucket ≥ L. None is below ``min_bucket`` unless the
    largest is (TBPTT(k) gets the one bucket k).

    Examples:
      >>> from jbptt._src import stream
      >>> stream.buckets(stream.periodic(16))
      (16,)
      >>> stream.buckets(stream.never(), max_length=64)
      (8, 16, 24, 40, 64)
    """
    if law.survival is None:  # one endless segment: blocks of max_length
        b, out = min_bucket, []
        while b < max_length:
            out.append(b)
            b = int(np.ceil(b * 1.5 / 8) * 8) if b >= 8 else b * 2
        return tuple(sorted(set([*out, max_length])))
    S = law.survival(max_length)
    top = int(np.searchsorted(-S, -(1.0 - quantile), side="right"))
    top = max(1, min(top, max_length))
    pmf = S[:-1] - S[1:]  # P(L = n), n = 1..max_length
    lo = min(min_bucket, top)
    p = pmf[:top]  # lengths 1..top
    p = np.where(np.arange(1, top + 1) <= lo, 0.0, p)  # ≤ lo: bucket lo or more
    p[lo - 1] = pmf[:lo].sum()
    # cost(a, b): expected padding of lengths a < L ≤ b in bucket b.
    n = np.arange(1, top + 1)
    cum_p = np.concatenate([[0.0], np.cumsum(p)])
    cum_np = np.concatenate([[0.0], np.cumsum(p * n)])

    def cost(a, b):  # lengths in (a, b], bucket b
        return b * (cum_p[b] - cum_p[a]) - (cum_np[b] - cum_np[a])

    K = max(1, min(max_buckets, top - lo + 1))
    # best[j][b]: least padding of lengths ≤ b with j buckets, the largest b.
    inf = float("inf")
    best = np.full((K + 1, top + 1), inf)
    arg = np.zeros((K + 1, top + 1), int)
    for b in range(lo, top + 1):
        best[1][b] = cost(0, b)
    for j in range(2, K + 1):
        for b in range(lo + 1, top + 1):
            a = np.arange(lo, b)  # the previous bucket, vectorised
            v = best[j - 1][a] + cost(a, b)
            i = int(np.argmin(v))
            best[j][b], arg[j][b] = v[i], a[i]
    j = int(np.argmin(best[1:, top])) + 1
    out, b = [top], top
    while j > 1:
        b = int(arg[j][b])
        out.append(b)
        j -= 1
    return tuple(sorted(out))
