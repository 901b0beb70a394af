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
import numpy as np

from jbptt._src import validation


def _check_T(T) -> int:
    return validation.positive_int("T", T, "a positive int (number of steps)")


def _check_k(name, k) -> int:
    return validation.positive_int(name, k)


def _int_or_traced(name: str, value, minimum: int | None):
    """A concrete integer is checked (and made a Python int); a traced one must
    have an integer dtype and is returned as is (its value is unknown)."""
    if validation.is_traced(value):
        if np.shape(value) != () or not jnp.issubdtype(value.dtype, jnp.integer):
            raise TypeError(
                f"{name} must be an int (a traced scalar of integer dtype under "
                f"vmap/jit), got a traced {value.dtype}{list(np.shape(value))}."
            )
        return value
    return validation.integer(name, value, minimum=minimum)


def _float_dtype(dtype):
    dtype = jnp.dtype(dtype or jnp.result_type(float))
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype, got {dtype}.")
    return dtype


def full(T: int, dtype=None) -> jax.Array:
    """Full BPTT: every link kept, ``w ≡ 1``.

    Examples:
      >>> from jbptt import truncation
      >>> truncation.full(3).tolist()
      [1.0, 1.0, 1.0]
    """
    T = _check_T(T)
    return jnp.ones((T,), _float_dtype(dtype))


def tbptt(T: int, k: int, offset: int = 0, dtype=None) -> jax.Array:
    """TBPTT(k): chunks of ``k`` steps, cut where ``(t − offset) % k == 0``.

    ``k`` and ``offset`` may be traced integers, so one ``vmap`` covers a sweep
    over truncation lengths or random offsets. Concrete values are checked
    (``k ≥ 1``, both integers); a traced ``k`` must be ≥ 1 by construction
    (a traced ``k ≤ 0`` gives no cuts, since its value cannot be checked).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jbptt import truncation
      >>> truncation.tbptt(6, 3).tolist()
      [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
      >>> jax.vmap(lambda k: truncation.tbptt(4, k))(jnp.array([1, 2])).tolist()
      [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0]]
    """
    T = _check_T(T)
    k = _int_or_traced("k", k, 1)
    offset = _int_or_traced("offset", offset, None)
    t = jnp.arange(T)
    # A traced k cannot be checked; x % 0 is undefined and x % (−k) cuts
    # nonsense, so an unchecked k ≤ 0 means "never cut" instead.
    k_safe = jnp.maximum(k, 1)
    cut = ((t - offset) % k_safe == 0) & (k >= 1)
    return jnp.where(cut, 0.0, 1.0).astype(_float_dtype(dtype))


Schedule = Callable[[jax.Array], jax.Array]


