"""Bias and variance of gradient estimators, all sampled under one ``jit``.

For a problem (cell, per-step loss, params, h0, xs, ys), every estimator of
the protocol (docs/design.md, "The estimator protocol") is asked for its
samples (``estimator.samples``) and its cost (``estimator.cost``); the sweep
never asks what kind of estimator it holds. For truncation estimators, which
sample windows ``(w_j, m_j)`` (:mod:`jbptt.estimators`), each sample is

    ĝ = Σ_j ∇^{(w_j)} Σ_t m_{j,t} ℓ_t.

Link weights ``w`` enter only the reverse scan, and loss weights ``m`` only
the cotangents fed into it, so the forward scan and the per-step loss vjp are
computed once (:func:`jbptt.estimators.gradient_fn`, shared within the sweep)
and shared by every estimator, window and sample; what is vmapped is the
reverse scan alone (docs/design.md, "Performance structure").

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
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from jbptt._src import adjoint as adjoint_lib
from jbptt._src import checks, protocol, sharding, validation
from jbptt._src.cell import Cell
from jbptt._src.protocol import Problem, check_problem, estimator_key, gradient_fn

Z95 = 1.959963984540054  # two-sided 95% normal quantile


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


def sample_estimates(
    problem: Problem,
    estimator,
    key,
    n: int,
    *,
    chunk: int = 64,
    mesh=None,
    adjoint=None,
) -> jax.Array:
    """``n`` flattened estimates ``[n, D]`` of any estimator of the protocol.

    Samples are drawn by ``estimator.samples`` from
    ``fold_in(key, crc32(estimator.name))``, exactly as :func:`sweep` draws
    them. Unflatten a row with
    ``jax.flatten_util.ravel_pytree(problem.params)[1]``. ``adjoint=`` (a
    reverse-pass strategy, e.g. ``jbptt.Budget(max_states=M)``) runs the
    estimates' reverse passes as :func:`jbptt.estimators.gradient_fn` does.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt import sweep
      >>> from jbptt import estimators
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> p = model.init(jax.random.key(0), 1, 4)
      >>> prob = estimators.Problem(model.cell, model.loss_fn, p,
      ...     model.cell.initial_state(p), jnp.ones((6, 1)), jnp.zeros((6, 1)))
      >>> sweep.sample_estimates(prob, estimators.artbp(0.3),
      ...                        jax.random.key(1), 5).shape
      (5, 29)
    """
    check_problem(problem)
    _check_values(problem)
    estimator = protocol.check_estimator(estimator)
    n, chunk = _check_n("n", n), _check_n("chunk", chunk)
    key = estimator_key(validation.prng_key("key", key), estimator)
    if adjoint is None:
        return estimator.samples(problem, key, n, chunk=chunk, mesh=mesh)
    with protocol.shared_forward(adjoint):
        return estimator.samples(problem, key, n, chunk=chunk, mesh=mesh)


# ------------------------------------------------------------ statistics ---


def _check_n(name, n, minimum=1):
    return validation.integer(name, n, minimum=minimum, what=f"an int ≥ {minimum}")


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


def _check_estimators(estimators) -> tuple:
    if hasattr(estimators, "samples") or not isinstance(estimators, Sequence):
        raise TypeError("estimators must be a list of jbptt Estimators.")
    if not estimators:
        raise ValueError("estimators is empty; give at least one Estimator.")
    estimators = tuple(protocol.check_estimator(e) for e in estimators)
    names = [e.name for e in estimators]
    if len(set(names)) != len(names):
        raise ValueError(f"estimator names must be unique, got {names}.")
    return estimators


def make_sweep(
    cell: Cell,
    loss_fn,
    estimators: Sequence,
    n_samples: int = 256,
    *,
    chunk: int = 64,
    mesh=None,
    adjoint=None,
):
    """Compile-once sweep: ``(params, h0, xs, ys, key) -> (g, stats)``.

    One ``jit``: the forward is shared, the exact gradient is the reverse scan
    with ``w ≡ 1``, and each estimator's samples are vmapped, ``chunk`` at a
    time (:func:`jbptt.sharding.map_rows`), to bound memory. Reuse the
    returned function for several parameter points: it compiles once per
    shape.

    Args:
      cell: a :class:`jbptt.cells.Cell`.
      loss_fn: per-step loss ``(params, out_t, y_t) -> scalar``.
      estimators: list of estimators of the protocol (unique names):
        truncation, forward-mode or your own.
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
      adjoint: how the reverse passes run: ``None`` (``jbptt.ReverseScan()``:
        one forward shared by every estimate), or another strategy, e.g.
        ``jbptt.Budget(max_states=M)`` to bound memory on long sequences
        (each estimate then runs its own forward; same values).

    Returns:
      ``run(params, h0, xs, ys, key, lengths=None, resets=None) ->
      (g_flat[D], {field: [E]})``; pack it with :func:`to_result`.
      Concrete ``xs`` and ``ys`` are checked on the host before the jitted
      call (NaN/inf, token ids and class labels in range, as
      :func:`jbptt.checks.check_finite` and
      :func:`jbptt.checks.check_tokens`); traced ones are not.
      ``lengths`` and ``resets`` are those of :class:`Problem`: the exact
      gradient and every estimator's samples are taken on the masked or
      reset problem.

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
    n_samples = _check_n("n_samples", n_samples, 4)
    chunk = _check_n("chunk", chunk)
    mesh = sharding.resolve_mesh(mesh)
    adjoint = adjoint_lib.resolve(adjoint)

    def run(params, h0, xs, ys, key, lengths=None, resets=None):
        problem = Problem(cell, loss_fn, params, h0, xs, ys, lengths, resets)
        T = check_problem(problem)
        key = validation.prng_key("key", key)
        with protocol.shared_forward(adjoint):  # one forward for every estimator
            grad = gradient_fn(problem)
            ones = jnp.ones((T,), xs.dtype)
            g = jax.flatten_util.ravel_pytree(grad(ones, ones))[0]
            samples = [
                e.samples(
                    problem,
                    estimator_key(key, e),
                    1 if e.deterministic else n_samples,
                    chunk=chunk,
                    mesh=mesh,
                )
                for e in estimators
            ]
        # Statistics vmapped over estimators with equal sample counts (1 or N).
        stats = [None] * len(estimators)
        for n in sorted({s.shape[0] for s in samples}):
            idx = [i for i, s in enumerate(samples) if s.shape[0] == n]
            batch = jax.vmap(sample_stats, in_axes=(0, None))(
                jnp.stack([samples[i] for i in idx]), g
            )
            for j, i in enumerate(idx):
                stats[i] = {f: batch[f][j] for f in _STAT_FIELDS}
        out = {f: jnp.stack([s[f] for s in stats]) for f in _STAT_FIELDS}
        with jax.ensure_compile_time_eval():  # costs are static numbers
            costs = [e.cost(problem) for e in estimators]
        out["expected_depth"] = jnp.array([c.depth for c in costs])
        out["windows"] = jnp.array([c.reverse_scans for c in costs])
        return g, out

    return _checked(cell, loss_fn, jax.jit(run))


