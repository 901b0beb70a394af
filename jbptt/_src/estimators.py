"""Gradient estimators as data: each samples loss weights and link weights.

An estimator draws a stack of J "windows" ``(w_j, m_j)``, both ``[T]``, and
estimates the gradient as

    ĝ = Σ_j ∇_θ^{(w_j)} Σ_t m_{j,t} ℓ_t,

where ``∇^{(w)}`` is the reverse scan with link weights ``w`` (DESIGN.md).
Full BPTT, TBPTT(k) and ARTBP are one window with ``m ≡ 1``; Williams–Peng
TBPTT(k1, k2) is one window per update. Because everything is arrays of
static shape, a list of estimators is sampled and evaluated under one ``jit``
with ``vmap``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jbptt._src import truncation


class Estimator(NamedTuple):
    """A gradient estimator described by the windows it samples.

    Attributes:
      name: short label for tables and plots, e.g. ``"tbptt(k=8)"``.
      sample: ``(key, T) -> (w[J, T], m[J, T])`` link and loss weights;
        traceable, so it can be vmapped over keys.
      expected_depth: ``T -> float``, mean number of steps a gradient is
        backpropagated before a cut (mean truncation length), the cost axis
        on which estimators are compared.
      deterministic: whether ``sample`` ignores its key.
      hparams: hyperparameters, for reports.
    """

    name: str
    sample: Callable[[jax.Array, int], tuple[jax.Array, jax.Array]]
    expected_depth: Callable[[int], float]
    deterministic: bool
    hparams: dict[str, Any]


def _one_window(w):
    return w[None], jnp.ones_like(w)[None]


def full() -> Estimator:
    """Exact BPTT: one window, every link kept."""
    return Estimator(
        "full",
        lambda key, T: _one_window(truncation.full(T)),
        lambda T: float(T),
        True,
        {},
    )


def tbptt(k: int) -> Estimator:
    """TBPTT(k) in chunks of ``k`` starting at t = 0 (deterministic)."""
    truncation.tbptt(1, k)  # validates k
    return Estimator(
        f"tbptt(k={k})",
        lambda key, T: _one_window(truncation.tbptt(T, k)),
        lambda T: float(min(k, T)),
        True,
        {"k": k},
    )


def artbp(c) -> Estimator:
    """ARTBP with cut probability ``c`` (float, ``[T]`` array or schedule).

    For a float ``c`` the mean truncation length is ``1/c`` (capped at T).
    """
    if not callable(c):
        truncation.check_probability("c", c)
    label = getattr(c, "__name__", None) if callable(c) else c

    def depth(T):
        if callable(c):
            return _mean_segment_length(c, T)
        mean_c = float(jnp.mean(jnp.asarray(c)))
        return float(min(T, 1.0 / mean_c)) if mean_c > 0 else float(T)

    return Estimator(
        f"artbp(c={label})",
        lambda key, T: _one_window(truncation.artbp(key, T, c)),
        depth,
        False,
        {"c": c},
    )


def _mean_segment_length(schedule, T: int) -> float:
    """E[steps between cuts] under a steps-since-cut schedule, capped at T."""
    d = jnp.arange(1, T + 1)
    survive = jnp.cumprod(1.0 - schedule(d))  # P(no cut in the first d steps)
    return float(1.0 + jnp.sum(survive[:-1]))