def check_probability(name: str, c) -> None:
    """Concrete ``c`` must lie in [0, 1) (NaN refused); traced values are not
    checked, nor is an empty ``c`` (T = 1: no link can be cut)."""
    if validation.is_traced(c):
        return
    a = np.asarray(c, np.float64)
    if a.size == 0:
        return
    if np.isnan(a).any():
        raise ValueError(
            f"{name} (cut probability) must lie in [0, 1), got NaN at index "
            f"{tuple(int(i) for i in np.argwhere(np.isnan(a))[0])}."
        )
    lo, hi = float(a.min()), float(a.max())
    if not (0.0 <= lo and hi < 1.0):
        raise ValueError(
            f"{name} (cut probability) must lie in [0, 1), got values in [{lo}, {hi}]."
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
    T = _check_T(T)
    key = validation.prng_key("key", key)
    dtype = _float_dtype(dtype)
    if callable(c):
        # The values a schedule can take here: d = 1..T−1 steps since a cut.
        check_probability("schedule values c(d)", c(jnp.arange(1, T, dtype=dtype)))
        return _artbp_schedule(key, T, c, dtype)
    if isinstance(c, bool | np.bool_ | str) or c is None:
        raise TypeError(
            f"c must be a float, an array of shape ({T},) or a schedule; got "
            f"{type(c).__name__} {c!r}."
        )
    c = jnp.asarray(c, dtype)
    if c.ndim == 0:
        c = jnp.full((T,), c)
    if c.shape != (T,):
        raise ValueError(
            f"c must be a float, an array of shape ({T},) or a "
            f"schedule; got shape {c.shape}."
        )
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
    (Tallec & Ollivier 2017, §4). Same law as ``artbp(key, T, 1/L)``.

    Examples:
      >>> import jax
      >>> from jbptt import truncation
      >>> w = truncation.artbp(jax.random.key(0), 6, truncation.geometric(4.0))
      >>> bool(((w[1:] == 0) | (abs(w[1:] - 4 / 3) < 1e-6)).all())
      True
    """
    mean_length = validation.real(
        "mean_length", mean_length, low=1.0, low_open=True, what="> 1"
    )

    def schedule(d):
        return jnp.full(jnp.shape(d), 1.0 / mean_length)

    schedule.__name__ = f"geometric(L={mean_length:g})"  # labels, e.g. sweeps
    return schedule


def poly_tail(mean_length: float, alpha: float = 4.0) -> Schedule:
    """``c_d = (α − 1)/((α − 2) L₀ + d)``: polynomial-tailed truncation lengths.

    Mean length ``L₀ > 1``; the reweighting grows polynomially, with finite
    variance for ``α > 3`` (Tallec & Ollivier 2017). ``α`` = 4 or 6 in the
    paper.

    Examples:
      >>> from jbptt import truncation
      >>> c = truncation.poly_tail(10.0, alpha=4.0)
      >>> round(float(c(1)), 4)
      0.1429
    """
    alpha = validation.real("alpha", alpha, low=2.0, low_open=True, what="> 2")
    # c_1 = (α − 1)/((α − 2) L₀ + 1) < 1 needs L₀ > 1.
    mean_length = validation.real(
        "mean_length",
        mean_length,
        low=1.0,
        low_open=True,
        what="> 1 (else c(1) ≥ 1)",
    )

    def schedule(d):
        return (alpha - 1.0) / ((alpha - 2.0) * mean_length + d)

    schedule.__name__ = f"poly_tail(L={mean_length:g},alpha={alpha:g})"
    return schedule


# ------------------------------------------------ exact probabilities ---
#
# A cut pattern is a boolean array ``cuts[..., T]`` (``cuts[t]``: link t is
# cut, i.e. w_t = 0). ``cuts[0]`` must be False: ARTBP never cuts the link
# into h0. Given c, the pattern fixes the link weights
#
#     w_t = 0            if cuts[t]
#     w_t = 1/(1 − c_t)  otherwise (t ≥ 1),   w_0 = 1,
#
# and its probability ∏_{t≥1} c_t^{cut_t} (1 − c_t)^{1−cut_t}, where for a
# schedule c_t = schedule(d_t) with d_t the steps since the last cut (the
# sequence start counting as a cut at t = 0): d_t = t − max{s < t : s = 0 or
# cut_s}. Because c_t depends only on cuts before t, this product is the
# exact law of :func:`artbp`.

_MAX_ENUMERATE_T = 20


def _check_cuts(cuts, c) -> jax.Array:
    cuts = jnp.asarray(cuts)
    if cuts.ndim < 1 or cuts.dtype != jnp.bool_:
        raise TypeError(
            "cuts must be a boolean array [..., T] (True where a link is cut), "
            f"got dtype {cuts.dtype} and shape {cuts.shape}."
        )
    if not callable(c):
        shape = jnp.shape(c)
        if shape not in ((), (cuts.shape[-1],)):
            raise ValueError(
                f"c must be a float, an array of shape ({cuts.shape[-1]},) "
                f"matching cuts' T = {cuts.shape[-1]}, or a schedule; got shape "
                f"{shape}."
            )
    return cuts


def steps_since_cut(cuts) -> jax.Array:
    """``d_t``: steps since the last cut before t (the start counts as a cut).

    ``d_0`` is 0 by convention (there is no link into the start to cut).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jbptt._src import truncation
      >>> cuts = jnp.array([False, False, True, False, False])
      >>> truncation.steps_since_cut(cuts).tolist()
      [0, 1, 2, 1, 2]
    """
    cuts = jnp.asarray(cuts)
    T = cuts.shape[-1]
    t = jnp.arange(T)
    # Index of the last cut at or before t (0 for the start), then shift by one.
    last = jax.lax.cummax(jnp.where(cuts, t, 0), axis=cuts.ndim - 1)
    last_before = jnp.concatenate(
        [jnp.zeros_like(last[..., :1]), last[..., :-1]], axis=-1
    )
    return t - last_before


def cut_probabilities(cuts, c) -> jax.Array:
    """The cut probability ``c_t`` each link had, given the pattern ``cuts``.

    Only a schedule makes ``c_t`` depend on the pattern (through the steps
    since the last cut); a float or ``[T]`` array is broadcast. Entry 0 is 0.

    Args:
      cuts: boolean ``[..., T]``.
      c: float, ``[T]`` array or schedule ``d -> c``.

    Returns:
      ``[..., T]`` array of probabilities.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jbptt._src import truncation
      >>> cuts = jnp.array([False, True, False])
      >>> c = truncation.cut_probabilities(cuts, lambda d: 0.1 * d)
      >>> [round(v, 6) for v in c.tolist()]
      [0.0, 0.1, 0.1]
    """
    cuts = _check_cuts(cuts, c)
    dtype = jnp.result_type(float)
    if callable(c):
        d = steps_since_cut(cuts)
        probs = jnp.asarray(c(d.astype(dtype)), dtype)
    else:
        probs = jnp.broadcast_to(jnp.asarray(c, dtype), cuts.shape)
    return probs.at[..., 0].set(0.0)


def log_prob(cuts, c) -> jax.Array:
    """Log-probability that :func:`artbp` draws the cut pattern ``cuts``.

    ``log p = Σ_{t≥1} [cut_t log c_t + (1 − cut_t) log(1 − c_t)]`` with c_t
    from :func:`cut_probabilities`. A cut at t = 0 has probability 0.

    Args:
      cuts: boolean ``[..., T]``, True where a link is cut.
      c: float, ``[T]`` array or schedule of the steps since the last cut.

    Returns:
      ``[...]`` log-probabilities (``-inf`` for impossible patterns).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jbptt import truncation
      >>> cuts = jnp.array([False, True, False, False])
      >>> round(float(jnp.exp(truncation.log_prob(cuts, 0.5))), 6)
      0.125
    """
    cuts = _check_cuts(cuts, c)
    probs = cut_probabilities(cuts, c)
    if not callable(c):
        check_probability("c", jnp.asarray(c)[..., 1:] if jnp.ndim(c) else c)
    else:
        check_probability("schedule values", probs)
    t = jnp.arange(cuts.shape[-1])
    logs = jnp.where(cuts, jnp.log(jnp.where(cuts, probs, 1.0)), jnp.log1p(-probs))
    logs = jnp.where(t == 0, jnp.where(cuts, -jnp.inf, 0.0), logs)
    return jnp.sum(logs, axis=-1)


def prob(cuts, c) -> jax.Array:
    """Probability that :func:`artbp` draws ``cuts``: ``exp(log_prob(cuts, c))``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jbptt._src import truncation
      >>> round(float(truncation.prob(jnp.array([False, False]), 0.25)), 6)
      0.75
    """
    return jnp.exp(log_prob(cuts, c))


def weights_from_cuts(cuts, c) -> jax.Array:
    """ARTBP link weights for a given pattern: 0 where cut, else 1/(1 − c_t).

    ``w[..., 0] = 1`` (the link into h0 is never cut). ``artbp(key, T, c)``
    equals ``weights_from_cuts(cuts, c)`` for the pattern it drew.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jbptt._src import truncation
      >>> truncation.weights_from_cuts(jnp.array([False, True, False]), 0.5).tolist()
      [1.0, 0.0, 2.0]
    """
    cuts = _check_cuts(cuts, c)
    probs = cut_probabilities(cuts, c)
    w = jnp.where(cuts, 0.0, 1.0 / (1.0 - probs))
    return w.at[..., 0].set(1.0)


def all_cut_patterns(T: int) -> jax.Array:
    """Every cut pattern of links t = 1..T−1: boolean ``[2^(T−1), T]``.

    Row i cuts link t when bit t−1 of i is set; column 0 is all False.
    Limited to T ≤ 20 (about a million rows).

    Examples:
      >>> from jbptt._src import truncation
      >>> truncation.all_cut_patterns(3).astype(int).tolist()
      [[0, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1]]
    """
    T = _check_T(T)
    if T > _MAX_ENUMERATE_T:
        raise ValueError(
            f"T = {T} gives 2^{T - 1} cut patterns; enumeration is limited to "
            f"T ≤ {_MAX_ENUMERATE_T}."
        )
    i = jnp.arange(2 ** (T - 1))[:, None]
    bits = (i >> jnp.arange(T - 1)[None, :]) & 1
    return jnp.concatenate(
        [jnp.zeros((i.shape[0], 1), bool), bits.astype(bool)], axis=1
    )


def enumerate_artbp(T: int, c) -> tuple[jax.Array, jax.Array]:
    """All ARTBP link-weight vectors with their probabilities, for exact sums.

    ``E[f(w)] = Σ_i p[i] f(w[i])`` exactly, e.g. with ``f`` the gradient
    estimate: ARTBP is unbiased iff this equals the full gradient.

    Args:
      T: number of steps (≤ 20).
      c: float, ``[T]`` array or schedule, as in :func:`artbp`.

    Returns:
      ``(w, p)``: link weights ``[2^(T−1), T]`` and probabilities
      ``[2^(T−1)]`` summing to one.

    Examples:
      >>> from jbptt import truncation
      >>> w, p = truncation.enumerate_artbp(4, 0.3)
      >>> w.shape, round(float(p.sum()), 12)
      ((8, 4), 1.0)
    """
    cuts = all_cut_patterns(T)
    if not callable(c) and jnp.ndim(c) == 1 and jnp.shape(c) != (T,):
        raise ValueError(f"c has shape {jnp.shape(c)} but T = {T}; expected ({T},).")
    return weights_from_cuts(cuts, c), prob(cuts, c)
