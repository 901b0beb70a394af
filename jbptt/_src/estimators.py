"""Gradient estimators as data: each samples loss weights and link weights.

An estimator draws a stack of J "windows" ``(w_j, m_j)``, both ``[T]``, and
estimates the gradient as

    ĝ = Σ_j ∇_θ^{(w_j)} Σ_t m_{j,t} ℓ_t,

where ``∇^{(w)}`` is the reverse scan with link weights ``w``
(docs/design.md, "The one equation").
Full BPTT, TBPTT(k) and ARTBP are one window with ``m ≡ 1``; Williams–Peng
TBPTT(k1, k2) is one window per update. Because everything is arrays of
static shape, a list of estimators is sampled and evaluated under one ``jit``
with ``vmap`` (:func:`estimate`).

Two costs are reported: ``expected_depth`` (mean truncation length, the
number of steps a gradient travels back before a cut, see below) and
``backward_steps``
(Jacobian-transpose steps an online implementation runs per sequence: T for
full BPTT, TBPTT and ARTBP, whose windows never overlap; more for
Williams–Peng, whose windows do).

Expected depth, one convention for every estimator: ``E[min(L, T)]``, where
``L`` is the length of a truncation segment (from a cut, or the sequence
start, to the next cut) and ``T`` the sequence length. With ``P(L > d) =
∏_{i=1}^{d} (1 − c_i)`` (``c_i`` the cut probability i steps after the
segment start),

    E[min(L, T)] = Σ_{d=0}^{T−1} P(L > d).

So TBPTT(k) has depth ``min(k, T)``, full BPTT ``T``, ARTBP with a constant
``c`` ``(1 − (1 − c)^T)/c`` (→ ``1/c`` as T → ∞), with a schedule the same sum
of its survival function, and with an array ``c[T]`` that of the first
segment (``c_i = c[i]``). Williams–Peng reports the mean backpropagation
depth of its windows. :func:`artbp_matched` with ``T`` solves
``E[min(L, T)] = depth`` exactly, so ARTBP and TBPTT(k) can be compared at
equal depth on finite sequences.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jbptt._src import protocol, sharding, stream, truncation, validation
from jbptt._src.depth import (
    artbp_c_for_depth,
    bisect,
    check_depth,
    mean_segment_length,
)
from jbptt._src.protocol import Cost, OnlineRule, Problem
from jbptt._src.segment_rules import no_state as _no_state
from jbptt._src.segment_rules import truncation_advance as _truncation_advance
from jbptt._src.segment_rules import truncation_block as _truncation_block
from jbptt._src.segment_rules import truncation_segment as _truncation_segment

tree_map = jax.tree_util.tree_map


class Estimator(NamedTuple):
    """A gradient estimator described by the windows it samples.

    Attributes:
      name: short label for tables and plots, e.g. ``"tbptt(k=8)"``.
      sample: ``(key, T) -> (w[J, T], m[J, T])`` link and loss weights;
        traceable, so it can be vmapped over keys.
      expected_depth: ``T -> float``, mean number of steps a gradient is
        backpropagated before a cut: ``E[min(L, T)]`` for the truncation
        length ``L`` (module docstring), the cost axis on which estimators
        are compared.
      deterministic: whether ``sample`` ignores its key.
      hparams: hyperparameters, for reports.
      backward_steps: ``T -> float``, expected reverse-scan steps of work per
        sequence for an online implementation (each window backpropagated
        only as far as its cut). ``None`` when unknown.
      law: the :class:`jbptt._src.stream.CutLaw` of the cuts along an
        unbounded stream, for online training (chunk-invariant cuts, static
        buckets, long segments split); ``None`` for estimators whose windows
        are tied to one sequence length (online training then plans each call
        with ``sample``).
      span: ``T -> L`` or ``None``: a promise that every window's losses lie
        within ``L`` steps from the last cut at or before its first loss, so
        its reverse scan runs over those ``L`` steps only
        (:func:`jbptt.estimators.gradient_fn` with ``span=``); Williams–Peng's
        windows span ``k2`` steps. ``None``: every window runs over all T.

    Examples:
      A custom estimator: TBPTT(2) on the second half of the losses only.

      >>> import jax, jax.numpy as jnp
      >>> from jbptt import estimators, truncation
      >>> def sample(key, T):
      ...     m = (jnp.arange(T) >= T // 2).astype(float)
      ...     return truncation.tbptt(T, 2)[None], m[None]
      >>> est = estimators.Estimator("late-tbptt(2)", sample,
      ...                            lambda T: float(min(2, T)), True, {})
      >>> w, m = est.sample(jax.random.key(0), 4)
      >>> w.tolist(), m.tolist()
      ([[0.0, 1.0, 0.0, 1.0]], [[0.0, 0.0, 1.0, 1.0]])
    """

    name: str
    sample: Callable[[jax.Array, int], tuple[jax.Array, jax.Array]]
    expected_depth: Callable[[int], float]
    deterministic: bool
    hparams: dict[str, Any]
    backward_steps: Callable[[int], float] | None = None
    law: Any = None
    span: Callable[[int], int] | None = None

    def __repr__(self) -> str:  # the name, e.g. artbp(c=0.25), not the closures
        return protocol.describe(self.name, self.hparams)

    # ------------------------------------------ the estimator protocol ---

    def samples(
        self, problem: Problem, key, n: int, *, chunk: int = 64, mesh=None
    ) -> jax.Array:
        """``[n, D]`` flattened estimates from keys ``split(key, n)``.

        The forward is shared (:func:`jbptt.estimators.gradient_fn`); what is
        vmapped, ``chunk`` draws at a time, is the reverse scan of each
        window, over the estimator's ``span`` when it has one.
        """
        T = protocol.check_problem(problem)
        n, chunk = validation.sample_count(n, chunk)
        span = None if self.span is None else min(int(self.span(T)), T)
        grad = protocol.gradient_fn(problem, span=span)
        ws, ms = jax.vmap(lambda k: self.sample(k, T))(jax.random.split(key, n))
        if ws.ndim != 3 or ws.shape[2] != T or ms.shape != ws.shape:
            raise ValueError(
                f"estimator {self.name!r}: sample must return w and m of shape "
                f"[J, {T}]; got {ws.shape[1:]} and {ms.shape[1:]}."
            )

        def window_sum(w, m):  # [J, T] -> Σ_j ĝ_j, flattened [D]
            flat = jax.vmap(lambda w_j, m_j: ravel_pytree(grad(w_j, m_j))[0])
            return jnp.sum(flat(w, m), axis=0)

        dtype = problem.xs.dtype
        args = (ws.astype(dtype), ms.astype(dtype))
        return sharding.map_rows(window_sum, args, chunk, mesh)

    def cost(self, problem: Problem) -> Cost:
        """Depth, reverse-scan steps and windows of one estimate."""
        T = problem.xs.shape[0]
        ws, _ = jax.eval_shape(lambda k: self.sample(k, T), jax.random.key(0))
        steps = self.backward_steps(T) if self.backward_steps else float("nan")
        return Cost(
            depth=float(self.expected_depth(T)),
            backward_steps=float(steps),
            forward_steps=float(T),
            reverse_scans=int(ws.shape[0]),
        )

    def online(self) -> OnlineRule:
        """Segments between the cuts of one sampled window (module
        :mod:`jbptt.train`); estimators with overlapping windows refuse at
        planning time. With a cut ``law`` the cuts are drawn along the stream
        (:func:`jbptt._src.stream.draw`), the segments run in the law's static
        buckets and longer ones are split (``advance`` and ``block``)."""
        if self.law is None:
            return OnlineRule(
                _no_state, self._plan, _truncation_segment,
                takes_resets=True, takes_adjoint=True,
            )  # fmt: skip
        law = self.law
        return OnlineRule(
            _no_state,
            self._plan,
            _truncation_segment,
            cuts=functools.partial(stream.draw, law),
            buckets=lambda min_bucket, max_buckets=6: stream.buckets(
                law, min_bucket, max_buckets
            ),
            advance=_truncation_advance,
            block=_truncation_block,
            stream_cuts=functools.partial(stream.draw_streams, law),
            splits=_truncation_segment,
            takes_resets=True,
            takes_adjoint=True,
        )

    def _plan(self, key, T: int):
        w, m = self.sample(key, T)
        w, m = np.asarray(w), np.asarray(m)
        if w.shape[0] != 1 or not np.all(m == 1):
            raise ValueError(
                f"estimator {self.name} has {w.shape[0]} overlapping "
                "windows; online training needs one window of link weights "
                "with every loss counted once (full, tbptt, artbp)."
            )
        return protocol.segments(w[0])[1], w[0]


class Links(NamedTuple):
    """Fixed link weights ``w[T]`` as a (deterministic) estimator: what
    :func:`as_estimator` makes of an array handed where an estimator goes."""

    w: Any
    name: str = "links"
    deterministic: bool = True

    @property
    def hparams(self) -> dict:
        return {}

    def _estimator(self) -> Estimator:
        w = jnp.asarray(self.w)

        def sample(key, T):
            checked = validation.link_weights(w, T, w.dtype)  # shape, finite, ≥ 0
            return checked[None], jnp.ones_like(checked)[None]

        return Estimator(self.name, sample, lambda T: float("nan"), True, {})

    def samples(self, problem, key, n, *, chunk=64, mesh=None):
        return self._estimator().samples(problem, key, n, chunk=chunk, mesh=mesh)

    def cost(self, problem):
        return self._estimator().cost(problem)

    def online(self):
        return self._estimator().online()


def as_estimator(estimator) -> protocol.GradientEstimator:
    """An estimator as given, or link weights ``w[T]`` wrapped in :class:`Links`."""
    if hasattr(estimator, "shape") and not hasattr(estimator, "online"):
        return Links(estimator)
    return protocol.check_estimator(estimator)


def _one_window(w):
    return w[None], jnp.ones_like(w)[None]


def _T_steps(T: int) -> float:
    return float(T)


def _depth(fn: Callable[[int], float]) -> Callable[[int], float]:
    """``fn`` with its sequence length checked (a positive int, by name)."""
    return lambda T: fn(validation.positive_int("T", T))


def full() -> Estimator:
    """Exact BPTT: one window, every link kept.

    Examples:
      >>> import jax
      >>> from jbptt import estimators
      >>> w, m = estimators.full().sample(jax.random.key(0), 4)
      >>> w.tolist(), m.tolist()
      ([[1.0, 1.0, 1.0, 1.0]], [[1.0, 1.0, 1.0, 1.0]])
    """
    return Estimator(
        "full",
        lambda key, T: _one_window(truncation.full(T)),
        _depth(float),
        True,
        {},
        _T_steps,
        stream.never(),
    )


def tbptt(k: int, random_offset: bool = False) -> Estimator:
    """TBPTT(k): chunks of ``k`` steps (Jaeger 2002).

    Args:
      k: chunk length (positive int).
      random_offset: if True, the chunk boundaries are shifted by an offset
        drawn uniformly from ``{0, …, k−1}`` per sample (cuts where
        ``(t − offset) % k == 0``); otherwise chunks start at t = 0 and the
        estimator is deterministic.

    Examples:
      >>> import jax
      >>> from jbptt import estimators
      >>> w, m = estimators.tbptt(3).sample(jax.random.key(0), 6)
      >>> w.tolist()
      [[0.0, 1.0, 1.0, 0.0, 1.0, 1.0]]
    """
    truncation.tbptt(1, k)  # validates k
    if not isinstance(random_offset, bool):
        raise TypeError(f"random_offset must be a bool, got {random_offset!r}.")
    if random_offset:

        def sample(key, T):
            offset = jax.random.randint(key, (), 0, k)
            return _one_window(truncation.tbptt(T, k, offset))

        name = f"tbptt(k={k},random_offset)"
    else:

        def sample(key, T):
            return _one_window(truncation.tbptt(T, k))

        name = f"tbptt(k={k})"
    return Estimator(
        name,
        sample,
        _depth(lambda T: float(min(k, T))),
        not random_offset,
        {"k": k, "random_offset": random_offset},
        _T_steps,
        stream.periodic(k, random_offset),
    )


def artbp(c) -> Estimator:
    """ARTBP with cut probability ``c`` (float, ``[T]`` array or schedule).

    ``expected_depth(T)`` is ``E[min(L, T)]`` for the truncation length L
    (module docstring): ``(1 − (1 − c)^T)/c`` for a float ``c``, which tends
    to ``1/c`` for long sequences. :func:`artbp_matched` picks ``c`` for a
    target depth.

    Examples:
      >>> import jax
      >>> from jbptt import estimators
      >>> est = estimators.artbp(0.25)
      >>> w, m = est.sample(jax.random.key(0), 8)
      >>> w.shape, round(est.expected_depth(100), 6), est.expected_depth(1)
      ((1, 8), 4.0, 1.0)
    """
    if not callable(c):
        try:  # a string is no number (NumPy would read it as a dtype alias)
            arr = None if isinstance(c, str | bytes) else jnp.asarray(c)
        except TypeError:
            arr = None
        if arr is None or arr.ndim > 1 or not jnp.issubdtype(arr.dtype, jnp.number):
            raise TypeError(
                "c must be a float, an array [T] of cut probabilities or a "
                f"schedule d -> c, got {c!r}."
            )
        # As in truncation.artbp, c[0] (the link into h0) is never used.
        truncation.check_probability("c", arr[1:] if arr.ndim else arr)

    def depth(T):
        return mean_segment_length(c, T)

    return Estimator(
        f"artbp(c={protocol.label(c)})",
        lambda key, T: _one_window(truncation.artbp(key, T, c)),
        _depth(depth),
        False,
        {"c": protocol.plain(c)},  # a NumPy/JAX scalar as the number it shows
        _T_steps,
        _artbp_law(c),
    )


def _artbp_law(c) -> stream.CutLaw | None:
    if callable(c):
        return stream.schedule(c)
    try:
        c = np.asarray(c, float)
    except jax.errors.TracerArrayConversionError:  # traced c: no stream law
        return None
    return stream.constant(float(c)) if c.ndim == 0 else stream.positional(c)


def artbp_matched(
    depth: float,
    schedule: str = "geometric",
    alpha: float = 4.0,
    T: int | None = None,
) -> Estimator:
    """ARTBP with expected depth ``depth`` (to match TBPTT(k = depth)).

    With ``T``, ``expected_depth(T) == depth`` holds exactly (up to float
    round-off): the parameter is solved for on sequences of length ``T``.
    Without ``T`` it holds for long sequences (``T → ∞``).

    Args:
      depth: target mean truncation length (> 1, and < T when T is given).
      schedule: ``"geometric"`` (a constant cut probability c, so segment
        lengths are geometric; c = 1/depth without T; ``"constant"`` is
        accepted as its former name) or ``"poly_tail"``
        (:func:`jbptt.truncation.poly_tail`, mean length ``depth`` without T;
        polynomial tails, finite variance for ``alpha > 3``).
      alpha: tail exponent of the poly-tail schedule.
      T: sequence length to match the depth on, or None.

    Examples:
      >>> from jbptt import estimators
      >>> est = estimators.artbp_matched(10, "poly_tail")
      >>> round(est.expected_depth(10_000), 1)
      10.0
      >>> est = estimators.artbp_matched(10, "poly_tail", T=32)
      >>> round(est.expected_depth(32), 9)
      10.0
    """
    if schedule not in ("geometric", "constant", "poly_tail"):
        raise ValueError(
            f"Unknown schedule {schedule!r}. It needs to be one of "
            "['geometric', 'poly_tail']."
        )
    check_depth(depth, T)
    # Checked for every schedule: a NaN alpha is a mistake even where unused.
    alpha = validation.real("alpha", alpha, low=2.0, low_open=True, what="> 2")
    if schedule in ("geometric", "constant"):
        return artbp(artbp_c_for_depth(depth, T))
    if T is None:
        L0 = float(depth)
    else:
        # Depth increases with L0, from 1 at L0 = 1 (c_1 = 1) towards T.
        def log_depth(log_L0):
            return mean_segment_length(truncation.poly_tail(np.exp(log_L0), alpha), T)

        hi = np.log(float(depth))
        for _ in range(64):
            if log_depth(hi) >= depth:
                break
            hi += np.log(4.0)
        else:
            raise ValueError(f"depth {depth!r} is too close to T = {T} to match.")
        L0 = float(np.exp(bisect(log_depth, 0.0, hi, float(depth))))
    sched = truncation.poly_tail(L0, alpha)
    return artbp(sched)._replace(hparams={"c": sched, "L0": L0, "alpha": alpha})


def williams_peng(k1: int, k2: int) -> Estimator:
    """Williams–Peng TBPTT(k1, k2): every k1 steps, backpropagate k2 steps.

    Window j ends at ``e_j = min((j + 1)·k1, T) − 1`` (j = 0..⌈T/k1⌉−1). It
    carries the losses of steps ``e_{j−1} < t ≤ e_j`` (the last ≤ k1 steps)
    and backpropagates them through the k2 steps ``e_j − k2 < s ≤ e_j``: the
    link into step ``e_j − k2 + 1`` and all earlier ones are cut. In
    Williams & Peng's (1990) notation this is BPTT(h = k2; h′ = k1);
    ``williams_peng(k, k)`` is TBPTT(k) when k divides T (a last, shorter
    window still backpropagates k2 steps) and ``williams_peng(1, k)`` is
    classic truncated BPTT(k) updating every step.

    Args:
      k1: steps between updates (positive int).
      k2: backpropagation depth (int ≥ k1, so every loss is backpropagated).

    Examples:
      >>> import jax
      >>> from jbptt import estimators
      >>> w, m = estimators.williams_peng(2, 3).sample(jax.random.key(0), 5)
      >>> w.astype(int).tolist()
      [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 1, 1]]
      >>> m.astype(int).tolist()
      [[1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]
    """
    k1, k2 = validation.positive_int("k1", k1), validation.positive_int("k2", k2)
    if k1 > k2:
        raise ValueError(
            f"k1 (steps between updates) must be ≤ k2 (backpropagation depth), "
            f"got k1={k1} > k2={k2}: losses older than k2 steps would get no "
            "gradient."
        )

    def ends(T):
        J = math.ceil(T / k1)
        return jnp.minimum((jnp.arange(J) + 1) * k1, T) - 1  # [J]

    def sample(key, T):
        validation.positive_int("T", T, "a positive int (number of steps)")
        e = ends(T)[:, None]  # [J, 1]
        first_loss = jnp.arange(e.shape[0])[:, None] * k1  # e_{j-1} + 1, [J, 1]
        t = jnp.arange(T)[None, :]  # [1, T]
        start = e - k2 + 1  # first step backpropagated through
        dtype = jnp.result_type(float)
        w = jnp.where((t <= start) & (start >= 0), 0.0, 1.0).astype(dtype)
        m = ((t <= e) & (t >= first_loss)).astype(dtype)
        return w, m

    def window_lengths(T):
        return [min(k2, e + 1) for e in ends(T).tolist()]

    def depth(T):
        lengths = window_lengths(T)
        return float(sum(lengths) / len(lengths))

    return Estimator(
        f"williams_peng(k1={k1},k2={k2})",
        sample,
        _depth(depth),
        True,
        {"k1": k1, "k2": k2},
        lambda T: float(sum(window_lengths(T))),
        span=lambda T: min(k2, T),  # window j: losses in (e_j − k2, e_j]
    )


__all__ = [
    "Estimator",
    "artbp",
    "Links",
    "artbp_matched",
    "as_estimator",
    "full",
    "tbptt",
    "williams_peng",
]
