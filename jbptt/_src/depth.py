"""Expected truncation depth ``E[min(L, T)]`` of ARTBP's segments, and the
cut probability that reaches a target depth (module :mod:`jbptt.estimators`,
"Expected depth").

With ``P(L > d) = ∏_{i=1}^{d} (1 − c_i)`` (``c_i`` the cut probability i
steps after a segment start), ``E[min(L, T)] = Σ_{d=0}^{T−1} P(L > d)``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jbptt._src import validation


def check_depth(depth, T):
    depth = validation.real("depth", depth, low=1, low_open=True, what="a number > 1")
    if T is None:
        return
    validation.positive_int("T", T, "a positive int (number of steps)")
    if not depth < T:
        raise ValueError(
            f"depth must be < T = {T} for ARTBP (depth T needs c = 0, i.e. full "
            f"BPTT), got {depth!r}."
        )


def bisect(f, lo, hi, target, iters=200):
    """Root of the increasing ``f(x) = target`` in ``[lo, hi]`` (float64)."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
    return 0.5 * (lo + hi)


def artbp_c_for_depth(depth: float, T: int | None = None) -> float:
    """Constant cut probability whose expected depth is ``depth``.

    With ``T``, solves ``E[min(L, T)] = (1 − (1 − c)^T)/c = depth`` (the
    convention of ``Estimator.expected_depth``; needs ``1 < depth < T``).
    Without ``T``, the long-sequence limit ``c = 1/depth``. Use it to compare
    ARTBP with TBPTT(k) at equal depth (``depth = k``).

    Args:
      depth: target mean truncation length, > 1.
      T: sequence length, or None for an unbounded sequence.

    Examples:
      >>> from jbptt import estimators
      >>> from jbptt._src.depth import artbp_c_for_depth
      >>> artbp_c_for_depth(8)
      0.125
      >>> c = artbp_c_for_depth(8, T=16)
      >>> round(c, 4), round(estimators.artbp(c).expected_depth(16), 9)
      (0.1031, 8.0)
    """
    check_depth(depth, T)
    if T is None:
        return 1.0 / depth
    # E[min(L, T)] decreases from T (c → 0) to 1 (c → 1): bisect on c.
    c = bisect(lambda c: -geometric_depth(c, T), 0.0, 1.0, -float(depth))
    return float(c)


def geometric_depth(c: float, T: int) -> float:
    # Σ_{d<T} (1 − c)^d = (1 − (1 − c)^T)/c, written to stay exact as c → 0.
    return float(-np.expm1(T * np.log1p(-c)) / c) if c > 0 else float(T)


def mean_segment_length(c, T: int) -> float:
    """``E[min(L, T)] = 1 + Σ_{d=1}^{T−1} ∏_{i=1}^{d} (1 − c_i)`` in float64.

    ``c_i``: the cut probability i steps after a segment start: ``c(i)`` for a
    schedule, ``c[i]`` for an array (the first segment), ``c`` for a float.
    """
    validation.positive_int("T", T, "a positive int (number of steps)")
    d = np.arange(1, T)
    if callable(c):
        ci = np.broadcast_to(np.asarray(c(jnp.asarray(d)), np.float64), d.shape)
    elif np.ndim(c) == 0:
        ci = np.full(d.shape, float(c))
    else:
        c = np.asarray(c, np.float64)
        if c.shape != (T,):
            raise ValueError(f"c has shape {c.shape} but T = {T}; expected ({T},).")
        ci = c[1:]
    survive = np.cumprod(1.0 - ci)  # P(L > d), d = 1..T−1
    return float(1.0 + np.sum(survive))
