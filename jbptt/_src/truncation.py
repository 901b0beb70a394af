"""Truncation as data: link weights ``w`` (shape ``[T]``) for every estimator.

``w[t]`` scales the gradient crossing from step t back into step t−1
(``w[0]``: into ``h0``). Full BPTT is ``w ≡ 1``; a cut is ``w[t] = 0``; ARTBP
(Tallec & Ollivier 2017) cuts at random and reweights surviving links by
``1/(1 − c_t)`` so that the gradient estimate is unbiased.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def _check_T(T) -> None:
    if not isinstance(T, int) or isinstance(T, bool) or T <= 0:
        raise ValueError(f"T must be a positive int (number of steps), got {T!r}.")


def _check_k(name, k) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise ValueError(f"{name} must be a positive int, got {k!r}.")


def full(T: int, dtype=None) -> jax.Array:
    """Full BPTT: every link kept, ``w ≡ 1``.

    Examples:
      >>> from jbptt import truncation
      >>> truncation.full(3).tolist()
      [1.0, 1.0, 1.0]
    """
    _check_T(T)
    return jnp.ones((T,), dtype or jnp.result_type(float))


def tbptt(T: int, k: int, offset: int = 0, dtype=None) -> jax.Array:
    """TBPTT(k): chunks of ``k`` steps, cut where ``(t − offset) % k == 0``.

    ``offset`` may be a traced integer (random offsets under ``vmap``).

    Examples:
      >>> from jbptt import truncation
      >>> truncation.tbptt(6, 3).tolist()
      [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    """
    _check_T(T)
    _check_k("k", k)
    t = jnp.arange(T)
    return jnp.where((t - offset) % k == 0, 0.0, 1.0).astype(
        dtype or jnp.result_type(float)
    )


Schedule = Callable[[jax.Array], jax.Array]


def check_probability(name: str, c) -> None:
    """Concrete ``c`` must lie in [0, 1); traced values are not checked."""
    try:
        lo, hi = float(jnp.min(c)), float(jnp.max(c))
    except jax.errors.ConcretizationTypeError:
        return
    if not (0.0 <= lo and hi < 1.0):
        raise ValueError(
            f"{name} (cut probability) must lie in [0, 1), got values in "
            f"[{lo}, {hi}]."
        )


def artbp(key: jax.Array, T: int, c, dtype=None) -> jax.Array:
    """ARTBP link weights: cut with probability ``c_t``, else ``1/(1 − c_t)``.

    The link into ``h0`` (``w[0]``) is never cut. ``c`` is one of

    * a float: the same probability at every step;
    * an array ``[T]``: ``c[t]`` for step t (``c[0]`` is ignored);
    * a schedule ``d -> c``: the probability as a function of the number of
      steps ``d ≥ 1`` since the last cut (the sequence start counts as one),
      e.g. :func:`poly_tail`. Sampled sequentially with ``lax.scan``.

    Works under ``jit`` and ``vmap`` (over keys), reproducible from ``key``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jbptt import truncation
      >>> w = truncation.artbp(jax.random.key(0), 8, 0.25)
      >>> float(w[0]), bool(jnp.all((w[1:] == 0) | jnp.isclose(w[1:], 4 / 3)))
      (1.0, True)
    """
    _check_T(T)
    dtype = dtype or jnp.result_type(float)
    if callable(c):
        return _artbp_schedule(key, T, c, dtype)
    c = jnp.asarray(c, dtype)
    if c.ndim == 0:
        c = jnp.full((T,), c)
    if c.shape != (T,):
        raise ValueError(f"c must be a float, an array of shape ({T},) or a "
                         f"schedule; got shape {c.shape}.")
    check_probability("c", c[1:])
    u = jax.random.uniform(key, (T,), dtype)
    w = jnp.where(u < c, 0.0, 1.0 / (1.0 - c)).astype(dtype)
    return w.at[0].set(1.0)


def _artbp_schedule(key, T, schedule: Schedule, dtype):
    u = jax.random.uniform(key, (T,), dtype)

    def body(d, u_t):  # d: steps since the last cut, as of step t
        c_t = schedule(d).astype(dtype)
        cut = u_t < c_t
        w_t = jnp.where(cut, 0.0, 1.0 / (1.0 - c_t))
        return jnp.where(cut, 1, d + 1), w_t.astype(dtype)

    _, w = jax.lax.scan(body, jnp.asarray(1), u[1:])
    return jnp.concatenate([jnp.ones((1,), dtype), w])


def geometric(mean_length: float) -> Schedule:
    """Constant cut probability ``c = 1/L``: mean truncation length ``L``.

    Weights grow like ``(1 − c)^−k`` along a length-k segment: high variance
    (Tallec & Ollivier 2017, §4).
    """
    if not mean_length > 1:
        raise ValueError(f"mean_length must be > 1, got {mean_length!r}.")
    return lambda d: jnp.full(jnp.shape(d), 1.0 / mean_length)


def poly_tail(mean_length: float, alpha: float = 4.0) -> Schedule:
    """``c_d = (α − 1)/((α − 2) L₀ + d)``: polynomial-tailed truncation lengths.

    Mean length ``L₀``; the reweighting grows polynomially, with finite
    variance for ``α > 3`` (Tallec & Ollivier 2017). ``α`` = 4 or 6 in the
    paper.

    Examples:
      >>> from jbptt import truncation
      >>> c = truncation.poly_tail(10.0, alpha=4.0)
      >>> round(float(c(1)), 4)
      0.1429
    """
    if not alpha > 2:
        raise ValueError(f"alpha must be > 2, got {alpha!r}.")
    if not mean_length > 0:
        raise ValueError(f"mean_length must be > 0, got {mean_length!r}.")

    def schedule(d):
        return (alpha - 1.0) / ((alpha - 2.0) * mean_length + d)

    return schedule