def _check_values(problem: Problem) -> None:
    """Host-level value checks of a concrete problem's data (NaN/inf, token
    ids, class labels; :func:`jbptt._src.checks.check_data`)."""
    checks.check_data(
        problem.cell, problem.loss_fn, xs=problem.xs, ys=problem.ys, prefix="problem."
    )


def _checked(cell, loss_fn, run):
    """``run`` (jitted), checking concrete ``xs`` and ``ys`` on the host first
    (traced ones, e.g. under an outer ``jit``, are passed through)."""

    def checked(params, h0, xs, ys, key, lengths=None, resets=None):
        checks.check_data(cell, loss_fn, xs=xs, ys=ys)
        return run(params, h0, xs, ys, key, lengths, resets)

    checked.lower = run.lower
    return checked


def sweep(
    problem: Problem,
    estimators: Sequence,
    key,
    n_samples: int = 256,
    *,
    chunk: int = 64,
    mesh=None,
    adjoint=None,
) -> SweepResult:
    """Bias, variance and cosines of each estimator on one problem.

    Args:
      problem: a :class:`Problem` (with its ``lengths`` and ``resets``, if
        any: every estimator is compared with the exact gradient of the
        masked or reset loss).
      estimators: list of estimators of the protocol (unique names):
        truncation, forward-mode or your own.
      key: PRNG key; each estimator uses ``fold_in(key, crc32(name))``.
      n_samples: samples per random estimator (≥ 4).
      chunk: samples per vmapped batch (memory bound).
      mesh: devices to split the samples over (see :func:`make_sweep`).
      adjoint: how the reverse passes run (see :func:`make_sweep`).

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
      >>> prob = estimators.Problem(model.cell, model.loss_fn, p,
      ...                      model.cell.initial_state(p), xs, xs)
      >>> res = sweep.sweep(prob, [estimators.full(), estimators.tbptt(2),
      ...                          estimators.artbp(0.5)], jax.random.key(2), 64)
      >>> res.names
      ('full', 'tbptt(k=2)', 'artbp(c=0.5)')
      >>> float(res.rel_bias[0]) < 1e-5, float(res.rel_variance[1])
      (True, 0.0)
    """
    check_problem(problem)
    _check_values(problem)
    estimators = _check_estimators(estimators)
    run = make_sweep(
        problem.cell,
        problem.loss_fn,
        estimators,
        n_samples,
        chunk=chunk,
        mesh=mesh,
        adjoint=adjoint,
    )
    g, stats = run(
        problem.params, problem.h0, problem.xs, problem.ys, key,
        problem.lengths, problem.resets,
    )  # fmt: skip
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
        expected_depth=np.asarray(stats["expected_depth"], dtype=np.float64),
        windows=np.asarray(stats["windows"]).astype(int),
        n_samples=np.array([1 if e.deterministic else n_samples for e in estimators]),
        grad_norm=np.full(E, float(jnp.linalg.norm(g))),
        **{f: np.asarray(stats[f], dtype=np.float64) for f in _STAT_FIELDS},
    )
