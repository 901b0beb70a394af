"""Bias and variance of gradient estimators, all sampled under one ``jit``.

For a problem (cell, per-step loss, params, h0, xs, ys) and estimators that
sample windows ``(w_j, m_j)`` (:mod:`jbptt.estimators`), each sample is

    ĝ = Σ_j ∇^{(w_j)} Σ_t m_{j,t} ℓ_t.

Link weights ``w`` enter only the reverse scan, and loss weights ``m`` only
the cotangents fed into it, so the forward scan and the per-step loss vjp are
computed once and shared by every estimator, window and sample; what is
vmapped is the reverse scan alone (DESIGN.md, "Performance structure").

Statistics, per estimator, from N iid samples ĝ_i with ``d_i = ĝ_i − g``
(``g`` the exact gradient, computed by the same reverse scan with ``w ≡ 1``):

* squared bias ``β² = ‖E ĝ − g‖²`` by the unbiased U-statistic
  ``U = Σ_{i≠j} d_i·d_j / (N(N−1))`` (the plug-in ‖ḡ − g‖² is biased up by
  tr Σ/N), with the 95% interval ``U ± 1.96 √Var(U)`` from Hoeffding's
  variance of an order-2 U-statistic,
  ``Var(U) = (4(N−2) ζ₁ + 2 ζ₂) / (N(N−1))``, ``ζ₁ = μᵀΣμ``,
  ``ζ₂ = tr Σ² + 2 μᵀΣμ`` (μ = E d). tr Σ² and μᵀΣμ are estimated without
  bias from disjoint pairs ``e_k = (d_{2k} − d_{2k+1})/√2`` (mean 0, cov Σ):
  ``E (e_k·e_l)² = tr Σ²`` and ``E (d_i·e_k)(e_k·d_j) = μᵀΣμ`` for
  independent indices. The relative bias and its interval are the square
  roots (clipped at 0) divided by ‖g‖: an interval starting at 0 means the
  bias is not distinguishable from 0;
* relative variance ``E‖ĝ − E ĝ‖² / ‖g‖²`` (unbiased sample variance);
* ``cos(ḡ, g)`` and the mean of ``cos(ĝ_i, g)`` over single samples.

Deterministic estimators are evaluated once: exact bias, zero variance and
NaN interval bounds.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jbptt._src import sharding, validation
from jbptt._src.api import per_step_losses
from jbptt._src.cell import Cell
from jbptt._src.estimators import Estimator
from jbptt._src.forward_mode import OnlineEstimator
from jbptt._src.forward_mode import sample_estimates as _online_samples
from jbptt._src.scan import (
    _backward_generic,
    _backward_rules,
    _forward_generic,
    _forward_rules,
)

tree_map = jax.tree_util.tree_map

Z95 = 1.959963984540054  # two-sided 95% normal quantile


class Problem(NamedTuple):
    """A gradient problem: L(θ) = Σ_t ℓ_t(θ, out_t, y_t) along one sequence.

    Attributes:
      cell: a :class:`jbptt.cells.Cell`.
      loss_fn: per-step loss ``(params, out_t, y_t) -> scalar``.
      params: the point θ at which gradients are estimated (pytree).
      h0: initial state.
      xs: inputs ``[T, I]`` or ``[T, B, I]``.
      ys: targets, time-major.
    """

    cell: Cell
    loss_fn: Any
    params: Any
    h0: Any
    xs: jax.Array
    ys: Any


class SweepResult(NamedTuple):
    """Per-estimator statistics, each field an array ``[E]`` (one per estimator).

    Attributes:
      names: estimator names.
      expected_depth: mean truncation length (the cost axis).
      windows: number J of reverse scans per sample.
      n_samples: samples drawn (1 for deterministic estimators).
      rel_bias: ‖E ĝ − g‖/‖g‖ (debiased point estimate, see module doc).
      rel_bias_lo, rel_bias_hi: its 95% interval (NaN when deterministic).
      rel_bias_sq: the signed unbiased estimate of ‖E ĝ − g‖²/‖g‖².
      rel_variance: E‖ĝ − E ĝ‖²/‖g‖².
      cos_mean: cos(ḡ, g) with ḡ the sample mean.
      cos_sample: mean over samples of cos(ĝ_i, g).
      grad_norm: ‖g‖ (the same for every row).
    """

    names: tuple[str, ...]
    expected_depth: np.ndarray
    windows: np.ndarray
    n_samples: np.ndarray
    rel_bias: np.ndarray
    rel_bias_lo: np.ndarray
    rel_bias_hi: np.ndarray
    rel_bias_sq: np.ndarray
    rel_variance: np.ndarray
    cos_mean: np.ndarray
    cos_sample: np.ndarray
    grad_norm: np.ndarray

    def rows(self) -> list[dict[str, Any]]:
        """One dict per estimator (CSV rows), floats as Python floats."""
        out = []
        for i, name in enumerate(self.names):
            row = {"estimator": name}
            for field in self._fields[1:]:
                v = np.asarray(getattr(self, field))[i]
                row[field] = v.item()
            out.append(row)
        return out


# ------------------------------------------------------------- estimates ---


def _check_problem(problem: Problem) -> int:
    if not isinstance(problem, Problem):
        raise TypeError(
            f"problem must be a jbptt.sweep.Problem, got {type(problem).__name__}."
        )
    validation.check_scan_args(
        problem.cell, problem.params, problem.h0, problem.xs, None
    )
    validation.check_ys(problem.ys, problem.xs.shape[0])
    return problem.xs.shape[0]


def gradient_fn(problem: Problem):
    """One shared forward; returns ``(w[T], m[T]) -> ∇^{(w)} Σ_t m_t ℓ_t``.

    The forward scan and the vjp of the per-step losses run once (when this
    is called, typically inside ``jit``); the returned function runs only the
    reverse scan, so vmapping it over ``(w, m)`` batches reverse scans that
    share one forward.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt import sweep, truncation
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> p = model.init(jax.random.key(0), 1, 4)
      >>> xs, ys = jnp.ones((6, 1)), jnp.zeros((6, 1))
      >>> prob = sweep.Problem(model.cell, model.loss_fn, p,
      ...                      model.cell.initial_state(p), xs, ys)
      >>> grad = sweep.gradient_fn(prob)
      >>> g = grad(truncation.full(6), jnp.ones(6))
      >>> ref = jax.grad(lambda p: jbptt.loss(model.cell, model.loss_fn)(
      ...     p, prob.h0, xs, ys)[0])(p)
      >>> bool(jnp.allclose(g["cell"]["W"], ref["cell"]["W"], atol=1e-6))
      True
    """
    _check_problem(problem)
    cell, loss_fn, params, h0, xs, ys = problem
    if cell.rules is None:
        _, outs, hs = _forward_generic(cell, params, h0, xs)
        res = None
    else:
        _, outs, (hs, res) = _forward_rules(cell, params, h0, xs)

    def step_losses(p, o):  # [T]: ℓ_t for every step
        return per_step_losses(loss_fn, p, o, ys)

    # ∂(Σ_t m_t ℓ_t) = vjp of the loss vector with cotangent m: linear in m.
    _, loss_vjp = jax.vjp(step_losses, params, outs)
    dh_T = tree_map(jnp.zeros_like, h0)

    def grad(w, m):
        dp_loss, douts = loss_vjp(m.astype(xs.dtype))
        w = w.astype(xs.dtype)
        if cell.rules is None:
            dp_cell, _, _ = _backward_generic(cell, params, h0, xs, w, hs, dh_T, douts)
        else:
            dp_cell, _, _ = _backward_rules(
                cell, params, h0, xs, w, hs, res, dh_T, douts
            )
        return tree_map(jnp.add, dp_cell, dp_loss)

    return grad


def _flat_window_sum(grad):
    """``(w[J, T], m[J, T]) -> Σ_j ĝ_j`` flattened to ``[D]``."""

    def one(w, m):
        return ravel_pytree(grad(w, m))[0]

    def windows(ws, ms):
        return jnp.sum(jax.vmap(one)(ws, ms), axis=0)

    return windows


def _estimator_key(key, estimator: Estimator):
    # Keyed by name, so an estimator's samples do not depend on which other
    # estimators share the sweep (sweep([a, b]) == sweep([a]) ⊕ sweep([b])).
    return jax.random.fold_in(key, zlib.crc32(estimator.name.encode()) & 0x7FFFFFFF)


def _draw(estimator: Estimator, key, T: int, n: int):
    keys = jax.random.split(_estimator_key(key, estimator), n)
    ws, ms = jax.vmap(lambda k: estimator.sample(k, T))(keys)  # [n, J, T]
    return ws, ms


def _map_chunks(fn, ws, ms, chunk: int):
    """``vmap(fn)`` over the leading axis, ``chunk`` rows at a time."""
    S = ws.shape[0]
    chunk = max(1, min(chunk, S))
    pad = (-S) % chunk  # zero weights: padded rows give zero gradients
    ws = jnp.concatenate([ws, jnp.zeros((pad,) + ws.shape[1:], ws.dtype)])
    ms = jnp.concatenate([ms, jnp.zeros((pad,) + ms.shape[1:], ms.dtype)])
    shape = (-1, chunk) + ws.shape[1:]
    out = jax.lax.map(
        lambda wm: jax.vmap(fn)(*wm), (ws.reshape(shape), ms.reshape(shape))
    )
    return out.reshape((-1,) + out.shape[2:])[:S]


def sample_estimates(
    problem: Problem, estimator: Estimator, key, n: int, *, chunk: int = 64
) -> jax.Array:
    """``n`` flattened estimates ``[n, D]`` of ``estimator`` (shared forward).

    Samples are drawn from ``fold_in(key, crc32(estimator.name))``, exactly as
    :func:`sweep` draws them. Unflatten a row with
    ``jax.flatten_util.ravel_pytree(problem.params)[1]``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt import sweep
      >>> from jbptt import estimators
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> p = model.init(jax.random.key(0), 1, 4)
      >>> prob = sweep.Problem(model.cell, model.loss_fn, p,
      ...     model.cell.initial_state(p), jnp.ones((6, 1)), jnp.zeros((6, 1)))
      >>> sweep.sample_estimates(prob, estimators.artbp(0.3),
      ...                        jax.random.key(1), 5).shape
      (5, 29)
    """
    T = _check_problem(problem)
    _check_n("n", n)
    fn = _flat_window_sum(gradient_fn(problem))
    ws, ms = _draw(estimator, key, T, n)
    return _map_chunks(fn, ws, ms, chunk)


# ------------------------------------------------------------ statistics ---


def _check_n(name, n, minimum=1):
    if not isinstance(n, int) or isinstance(n, bool) or n < minimum:
        raise ValueError(f"{name} must be an int ≥ {minimum}, got {n!r}.")


def _safe_cos(a, b):
    na, nb = jnp.linalg.norm(a, axis=-1), jnp.linalg.norm(b, axis=-1)
    ok = na * nb > 0
    return jnp.where(ok, jnp.sum(a * b, axis=-1) / jnp.where(ok, na * nb, 1.0), 0.0)


def sample_stats(samples: jax.Array, g: jax.Array) -> dict[str, jax.Array]:
    """Bias (with 95% interval), variance and cosines from samples ``[N, D]``.

    See the module docstring for the estimators. ``N = 1`` means a
    deterministic estimator: exact bias, zero variance, NaN interval.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jbptt import sweep
      >>> g = jnp.array([1.0, 0.0])
      >>> s = sweep.sample_stats(jnp.array([[1.0, 1.0], [1.0, -1.0]] * 4), g)
      >>> round(float(s["rel_bias"]), 6), round(float(s["rel_variance"]), 3)
      (0.0, 1.143)
    """
    if samples.ndim != 2 or g.shape != samples.shape[1:]:
        raise ValueError(
            f"samples must be [N, D] and g [D]; got {samples.shape} and {g.shape}."
        )
    N = samples.shape[0]
    gn2 = jnp.sum(g * g)
    d = samples - g  # [N, D]
    mean = jnp.mean(samples, axis=0)
    cos_mean = _safe_cos(mean, g)
    cos_sample = jnp.mean(_safe_cos(samples, g))
    if N == 1:
        b2 = jnp.sum(d[0] ** 2)
        nan = jnp.full((), jnp.nan, g.dtype)
        zero = jnp.zeros((), g.dtype)
        return dict(
            rel_bias=jnp.sqrt(b2 / gn2),
            rel_bias_lo=nan,
            rel_bias_hi=nan,
            rel_bias_sq=b2 / gn2,
            rel_variance=zero,
            cos_mean=cos_mean,
            cos_sample=cos_sample,
        )
    if N < 4:
        raise ValueError(f"random estimators need at least 4 samples, got {N}.")
    G = d @ d.T  # [N, N] Gram of deviations from the exact gradient
    total, diag = jnp.sum(G), jnp.trace(G)
    U = (total - diag) / (N * (N - 1))  # unbiased ‖E ĝ − g‖²
    variance = (diag - total / N) / (N - 1)  # unbiased E‖ĝ − E ĝ‖²
    # Variance components from disjoint pairs e_k (mean 0, covariance Σ).
    K = N // 2
    e = (d[0 : 2 * K : 2] - d[1 : 2 * K : 2]) / math.sqrt(2.0)  # [K, D]
    Ee = e @ e.T
    off = 1.0 - jnp.eye(K, dtype=g.dtype)
    tr_s2 = jnp.sum(off * Ee**2) / (K * (K - 1))  # tr Σ²
    # μᵀΣμ = E[d_iᵀ e_k e_kᵀ d_j] for i ≠ j, both independent of e_k: a
    # U-statistic over such triples. (The difference E(e_k·d_j)² − tr Σ² is
    # also unbiased but subtracts two large noisy terms: clipped at 0 it
    # inflated ζ₁, and with it the interval, several-fold.)
    P = e @ d.T  # [K, N]: e_k·d_j
    pair = jnp.arange(N)[None, :] // 2 == jnp.arange(K)[:, None]
    Pi = jnp.where(pair, 0.0, P)  # only j independent of e_k
    n_ind = N - 2  # such j per k
    mu_s_mu = jnp.sum(jnp.sum(Pi, axis=1) ** 2 - jnp.sum(Pi**2, axis=1)) / (
        K * n_ind * (n_ind - 1)
    )
    zeta1 = jnp.maximum(mu_s_mu, 0.0)
    zeta2 = jnp.maximum(tr_s2 + 2.0 * zeta1, 0.0)
    var_U = (4.0 * (N - 2) * zeta1 + 2.0 * zeta2) / (N * (N - 1))
    half = Z95 * jnp.sqrt(var_U)

    def rel(x):
        return jnp.sqrt(jnp.maximum(x, 0.0) / gn2)

    return dict(
        rel_bias=rel(U),
        rel_bias_lo=rel(U - half),
        rel_bias_hi=rel(U + half),
        rel_bias_sq=U / gn2,
        rel_variance=variance / gn2,
        cos_mean=cos_mean,
        cos_sample=cos_sample,
    )


_STAT_FIELDS = (
    "rel_bias",
    "rel_bias_lo",
    "rel_bias_hi",
    "rel_bias_sq",
    "rel_variance",
    "cos_mean",
    "cos_sample",
)


# ----------------------------------------------------------------- sweep ---


def _check_estimators(estimators) -> tuple[Estimator | OnlineEstimator, ...]:
    kinds = (Estimator, OnlineEstimator)
    if isinstance(estimators, kinds) or not isinstance(estimators, Sequence):
        raise TypeError("estimators must be a list of jbptt Estimators.")
    if not estimators:
        raise ValueError("estimators is empty; give at least one Estimator.")
    for e in estimators:
        if not isinstance(e, kinds):
            raise TypeError(
                "estimators must hold Estimators or forward_mode "
                f"OnlineEstimators, got {type(e).__name__}."
            )
    names = [e.name for e in estimators]
    if len(set(names)) != len(names):
        raise ValueError(f"estimator names must be unique, got {names}.")
    return tuple(estimators)


def make_sweep(
    cell: Cell,
    loss_fn,
    estimators: Sequence[Estimator],
    n_samples: int = 256,
    *,
    chunk: int = 64,
    mesh=None,
):
    """Compile-once sweep: ``(params, h0, xs, ys, key) -> (g, stats)``.

    One ``jit``: the forward is shared, the exact gradient is the reverse scan
    with ``w ≡ 1``, and the samples of all estimators with the same number of
    windows are stacked and run as one vmapped reverse scan, ``chunk`` samples
    at a time (``lax.map``) to bound memory. Reuse the returned function for
    several parameter points: it compiles once per shape.

    Args:
      cell: a :class:`jbptt.cells.Cell`.
      loss_fn: per-step loss ``(params, out_t, y_t) -> scalar``.
      estimators: list of :class:`jbptt.estimators.Estimator` (unique names).
      n_samples: samples per random estimator (≥ 4); deterministic ones are
        evaluated once.
      chunk: samples per vmapped batch. Memory: the reverse scans of one
        chunk, plus every sample's flattened gradient (E·N·D floats, for D
        parameters), kept for the statistics.
      mesh: ``None`` (one device), or the devices over which to split the
        rows (estimator configurations × samples): a count, a list of
        devices or a :func:`jbptt.sharding.make_mesh` mesh. Same numbers as
        on one device, bitwise when ``chunk`` divides the rows per device
        (see :mod:`jbptt.sharding`).

    Returns:
      ``run(params, h0, xs, ys, key) -> (g_flat[D], {field: [E]})``; pack it
      with :func:`to_result`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt import sweep
      >>> from jbptt import estimators
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> es = [estimators.tbptt(1), estimators.tbptt(4)]
      >>> run = sweep.make_sweep(model.cell, model.loss_fn, es)
      >>> xs = jnp.ones((4, 1))
      >>> for seed in range(2):  # compiled once, run at two parameter points
      ...     p = model.init(jax.random.key(seed), 1, 3)
      ...     g, stats = run(p, model.cell.initial_state(p), xs, xs, jax.random.key(0))
      ...     res = sweep.to_result(es, stats, g, T=4, n_samples=256)
      ...     print(res.rel_bias[0] > 0, res.rel_bias[1] < 1e-6)
      True True
      True True
    """
    estimators = _check_estimators(estimators)
    _check_n("n_samples", n_samples, 4)
    _check_n("chunk", chunk)
    mesh = sharding.resolve_mesh(mesh)

    def run(params, h0, xs, ys, key):
        problem = Problem(cell, loss_fn, params, h0, xs, ys)
        T = _check_problem(problem)
        grad = gradient_fn(problem)
        window_sum = _flat_window_sum(grad)
        ones = jnp.ones((1, T), xs.dtype)
        g = window_sum(ones, ones)
        samples = [None] * len(estimators)
        draws = {}  # link-weight estimators, by index
        for i, e in enumerate(estimators):
            n = 1 if e.deterministic else n_samples
            if isinstance(e, OnlineEstimator):  # forward mode: its own scan
                samples[i] = _online_samples(
                    e,
                    cell,
                    loss_fn,
                    params,
                    h0,
                    xs,
                    ys,
                    _estimator_key(key, e),
                    n,
                    chunk=chunk,
                )
                continue
            ws, ms = _draw(e, key, T, n)
            if ws.ndim != 3 or ws.shape[2] != T or ms.shape != ws.shape:
                raise ValueError(
                    f"estimator {e.name!r}: sample must return w and m of shape "
                    f"[J, {T}]; got {ws.shape[1:]} and {ms.shape[1:]}."
                )
            draws[i] = (ws.astype(xs.dtype), ms.astype(xs.dtype))
        # Group estimators by window count J: one stacked reverse scan each.
        for J in sorted({ws.shape[1] for ws, _ in draws.values()}):
            idx = [i for i, (ws, _) in draws.items() if ws.shape[1] == J]
            ws = jnp.concatenate([draws[i][0] for i in idx])
            ms = jnp.concatenate([draws[i][1] for i in idx])
            if mesh is None:
                flat = _map_chunks(window_sum, ws, ms, chunk)
            else:  # rows split over devices, gathered before the statistics
                flat = sharding.map_rows(window_sum, (ws, ms), chunk, mesh)
            start = 0
            for i in idx:
                n = draws[i][0].shape[0]
                samples[i] = flat[start : start + n]
                start += n
        # Statistics vmapped over estimators with equal sample counts (1 or N).
        stats = [None] * len(estimators)
        for n in sorted({s.shape[0] for s in samples}):
            idx = [i for i, s in enumerate(samples) if s.shape[0] == n]
            batch = jax.vmap(sample_stats, in_axes=(0, None))(
                jnp.stack([samples[i] for i in idx]), g
            )
            for j, i in enumerate(idx):
                stats[i] = {f: batch[f][j] for f in _STAT_FIELDS}
        return g, {f: jnp.stack([s[f] for s in stats]) for f in _STAT_FIELDS}

    return jax.jit(run)


def sweep(
    problem: Problem,
    estimators: Sequence[Estimator],
    key,
    n_samples: int = 256,
    *,
    chunk: int = 64,
    mesh=None,
) -> SweepResult:
    """Bias, variance and cosines of each estimator on one problem.

    Args:
      problem: a :class:`Problem`.
      estimators: list of :class:`jbptt.estimators.Estimator` (unique names).
      key: PRNG key; each estimator uses ``fold_in(key, crc32(name))``.
      n_samples: samples per random estimator (≥ 4).
      chunk: samples per vmapped batch (memory bound).
      mesh: devices to split the samples over (see :func:`make_sweep`).

    Returns:
      A :class:`SweepResult`; ``result.rows()`` gives CSV rows.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt import sweep
      >>> from jbptt import estimators
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> p = model.init(jax.random.key(0), 1, 8)
      >>> xs = jax.random.normal(jax.random.key(1), (12, 1))
      >>> prob = sweep.Problem(model.cell, model.loss_fn, p,
      ...                      model.cell.initial_state(p), xs, xs)
      >>> res = sweep.sweep(prob, [estimators.full(), estimators.tbptt(2),
      ...                          estimators.artbp(0.5)], jax.random.key(2), 64)
      >>> res.names
      ('full', 'tbptt(k=2)', 'artbp(c=0.5)')
      >>> float(res.rel_bias[0]) < 1e-5, float(res.rel_variance[1])
      (True, 0.0)
    """
    _check_problem(problem)
    estimators = _check_estimators(estimators)
    run = make_sweep(
        problem.cell, problem.loss_fn, estimators, n_samples, chunk=chunk, mesh=mesh
    )
    g, stats = run(problem.params, problem.h0, problem.xs, problem.ys, key)
    return to_result(estimators, stats, g, problem.xs.shape[0], n_samples)


def to_result(estimators, stats, g, T: int, n_samples: int) -> SweepResult:
    """Pack the output of a :func:`make_sweep` function as a :class:`SweepResult`.

    ``estimators`` and ``n_samples`` must be those given to :func:`make_sweep`;
    ``T`` is the sequence length (for the expected depths).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt import sweep, estimators
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> p = model.init(jax.random.key(0), 1, 3)
      >>> es = [estimators.full(), estimators.tbptt(2)]
      >>> run = sweep.make_sweep(model.cell, model.loss_fn, es, 8)
      >>> xs = jnp.ones((4, 1))
      >>> g, stats = run(p, model.cell.initial_state(p), xs, xs, jax.random.key(1))
      >>> res = sweep.to_result(es, stats, g, T=4, n_samples=8)
      >>> res.names, res.expected_depth.tolist(), res.n_samples.tolist()
      (('full', 'tbptt(k=2)'), [4.0, 2.0], [1, 1])
    """
    E = len(estimators)
    return SweepResult(
        names=tuple(e.name for e in estimators),
        expected_depth=np.array([_depth(e, T) for e in estimators]),
        windows=np.array([_windows(e, T) for e in estimators]),
        n_samples=np.array([1 if e.deterministic else n_samples for e in estimators]),
        grad_norm=np.full(E, float(jnp.linalg.norm(g))),
        **{f: np.asarray(stats[f], dtype=np.float64) for f in _STAT_FIELDS},
    )


def _depth(e, T: int) -> float:
    # Forward-mode estimators never truncate: depth T (their cost is
    # OnlineEstimator.cost, not a depth).
    return float(T) if isinstance(e, OnlineEstimator) else float(e.expected_depth(T))


def _windows(e, T: int) -> int:
    if isinstance(e, OnlineEstimator):
        return 0  # no reverse scan
    ws, _ = jax.eval_shape(lambda k: e.sample(k, T), jax.random.key(0))
    return int(ws.shape[0])
