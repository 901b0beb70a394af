r"""Solving the diagonal linear recurrence ``h_t = a_t ⊙ h_{t-1} + b_t``.

One job: the states of the recurrence over all steps, forward
(:func:`solve`) or backward (:func:`solve_reverse`), by one of
:data:`METHODS`: ``"sequential"`` (a fused ``lax.scan`` whose carry is one
array), ``"associative"`` (``jax.lax.associative_scan``, depth O(log T)),
``"blocked"`` (sequential within chunks of C steps, all chunks at once, then
the chunk carries, then one fix-up pass: 2C + T/C loop iterations), or
``"auto"``, the one measured fastest on the backend (:data:`AUTO`).
:mod:`jbptt._src.diagonal_scan` builds a diagonal cell's forward and reverse
pass on them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

METHODS = ("auto", "sequential", "associative", "blocked")

# "auto" by backend. XLA:CPU: the fused sequential loop (measured on 2 cores,
# float32 minGRU value+grad, T = 4096, B = 8, H = 64: lax.scan 47.5 ms,
# associative_scan 71.0 ms, blocked 54.2 ms; the parallel forms lose at every
# shape measured, docs/design.md "Diagonal recurrences"). GPU/TPU: the
# associative scan, whose O(log T) depth replaces T sequential steps (each a
# kernel launch on a GPU); not measured here, no accelerator being at hand.
AUTO = {"cpu": "sequential", "gpu": "associative", "tpu": "associative"}
AUTO_HOW = ("auto", None)  # (method, chunk)


def check_method(method, chunk) -> None:
    """``method`` one of :data:`METHODS`, ``chunk`` ``None`` or an int ≥ 1."""
    if method not in METHODS:
        raise ValueError(
            f"method: unknown method {method!r}. It needs to be one of {list(METHODS)}."
        )
    bad_int = not isinstance(chunk, int) or isinstance(chunk, bool)
    if chunk is not None and (bad_int or chunk < 1):
        raise ValueError(f"chunk must be None or an int ≥ 1, got {chunk!r}.")


def resolve_method(method: str) -> str:
    """``"auto"`` → the method of :data:`AUTO` for ``jax.default_backend()``."""
    if method != "auto":
        return method
    return AUTO.get(jax.default_backend(), "associative")


# ------------------------------------------------------------ the solvers ---


def sequential(a, b, h0):
    def body(h, ab):
        h = ab[0] * h + ab[1]  # h_t = a_t ⊙ h_{t-1} + b_t
        return h, h

    return jax.lax.scan(body, h0, (a, b))[1]


def _combine(left, right):
    # (a1, b1) then (a2, b2): h ↦ a2 (a1 h + b1) + b2
    a1, b1 = left
    a2, b2 = right
    return a2 * a1, a2 * b1 + b2


def _associative(a, b, h0):
    b = b.at[0].add(a[0] * h0)  # h_0 = a_0 h0 + b_0: the prefix of b is h
    return jax.lax.associative_scan(_combine, (a, b))[1]


def chunk_length(T: int, chunk: int | None) -> int:
    """The blocked scan's chunk: ``chunk`` or ⌈√(T/2)⌉ (fewest 2C + T/C)."""
    return chunk if chunk is not None else max(1, math.ceil(math.sqrt(T / 2)))


def _blocked(a, b, h0, chunk):
    T = a.shape[0]
    C = min(chunk_length(T, chunk), T)
    n = -(-T // C)
    pad = n * C - T  # trailing steps (1, 0) keep the state

    def chunks(v, fill):  # [T, ...] -> [C, n, ...]: step j of every chunk
        v = jnp.concatenate([v, jnp.full((pad, *v.shape[1:]), fill, v.dtype)])
        return jnp.moveaxis(v.reshape(n, C, *v.shape[1:]), 1, 0)

    a, b = chunks(a, 1), chunks(b, 0)

    def compose(carry, ab):  # every chunk's map h ↦ A h + B, all chunks at once
        A, B = carry
        return _combine((A, B), ab), None

    (A, B), _ = jax.lax.scan(
        compose, (jnp.ones_like(a[0]), jnp.zeros_like(b[0])), (a, b)
    )
    h_ends = sequential(A, B, h0)  # [n, ...]: the state after each chunk
    h_starts = jnp.concatenate([h0[None], h_ends[:-1]])
    hs = sequential(a, b, h_starts)  # [C, n, ...]: the fix-up within chunks
    return jnp.moveaxis(hs, 0, 1).reshape(n * C, *hs.shape[2:])[:T]


def solve(a, b, h0, how) -> jax.Array:
    """``h_t = a_t ⊙ h_{t-1} + b_t`` for t = 0..T-1 from ``h_{-1} = h0``.

    Args:
      a, b: ``[T, *batch, H]`` (the same shape).
      h0: ``[*batch, H]``.
      how: ``(method, chunk)``, method one of :data:`METHODS`.

    Returns:
      The states ``[T, *batch, H]``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jbptt._src.diagonal_solve import solve
      >>> a, b = jnp.full((5, 1), 0.5), jnp.ones((5, 1))
      >>> solve(a, b, jnp.zeros(1), ("blocked", 2))[:, 0].tolist()
      [1.0, 1.5, 1.75, 1.875, 1.9375]
    """
    method, chunk = how
    method = resolve_method(method)
    if method == "sequential":
        return sequential(a, b, h0)
    if method == "associative":
        return _associative(a, b, h0)
    return _blocked(a, b, h0, chunk)


def solve_reverse(c, g, e_last, how) -> jax.Array:
    """``E_t = g_t + c_t ⊙ E_{t+1}`` for t = T-1..0 from ``E_T = e_last``."""
    if resolve_method(how[0]) == "sequential":  # no flips: a reverse scan

        def body(e, cg):
            e = cg[0] * e + cg[1]
            return e, e

        return jax.lax.scan(body, e_last, (c, g), reverse=True)[1]
    return solve(c[::-1], g[::-1], e_last, how)[::-1]
