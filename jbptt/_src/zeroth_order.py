r"""Zeroth-order gradient estimators: antithetic ES, truncated ES, PES and NRES.

All four estimate the gradient of the *Gaussian-smoothed* loss

.. math::

    L_σ(θ) = E_{ε∼N(0, I)}[L(θ + σε)], \qquad
    ∇L_σ(θ) = \frac{1}{2σ} E[ε (L(θ + σε) − L(θ − σε))],

from loss values alone, with antithetic pairs (±ε) of perturbed unrolls
(plain ``lax.scan`` of ``cell.step`` at θ ± σε, vmapped over particles).
Smoothing moves the gradient unless the loss is quadratic in θ: for linear
dynamics and a quadratic loss (influence balancing) L(θ + σε) − L(θ − σε) =
2σ εᵀ∇L(θ) exactly, so ∇L_σ = ∇L and the unbiased estimators below are
unbiased for the exact gradient too. Elsewhere their bias against ∇L is the
smoothing's, O(σ²) for smooth losses.

The sequence is unrolled in truncations of K steps (the last one padded and
masked); the estimate of ∇L is the sum of the truncations' estimates
(Vicol, Metz & Sohl-Dickstein 2021; Li et al. 2023):

* **truncated ES**: fresh ε per truncation, both particles of a pair start
  from the unperturbed state; ignores θ's influence on that state, so it is
  biased like TBPTT(K).
* **PES**: fresh ε_j per truncation, each particle keeps its own perturbed
  state and the sum ξ_j = Σ_{i≤j} ε_i of its perturbations; the truncation's
  estimate is ξ_j (L_j⁺ − L_j⁻)/(2σ). Unbiased for the smoothed loss in which
  every truncation has its own perturbation.
* **NRES** (noise reuse): one ε for ``horizon`` truncations, particles keep
  their states; the estimate is ε (L_j⁺ − L_j⁻)/(2σ). Over the whole sequence
  it equals full-unroll ES with that ε: unbiased, with PES's state but not its
  growing ξ.
* **ES**: NRES with K = T, one truncation.

Each factory returns a :class:`ZerothOrder`, an estimator of the protocol
(:class:`jbptt.estimators.GradientEstimator`): ``samples`` (n estimates
over a whole problem, for :func:`jbptt.sweep.sweep`), ``cost`` (forward
steps, no backward) and ``online`` (K-step segments for
:func:`jbptt.train.train`, the particles carried as estimator state), built
on the pure functions ``draw``, ``init``/``segment`` and ``forward_steps``.
``draw`` runs ``segment`` over the truncations, so sweeps and online
training share one code path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jbptt._src import protocol, sharding, validation
from jbptt._src.protocol import Cost, OnlineRule

tree_map = jax.tree_util.tree_map


class ZerothOrder(NamedTuple):
    """An ES-family estimator: pure functions plus the estimator protocol
    (:class:`jbptt.estimators.GradientEstimator`), so :func:`jbptt.sweep.sweep`
    and :func:`jbptt.train.train` take it like any other estimator.

    Attributes:
      name: e.g. ``"pes(sigma=0.01, pairs=4, K=10)"``.
      hparams: ``{"sigma", "pairs", "K", ...}``.
      draw: ``(problem, key) -> [D]``, one flattened estimate of ∇L
        (``ravel_pytree(problem.params)`` order); traceable.
      forward_steps: ``T -> float``, cell steps per estimate over T steps.
      state_bytes: ``(problem) -> int``, memory carried between truncations
        beyond the cell state (particle states, accumulated perturbations).
      init: ``(cell, params, h0, x0) -> est_state``.
      segment: ``(cell, loss_fn, params, h, est_state, xs, ys, w, mask, key)
        -> (losses, grads, h_new, est_state_new)`` for one truncation, as
        :class:`jbptt.estimators.OnlineRule` wants it: ``losses[n]`` of the
        unperturbed unroll (zero on padding), ``w`` ignored (zeroth order has
        no backward), ``mask[t] = 0`` marks padding, on which states do not
        move.
      deterministic: ``False``: every estimate draws perturbations.
    """

    name: str
    hparams: dict
    draw: Callable
    forward_steps: Callable
    state_bytes: Callable
    init: Callable
    segment: Callable
    deterministic: bool = False

    def __repr__(self) -> str:  # the name and hyperparameters
        return protocol.describe(self.name, self.hparams)

    # ------------------------------------------ the estimator protocol ---

    def samples(self, problem, key, n: int, *, chunk: int = 64, mesh=None):
        """``[n, D]``: estimates from keys ``split(key, n)``, ``chunk`` at a
        time (each one vmaps its 2·pairs particles), split over ``mesh``.
        ``Problem.lengths`` and ``resets`` are refused (the particles' unrolls
        do not take them yet)."""
        protocol.check_problem(problem)
        n, chunk = validation.sample_count(n, chunk)
        if problem.lengths is not None or problem.resets is not None:
            raise ValueError(
                f"{self.name}: zeroth-order estimators do not take "
                "Problem.lengths or Problem.resets yet; sample them on a "
                "problem without (or use a truncation estimator)."
            )
        keys = jax.random.split(key, n)
        return sharding.map_rows(lambda k: self.draw(problem, k), (keys,), chunk, mesh)

    def cost(self, problem) -> Cost:
        """No reverse scan; ``forward_steps`` counts every particle's unroll
        (and truncated ES's unperturbed one). ``depth`` is the horizon over
        which θ's influence is accounted: ``K`` for truncated ES, ``T`` for
        ES, PES and NRES (unbiased for the smoothed loss)."""
        T = protocol.check_problem(problem)
        K = self.hparams.get("K")
        depth = min(K, T) if self.name.startswith("truncated_es") and K else T
        return Cost(
            depth=float(depth),
            backward_steps=0.0,
            forward_steps=float(self.forward_steps(T)),
            state_bytes=int(self.state_bytes(problem)),
            reverse_scans=0,
        )

    def online(self) -> OnlineRule:
        """One update per truncation of K steps (T for :func:`es`, which then
        updates once per call); particles and ξ are the carried state."""
        return OnlineRule(
            self.init, _truncations(self.hparams.get("K")), self.segment,
            takes_resets=False, takes_adjoint=False,
        )  # fmt: skip


@functools.cache
def _truncations(K):
    """Plans K-step segments (one segment of T when K is None); cached so that
    equal estimators share one function object."""

    def plan(key, T: int):
        k = T if K is None else min(K, T)
        lengths = np.full(T // k, k, int)
        if T % k:
            lengths = np.append(lengths, T % k)
        return lengths, None

    return plan


class ESState(NamedTuple):
    """Carried between truncations: particle states ``[2P, ...]`` (+ then −),
    the perturbations ``[P, D]`` (PES: their running sum ξ; NRES: the reused
    ε) and the number of truncations since the last noise draw."""

    states: Any
    noise: jax.Array
    count: jax.Array


def _check(sigma, pairs, K, horizon):
    """The hyperparameters as Python numbers (NumPy scalars accepted); NaN,
    ±inf, bools and non-positive values refused, naming the argument."""
    sigma = validation.positive_float("sigma", sigma)
    ints = [validation.positive_int("pairs", pairs)]
    for name, v in (("K", K), ("horizon", horizon)):
        ints.append(None if v is None else validation.positive_int(name, v))
    return (sigma, *ints)


def _unroll(cell, loss_fn, params, h, xs, ys, mask):
    """``mask_t ℓ_t`` per step and the state after the real steps: plain
    ``lax.scan``."""

    def body(h, inp):
        x_t, y_t, m_t = inp
        h_new, out = cell.step(params, h, x_t)
        h_new = tree_map(lambda a, b: jnp.where(m_t > 0, a, b), h_new, h)
        return h_new, m_t * loss_fn(params, out, y_t)

    h, losses = jax.lax.scan(body, h, (xs, ys, mask))
    return losses, h


def _broadcast(h, n: int):
    return tree_map(lambda a: jnp.broadcast_to(a, (n, *a.shape)), h)


def _particles(kind: str, horizon, pairs: int, est_state: ESState, h, fresh):
    """One truncation's particle starts ``[2P, ...]``, perturbations ε and
    the noise carried on (PES: the running sum ξ; NRES: the reused ε)."""
    synced = _broadcast(h, 2 * pairs)
    if kind == "truncated":  # fresh ε, particles start from the main state
        return synced, fresh, est_state.noise
    # PES never resamples ε; NRES every `horizon` truncations. A reset
    # restarts the particles from the unperturbed state (and ξ at 0).
    if horizon is None:
        reset = est_state.count == 0
    else:
        reset = est_state.count % horizon == 0
    starts = tree_map(lambda s, a: jnp.where(reset, a, s), est_state.states, synced)
    if kind == "pes":
        xi = jnp.where(reset, 0.0, est_state.noise) + fresh  # ξ_j
        return starts, fresh, xi
    eps = jnp.where(reset, fresh, est_state.noise)  # nres
    return starts, eps, eps


def _over_truncations(segment, init, main: bool, k: int, problem, key):
    """One estimate ``[D]``: the sum of ``segment``'s gradients over the
    truncations of length ``k`` (the last padded), from ``fold_in(key, j)``;
    ``main``: whether the unperturbed states are tracked (truncated ES)."""
    cell, loss_fn, params = problem.cell, problem.loss_fn, problem.params
    h0, xs, ys = problem.h0, problem.xs, problem.ys
    T = xs.shape[0]
    J = -(-T // k)
    pad = J * k - T

    def padded(a):
        a = jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)])
        return a.reshape(J, k, *a.shape[1:])

    xs_j, ys_j = tree_map(padded, xs), tree_map(padded, ys)
    mask = padded(jnp.ones((T,), ravel_pytree(params)[0].dtype))
    state = init(cell, params, h0, xs[0])

    def body(carry, inp):
        h, est, acc = carry
        j, x, y, m = inp
        k_j = jax.random.fold_in(key, j)
        _, g, h, est = segment(
            cell, loss_fn, params, h, est, x, y, None, m, k_j, track_main=main
        )
        return (h, est, acc + ravel_pytree(g)[0]), None

    acc0 = jnp.zeros_like(ravel_pytree(params)[0])
    (_, _, acc), _ = jax.lax.scan(
        body, (h0, state, acc0), (jnp.arange(J), xs_j, ys_j, mask)
    )
    return acc


def _make(kind: str, sigma: float, pairs: int, K: int | None, horizon: int | None):
    """Shared implementation; ``kind`` in {"truncated", "pes", "nres"}."""

    def perturbed(params, eps):  # [2P] params: θ + σε then θ − σε
        flat, unravel = ravel_pytree(params)
        thetas = flat + sigma * jnp.concatenate([eps, -eps])  # [2P, D]
        return jax.vmap(unravel)(thetas)

    def draw(key, params):
        D = ravel_pytree(params)[0].size
        dtype = ravel_pytree(params)[0].dtype
        return jax.random.normal(key, (pairs, D), dtype)

    def init(cell, params, h0, x0=None):
        D = ravel_pytree(params)[0].size
        dtype = ravel_pytree(params)[0].dtype
        states = _broadcast(h0, 2 * pairs)
        return ESState(states, jnp.zeros((pairs, D), dtype), jnp.zeros((), jnp.int32))

    def segment(
        cell, loss_fn, params, h, est_state, xs, ys, w, mask, key, track_main=True
    ):
        del w  # zeroth order: no backward, no link weights
        starts, eps, noise = _particles(
            kind, horizon, pairs, est_state, h, draw(key, params)
        )
        thetas = perturbed(params, eps)
        L, states = jax.vmap(lambda p, s: _unroll(cell, loss_fn, p, s, xs, ys, mask))(
            thetas, starts
        )
        L = jnp.sum(L, axis=1)  # [2P]: each particle's truncation loss
        dL = L[:pairs] - L[pairs:]  # [P]: L⁺ − L⁻ per pair
        direction = noise if kind == "pes" else eps
        g = dL @ direction / (2.0 * sigma * pairs)  # [D]
        grads = ravel_pytree(params)[1](g)
        if track_main:
            losses, h_new = _unroll(cell, loss_fn, params, h, xs, ys, mask)
        else:
            losses, h_new = jnp.zeros(mask.shape, L.dtype), h
        new_state = ESState(
            states if kind != "truncated" else est_state.states,
            noise,
            est_state.count + 1,
        )
        return losses, grads, h_new, new_state

    def truncation_length(T):
        return T if K is None else min(K, T)

    def one_sample(problem, key):
        k = truncation_length(problem.xs.shape[0])
        return _over_truncations(segment, init, kind == "truncated", k, problem, key)

    def forward_steps(T: int) -> float:
        main = 1 if kind == "truncated" else 0
        return float((2 * pairs + main) * T)

    def state_bytes(problem) -> int:
        flat = ravel_pytree(problem.params)[0]
        h_bytes = sum(a.nbytes for a in jax.tree_util.tree_leaves(problem.h0))
        if kind == "truncated":
            return 0
        return 2 * pairs * int(h_bytes) + pairs * flat.size * flat.dtype.itemsize

    name = {"truncated": "truncated_es", "pes": "pes", "nres": "nres"}[kind]
    hparams = {"sigma": sigma, "pairs": pairs, "K": K}
    if kind == "nres" and K is None:
        name = "es"
    if kind != "truncated" and horizon is not None:
        hparams["horizon"] = horizon
    label = ", ".join(
        f"{a}={protocol.label(b)}" for a, b in hparams.items() if b is not None
    )
    return ZerothOrder(
        f"{name}({label})",
        hparams,
        one_sample,
        forward_steps,
        state_bytes,
        init,
        segment,
    )


def es(sigma: float = 0.01, pairs: int = 1) -> ZerothOrder:
    """Antithetic ES on the full unroll: ε (L(θ+σε) − L(θ−σε)) / (2σ), averaged
    over ``pairs``.

    Unbiased for ∇L_σ, hence for ∇L when L is quadratic in θ. Cost 2·pairs·T
    forward steps.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt._src.sweep import Problem
      >>> from jbptt._src.zeroth_order import es
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> p = model.init(jax.random.key(0), 1, 3)
      >>> prob = Problem(model.cell, model.loss_fn, p,
      ...                model.cell.initial_state(p), jnp.ones((6, 1)),
      ...                jnp.zeros((6, 1)))
      >>> es(0.01, pairs=2).samples(prob, jax.random.key(1), 3).shape
      (3, 19)
    """
    return _make("nres", *_check(sigma, pairs, None, None))


def truncated_es(sigma: float = 0.01, pairs: int = 1, K: int = 10) -> ZerothOrder:
    """Truncated ES: K-step antithetic unrolls from the unperturbed state,
    fresh noise per truncation. Biased like TBPTT(K): θ's effect on the
    state entering a truncation is ignored. Cost (2·pairs + 1)·T (the
    unperturbed unroll supplies the truncations' starting states).

    Examples:
      >>> from jbptt._src.zeroth_order import truncated_es
      >>> truncated_es(0.1, pairs=4, K=5).name
      'truncated_es(sigma=0.1, pairs=4, K=5)'
    """
    return _make("truncated", *_check(sigma, pairs, K, None))


def pes(
    sigma: float = 0.01, pairs: int = 1, K: int = 10, horizon: int | None = None
) -> ZerothOrder:
    """Persistent ES (Vicol et al. 2021): particles keep their perturbed states
    across truncations and weight each truncation's loss difference by the
    accumulated perturbation ξ. Unbiased for the smoothed loss.

    Args:
      sigma: perturbation scale σ.
      pairs: antithetic pairs (2·pairs particles).
      K: truncation length.
      horizon: online training only: restart particles and ξ every
        ``horizon`` truncations (``None``: never; ξ's variance grows with the
        number of truncations since the restart).

    Examples:
      >>> from jbptt._src.zeroth_order import pes
      >>> pes(0.1, pairs=2, K=5).hparams
      {'sigma': 0.1, 'pairs': 2, 'K': 5}
    """
    return _make("pes", *_check(sigma, pairs, K, horizon))


def nres(
    sigma: float = 0.01, pairs: int = 1, K: int = 10, horizon: int | None = None
) -> ZerothOrder:
    """Noise-reuse ES (Li et al. 2023): one ε per ``horizon`` truncations,
    particles keep their states; each truncation contributes
    ε (L_j⁺ − L_j⁻)/(2σ). Over a whole sequence (``horizon=None``) the sum
    equals full-unroll ES with that ε: unbiased, computed K steps at a time.

    Examples:
      >>> from jbptt._src.zeroth_order import nres
      >>> nres(0.1, pairs=2, K=5, horizon=4).name
      'nres(sigma=0.1, pairs=2, K=5, horizon=4)'
    """
    return _make("nres", *_check(sigma, pairs, K, horizon))
