r"""Forward-mode online gradient estimators: RTRL, UORO and SnAp-1.

Truncation estimators (TBPTT, ARTBP) are link weights on a reverse scan
(docs/design.md). Forward-mode estimators instead carry, along the forward pass, an
approximation of the influence matrix ``J_t = ∂h_t/∂θ`` and read a gradient
off it at every step, so they need no backward pass through time:

.. math::

    J_t = D_t J_{t-1} + F_t, \qquad
    D_t = ∂h_t/∂h_{t-1}, \quad F_t = ∂f/∂θ \text{ (one step, } h_{t-1}
    \text{ fixed)}, \quad J_{-1} = 0,

    g_t = ∂ℓ_t/∂θ|_{\text{direct}} + (∂ℓ_t/∂h_{t-1})^T J_{t-1}, \qquad
    ĝ = Σ_t g_t.

``∂ℓ_t/∂h_{t-1}`` is taken through the step that produces ``out_t``, so any
cell whose output is any function of ``(θ, h_{t-1}, x_t)`` is covered; for an
output ``out_t = h_t`` this is the familiar ``(∂ℓ_t/∂h_t)^T J_t``.

* **RTRL** (Williams & Zipser 1989) keeps ``J_t`` exactly: memory
  ``O(S·|θ|)`` per sequence (``S`` = state size), ``O(S²·|θ|)`` FLOPs per
  step. ``ĝ`` equals the full BPTT gradient when θ is held fixed.
* **UORO** (Tallec & Ollivier 2017) keeps a rank-one ``h̃ θ̃ᵀ`` with
  ``E[h̃ θ̃ᵀ] = J_t``: with random signs ``ν``,
  ``h̃ ← ρ₀ D_t h̃ + ρ₁ ν``, ``θ̃ ← θ̃/ρ₀ + νᵀF_t/ρ₁``, where
  ``ρ₀ = √((‖θ̃‖+ε)/(‖D_t h̃‖+ε))`` and ``ρ₁ = √((‖νᵀF_t‖+ε)/(‖ν‖+ε))``
  minimise the variance. Unbiased: ``E[ĝ] = `` the RTRL gradient.
* **SnAp-1** (Menick et al. 2021) keeps ``J_t`` only on the sparsity pattern
  of the immediate Jacobian ``F_t``: ``J_t = (D_t J_{t-1}) ⊙ M + F_t``. For an
  Elman cell, ``W_{ij}``, ``U_{ij}`` and ``b_i`` touch only unit ``i`` in one
  step, so each parameter keeps one influence entry and ``D_t`` enters only
  through its diagonal. Biased, exact when ``D_t`` is (block-)diagonal on
  the pattern, e.g. a diagonal recurrent matrix.
* On **diagonal cells** (``D_t = diag(a_t)``: LRU, minGRU, minLSTM) RTRL is
  exact at ``O(|θ|)`` memory and SnAp-1 exact too (:func:`rtrl`, :func:`snap1`;
  stacks: :func:`jbptt.forward_mode.layerwise_rtrl`, biased across layers).

All three share one interface, :class:`OnlineEstimator`, which implements
the estimator protocol (docs/design.md, "The estimator protocol"), and are
pure functions of a PRNG key, so a sweep over keys is a ``vmap``
(:func:`online_samples`); they train online through
:func:`jbptt.train.train` like every other estimator. The sparsity pattern
SnAp-1 keeps lives in :mod:`jbptt._src.sparsity`.
Parameters and states are any pytrees, flattened with
``jax.flatten_util.ravel_pytree``. With batch dimensions every example
carries its own influence (``cell.step`` is vmapped over examples, so it must
accept one example without batch dimensions, as built-in and adapted cells
do); the per-step loss sees the whole batch, as in :func:`jbptt.loss`.

References:
  Williams & Zipser 1989, "A learning algorithm for continually running fully
  recurrent neural networks". Tallec & Ollivier 2017, "Unbiased Online
  Recurrent Optimization" (arXiv 1702.05043). Menick, Elsen, Evci, Osindero,
  Simonyan & Graves 2021, "Practical real time recurrent learning with a
  sparse approximation" (ICLR). Zucchet, Meier, Schug, Mujika & Sacramento
  2023, "Online learning of long-range dependencies" (NeurIPS).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jbptt._src import diagonal_rtrl as diag
from jbptt._src import (
    diagonal_window,
    online_scan,
    protocol,
    sequences,
    sharding,
    sparsity,
    update_every,
    validation,
)
from jbptt._src import influence as flat
from jbptt._src.cell import Cell
from jbptt._src.online_scan import OnlineState
from jbptt._src.protocol import Cost, OnlineRule, Problem

tree_map = jax.tree_util.tree_map

DEFAULT_MAX_BYTES = 2**30  # 1 GiB for the influence state and one-step Jacobians


class OnlineEstimator(NamedTuple):
    """A forward-mode gradient estimator as pure functions.

    Attributes:
      name: label for tables and plots, e.g. ``"uoro"``.
      init: ``(cell, params, h0, x) -> OnlineState``; ``x`` is one step's
        input (only its shape and dtype are read).
      step: ``(cell, loss_fn, key, params, state, x_t, y_t, reset=None,
        h_reset=None) -> (state, (loss_t, grad_t))``: advance one step and
        return ``g_t``, this step's gradient estimate (a pytree like
        ``params``). For online training, params may change between calls.
        ``reset`` (bool ``[*batch]``) marks the sequences whose episode
        starts at this step: their state is replaced by ``h_reset`` and their
        influence zeroed first (the new episode does not depend on θ through
        the old state), so ``g_t`` has no term through the previous episode.
      estimate: ``(key, cell, loss_fn, params, h0, xs, ys, *, resets=None,
        reset_state=None) -> ((L, h_T), grads)``: ``ĝ = Σ_t g_t`` over a
        sequence with fixed params, the same return structure as
        :func:`jbptt.value_and_grad`; ``resets [T, *batch]`` restart the
        state from ``reset_state`` (default ``h0``) as in
        :func:`jbptt.value_and_grad`.
      footprint: ``(cell, params, h0, x) -> flat.Footprint``: memory and FLOPs.
      deterministic: whether the key is ignored.
      hparams: hyperparameters, for reports.
      segment: the online segment gradient (:class:`OnlineRule`'s
        ``segment``, taking ``resets=`` and ``reset_state=``), built once
        with the estimator so that training compiles once per segment length.
    """

    name: str
    init: Callable[..., OnlineState]
    step: Callable[..., tuple[OnlineState, tuple[jax.Array, Any]]]
    estimate: Callable[..., tuple[tuple[jax.Array, Any], Any]]
    footprint: Callable[..., flat.Footprint]
    deterministic: bool
    hparams: dict[str, Any]
    segment: Callable[..., Any] | None = None

    def __repr__(self) -> str:  # the name and hyperparameters
        return protocol.describe(self.name, self.hparams)

    # ------------------------------------------ the estimator protocol ---

    def samples(
        self, problem: Problem, key, n: int, *, chunk: int = 64, mesh=None
    ) -> jax.Array:
        """``[n, P]`` flattened estimates from keys ``split(key, n)``
        (:func:`online_samples`); ``problem.resets`` restart the state and
        zero the influence. ``problem.lengths`` is refused: forward mode
        reads ``loss_fn`` on the whole batch at every step."""
        protocol.check_problem(problem)
        if problem.lengths is not None:
            raise ValueError(
                f"{self.name}: forward-mode estimators do not take "
                "Problem.lengths (the per-step loss is read on the whole batch); "
                "use resets for episode starts, or equal-length sequences."
            )
        cell, loss_fn, params, h0, xs, ys = problem[:6]
        return online_samples(
            self, cell, loss_fn, params, h0, xs, ys, key, n,
            chunk=chunk, mesh=mesh, resets=problem.resets,
        )  # fmt: skip

    def cost(self, problem: Problem) -> Cost:
        """No truncation (depth T) and no reverse scan; the carried influence
        is ``state_bytes``."""
        T = protocol.check_problem(problem)
        fp = self.footprint(problem.cell, problem.params, problem.h0, problem.xs[0])
        return Cost(
            depth=float(T),
            backward_steps=0.0,
            forward_steps=float(T),
            state_bytes=int(fp.state_bytes),
        )

    def cost_report(self, problem: Problem) -> str:
        """What the influence is (exact or not) and the bytes it carries per
        sequence batch, as one line (for a diagonal cell under :func:`rtrl`,
        the memory formula with its numbers)."""
        protocol.check_problem(problem)
        fp = self.footprint(problem.cell, problem.params, problem.h0, problem.xs[0])
        return diag.report(self.name, problem.cell, fp)

    def online(self) -> OnlineRule:
        """One update per step; the influence is the carried state."""
        return OnlineRule(
            self._init_influence, _every_step, self.segment,
            takes_resets=True, takes_adjoint=False,
        )  # fmt: skip

    def every(self, n: int) -> update_every.UpdateEvery:
        """This estimator with one update per ``n`` steps in the trainer (the
        sum of its per-step gradients since the last), not one per step, so
        its update count can match TBPTT(n)'s; the influence carries on.

        Examples:
          >>> from jbptt import forward_mode
          >>> forward_mode.rtrl().every(16).hparams["update_every"]
          16
        """
        return update_every.UpdateEvery(self, validation.positive_int("n", n))

    def _init_influence(self, cell, params, h0, x0):
        return self.init(cell, params, h0, x0).influence


def _every_step(key, T: int):
    return np.ones(T, int), None


def _check_max_bytes(max_bytes) -> int:
    return validation.positive_int("max_bytes", max_bytes)


# --------------------------------------------------------------------------
# One factory per estimator: an "influence" triple (init, read, update).


class _Rule(NamedTuple):
    """How an estimator represents J: init, gradient read-out, update, cost."""

    init: Callable  # (fl, x_b) -> influence
    read: Callable  # (fl, infl, gH[B, S], X[B, ...]) -> [P], Σ_b gH_bᵀ J_b
    update: Callable  # (fl, infl, key, H_prev[B,S], X[B,...]) -> infl
    cost: Callable  # (fl, x_b, C) -> flat.Footprint, C = FLOPs of one cell step
    what: str  # what the memory is, for the size error


def _make(name: str, rule: _Rule, max_bytes: int, deterministic: bool, hparams):
    return assemble(name, *_parts(name, rule, max_bytes), deterministic, hparams)


def _parts(name: str, rule: _Rule, max_bytes: int):
    """``init``, ``step`` and ``footprint`` of an estimator on the flat J."""

    def prepare(cell, params, h, x):
        fl = flat.flatten(cell, params, h, x)
        diag.check_real_state(name, cell, h)
        x_b = fl.x_examples(x)[0]
        flat.check_bytes(name, rule.cost(fl, x_b, 0.0), max_bytes, rule.what)
        return fl, x_b

    def init(cell, params, h0, x):
        fl, x_b = prepare(cell, params, h0, x)
        return OnlineState(h0, rule.init(fl, x_b))

    def step(cell, loss_fn, key, params, state, x_t, y_t, reset=None, h_reset=None):
        fl, _ = prepare(cell, params, state.h, x_t)
        if reset is not None:  # episode start: h_{t-1} := h_reset, J_{t-1} := 0
            state = _restart(fl, state, reset, h_reset)
        H = fl.to_flat(state.h)  # [B, S]
        # ℓ_t, ∂ℓ_t/∂θ (direct) and ∂ℓ_t/∂h_{t-1}, through the step.
        (loss, H_new), (g_theta, g_H) = jax.value_and_grad(
            flat.loss_and_next(cell, loss_fn, fl, x_t, y_t),
            argnums=(0, 1),
            has_aux=True,
        )(fl.theta, H)
        X = fl.x_examples(x_t)  # [B, ...]
        grad = g_theta + rule.read(fl, state.influence, g_H, X)  # g_t, [P]
        influence = rule.update(fl, state.influence, key, H, X)
        return OnlineState(fl.from_flat(H_new), influence), (loss, fl.unravel_p(grad))

    def cost(cell, params, h0, x):
        fl = flat.flatten(cell, params, h0, x)
        x_b = fl.x_examples(x)[0]
        return rule.cost(fl, x_b, flat.step_flops(fl, x_b))

    return init, step, cost


def assemble(
    name, init, step, cost, deterministic, hparams, windowed=None
) -> OnlineEstimator:
    """An :class:`OnlineEstimator` from its ``init`` and ``step``: the
    sequence estimate and the training segment are scans of ``step``, or runs
    of many steps at once where ``windowed(cell)`` gives one
    (:func:`jbptt._src.online_scan.scans`)."""
    estimate, segment = online_scan.scans(init, step, windowed)
    return OnlineEstimator(
        name, init, step, estimate, cost, deterministic, hparams, segment
    )


def _restart(fl: flat.Flat, state: OnlineState, reset, h_reset) -> OnlineState:
    """Sequences starting an episode (``reset [*batch]``): state ``h_reset``,
    influence zero. Every influence leaf has the examples ``[B]`` in front."""
    r = jnp.reshape(reset, (fl.B,))

    def zero(a):
        return jnp.where(r.reshape((fl.B,) + (1,) * (a.ndim - 1)), 0.0, a).astype(
            a.dtype
        )

    h = sequences.select(reset, h_reset, state.h)
    return OnlineState(h, tree_map(zero, state.influence))


def rtrl(
    *, max_bytes: int = DEFAULT_MAX_BYTES, diagonal: bool = True, window: int = 64
) -> OnlineEstimator:
    """Real-time recurrent learning: the exact influence matrix.

    Memory is ``B·S·P`` numbers for ``J`` plus the one-step Jacobians
    (``S`` = state size, ``P`` = number of parameters, ``B`` = batch): for an
    Elman cell with ``H`` units, ``O(H³)`` memory and ``O(H⁴)`` FLOPs per
    step. Problems above ``max_bytes`` are refused at trace time with the
    bytes they would need.

    **Diagonal cells** (LRU, minGRU, minLSTM, :func:`jbptt.cells.diagonal`)
    take the diagonal influence automatically (Zucchet et al. 2023,
    :mod:`jbptt._src.diagonal_rtrl`): exact, complex states included, at
    ``O(|θ|)`` memory per sequence instead of ``O(H·|θ|)``
    (:meth:`OnlineEstimator.cost_report`). Stacks: :func:`layerwise_rtrl`.
    Where the params stay fixed over many steps (``estimate``, and the
    trainer's segments under :meth:`OnlineEstimator.every`), a diagonal
    cell's steps run ``window`` at a time: BPTT inside the window and the
    influence read and advanced once per window, the same sums of ``g_t``
    (:func:`jbptt._src.diagonal_window.window`).

    Args:
      max_bytes: largest influence state plus per-step work, in bytes.
      diagonal: take the diagonal influence on diagonal cells (default);
        ``False`` keeps the full influence matrix ``J`` everywhere (real
        states only), the reference the diagonal form is tested against.
      window: on a diagonal cell, steps taken at once under fixed params
        (working in about ``8·window·B·H`` numbers besides the influence,
        :meth:`OnlineEstimator.cost_report`); ``1`` steps one at a time.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt import forward_mode
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> params = model.init(jax.random.key(0), 2, 4)
      >>> h0 = model.cell.initial_state(params)
      >>> xs, ys = jnp.ones((6, 2)), jnp.zeros((6, 1))
      >>> est = forward_mode.rtrl()
      >>> (L, h_T), g = est.estimate(
      ...     jax.random.key(1), model.cell, model.loss_fn, params, h0, xs, ys)
      >>> (_, _), g_bptt = jbptt.value_and_grad(model.cell, model.loss_fn)(
      ...     params, h0, xs, ys)
      >>> bool(jnp.allclose(g["cell"]["W"], g_bptt["cell"]["W"], atol=1e-6))
      True
    """
    max_bytes = _check_max_bytes(max_bytes)
    if not isinstance(diagonal, bool):
        raise TypeError(f"diagonal must be True or False, got {diagonal!r}.")
    window = validation.positive_int("window", window)

    def init(fl, x_b):
        return jnp.zeros((fl.B, fl.S, fl.theta.size), fl.theta.dtype)

    def read(fl, J, g_H, X):
        return jnp.einsum("bs,bsp->p", g_H, J)

    def update(fl, J, key, H, X):
        F, D = flat.jacobians(fl, H, X)
        return jnp.einsum("bij,bjp->bip", D, J) + F  # J_t = D_t J_{t-1} + F_t

    def cost(fl, x_b, C):
        B, S, P = fl.B, fl.S, fl.theta.size
        flops = B * ((1 + 2 * S) * C + 2 * S * S * P + 3 * S * P)
        return flat.Footprint(
            flat.nbytes(fl, B * S * P), flat.nbytes(fl, B * S * (P + S)), flops
        )

    rule = _Rule(init, read, update, cost, "the influence matrix J (B·S·P numbers)")
    hparams = {"max_bytes": max_bytes}
    if not diagonal:
        return _make("rtrl", rule, max_bytes, True, {**hparams, "diagonal": False})
    dense = _parts("rtrl", rule, max_bytes)
    parts = diag.parts("rtrl", max_bytes, dense, OnlineState, window)
    hparams = {**hparams, "window": window}
    windowed = diagonal_window.windowed(window) if window > 1 else None
    return assemble("rtrl", *parts, True, hparams, windowed)


def uoro(*, eps: float = 1e-7, max_bytes: int = DEFAULT_MAX_BYTES) -> OnlineEstimator:
    """Unbiased Online Recurrent Optimization (Tallec & Ollivier 2017).

    Keeps ``J_t ≈ h̃ θ̃ᵀ`` per example, updated with fresh random signs ``ν``
    each step (module docstring). ``ρ₁`` depends on ``ν`` only through
    ``‖νᵀF‖``, which is even in ``ν``, so the cross terms have mean zero and
    ``E[h̃ θ̃ᵀ] = J_t``: the estimate is unbiased for the RTRL gradient.
    Memory ``B·(S + P)``; cost a few cell steps (one JVP, one VJP).

    Args:
      eps: the ``ε`` that keeps ``ρ₀, ρ₁`` finite when a norm is zero.
      max_bytes: largest influence state plus per-step work, in bytes.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt import forward_mode
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> params = model.init(jax.random.key(0), 2, 4)
      >>> h0 = model.cell.initial_state(params, (3,))
      >>> xs, ys = jnp.ones((6, 3, 2)), jnp.zeros((6, 3, 1))
      >>> est = forward_mode.uoro()
      >>> keys = jax.random.split(jax.random.key(1), 8)  # a sweep is a vmap
      >>> _, g = jax.vmap(lambda k: est.estimate(
      ...     k, model.cell, model.loss_fn, params, h0, xs, ys))(keys)
      >>> g["cell"]["W"].shape
      (8, 4, 4)
    """
    max_bytes = _check_max_bytes(max_bytes)
    eps = validation.positive_float("eps", eps)

    def init(fl, x_b):
        dt = fl.theta.dtype
        return (jnp.zeros((fl.B, fl.S), dt), jnp.zeros((fl.B, fl.theta.size), dt))

    def read(fl, infl, g_H, X):
        h_t, th_t = infl  # Σ_b (gH_b · h̃_b) θ̃_b
        return jnp.einsum("b,bp->p", jnp.sum(g_H * h_t, -1), th_t)

    def one(theta, f_b, h_t, th_t, nu, s, x_b):
        _, Dh = jax.jvp(lambda s_: f_b(theta, s_, x_b), (s,), (h_t,))  # D_t h̃
        _, vjp = jax.vjp(lambda th: f_b(th, s, x_b), theta)
        (nuF,) = vjp(nu)  # νᵀ F_t
        norm = jnp.linalg.norm
        rho0 = jnp.sqrt((norm(th_t) + eps) / (norm(Dh) + eps))
        rho1 = jnp.sqrt((norm(nuF) + eps) / (norm(nu) + eps))
        return rho0 * Dh + rho1 * nu, th_t / rho0 + nuF / rho1

    def update(fl, infl, key, H, X):
        h_t, th_t = infl
        nu = jax.random.rademacher(key, H.shape, H.dtype)  # E[ν νᵀ] = I
        return jax.vmap(one, in_axes=(None, None, 0, 0, 0, 0, 0))(
            fl.theta, fl.f_b, h_t, th_t, nu, H, X
        )

    def cost(fl, x_b, C):
        B, S, P = fl.B, fl.S, fl.theta.size
        return flat.Footprint(
            flat.nbytes(fl, B * (S + P)),
            flat.nbytes(fl, B * (2 * S + P)),
            B * (5 * C + 12 * (S + P)),
        )

    rule = _Rule(init, read, update, cost, "the rank-one influence h̃, θ̃")
    return _make("uoro", rule, max_bytes, False, {"eps": eps, "max_bytes": max_bytes})


def snap1(*, max_bytes: int = DEFAULT_MAX_BYTES) -> OnlineEstimator:
    """SnAp-1 (Menick et al. 2021): RTRL restricted to ``F_t``'s sparsity.

    ``J_t = (D_t J_{t-1}) ⊙ M + F_t`` with ``M`` the pattern of the immediate
    Jacobian (:func:`jbptt.forward_mode.sparsity_pattern`). ``J`` is stored
    compressed, ``k`` numbers per parameter (``k`` = the most state entries
    one parameter touches in one step: 1 for Elman and GRU, 2 for LSTM's ``(c, h)``), so
    the carried memory is ``B·k·P`` like the parameters themselves. Each step
    reads ``F_t`` on the pattern with one VJP per row colour (``k`` of them
    for the built-in cells) and ``D_t`` densely (``S`` VJPs in the state
    only; its ``k×k`` blocks on the pattern enter, for Elman its diagonal),
    so the per-step work is ``B·(C·P + S²)`` numbers, never ``S·P``.

    Exact on a diagonal cell with a real state (``D_t = diag(a_t)``: the
    mask drops nothing; tested against BPTT), where :func:`rtrl` is exact at
    ``O(|θ|)`` too; a complex state (the LRU) is refused: use :func:`rtrl`.

    Args:
      max_bytes: largest influence state plus per-step work, in bytes.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt import forward_mode
      >>> model = jbptt.readout(jbptt.cells.lstm(), output_size=1)
      >>> params = model.init(jax.random.key(0), 2, 3)
      >>> h0 = model.cell.initial_state(params)
      >>> est = forward_mode.snap1()
      >>> est.init(model.cell, params, h0, jnp.ones(2)).influence.shape  # [B, k, P]
      (1, 2, 88)
    """
    max_bytes = _check_max_bytes(max_bytes)

    cache: dict = {}

    def compressed(fl, x_shape, x_dtype):
        # The pattern is static (numpy), computed once per cell and shapes.
        key = (fl.cell, fl.S, fl.theta.size, str(fl.theta.dtype), x_shape, str(x_dtype))
        if key not in cache:
            cache[key] = sparsity.compress(sparsity.pattern(fl, x_shape, x_dtype))
        return cache[key]

    def init(fl, x_b):
        sp = compressed(fl, x_b.shape, x_b.dtype)
        return jnp.zeros((fl.B,) + sp.rows.shape, fl.theta.dtype)  # [B, k, P]

    def read(fl, V, g_H, X):
        # Σ_b Σ_a gH_b[rows[a, p]] V_b[a, p]; padded entries of V stay 0.
        sp = compressed(fl, X.shape[1:], X.dtype)
        return jnp.einsum("nap,nap->p", g_H[:, sp.rows], V)

    def one_step(fl, sp, s, x_b):
        _, vjp = jax.vjp(lambda th: fl.f_b(th, s, x_b), fl.theta)
        E = jnp.asarray(sp.colors, fl.theta.dtype)
        F_col = jax.vmap(lambda e: vjp(e)[0])(E)  # [C, P]: Σ_{i ∈ colour} F[i]
        D = jax.jacrev(lambda s_: fl.f_b(fl.theta, s_, x_b))(s)  # [S, S]
        return F_col, D

    def update(fl, V, key, H, X):
        sp = compressed(fl, X.shape[1:], X.dtype)
        F_col, D = jax.vmap(lambda s, x: one_step(fl, sp, s, x))(H, X)
        cols = np.arange(fl.theta.size)
        F_pat = F_col[:, sp.entry_color, cols]  # [B, k, P]: F_t on the pattern
        # Only the k×k block of D_t on each parameter's rows enters (D_t J_{t-1}
        # restricted to the pattern); for Elman it is D_t's diagonal.
        D_blk = D[:, sp.rows[:, None, :], sp.rows[None, :, :]]  # [B, k, k, P]
        new = jnp.einsum("nabp,nbp->nap", D_blk, V) + F_pat
        return jnp.where(sp.valid, new, 0.0)  # keep J on the pattern M

    def cost(fl, x_b, C):
        sp = compressed(fl, x_b.shape, x_b.dtype)
        B, S, P = fl.B, fl.S, fl.theta.size
        k, n_col = sp.rows.shape[0], sp.colors.shape[0]
        flops = B * ((1 + 2 * n_col + 2 * S) * C + 2 * k * k * P + 3 * k * P)
        work = B * (n_col * P + S * S + k * k * P)
        return flat.Footprint(flat.nbytes(fl, B * k * P), flat.nbytes(fl, work), flops)

    rule = _Rule(init, read, update, cost, "the sparse influence and its update")
    return _make("snap1", rule, max_bytes, True, {"max_bytes": max_bytes})


# --------------------------------------------------------------------------
# Many draws at once, for bias/variance sweeps.


def online_samples(
    estimator: OnlineEstimator,
    cell: Cell,
    loss_fn: Callable,
    params,
    h0,
    xs,
    ys,
    key,
    n: int,
    *,
    chunk: int = 64,
    mesh=None,
    resets=None,
) -> jax.Array:
    """``n`` flattened estimates ``[n, P]`` from keys ``split(key, n)``.

    A ``vmap`` of :attr:`OnlineEstimator.estimate` over keys, ``chunk`` keys
    at a time (:func:`jbptt.sharding.map_rows`, split over ``mesh`` if
    given) to bound memory; row ``i`` equals
    ``ravel_pytree(estimate(split(key, n)[i], ...)[1])[0]``. Unflatten a row
    with ``jax.flatten_util.ravel_pytree(params)[1]``. Traceable: call it
    inside the ``jit`` of a sweep. ``resets`` (bool ``[T, *batch]``) are
    handed to every ``estimate`` (state restarts from ``h0``, influence
    zeroed).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt._src import forward_mode
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> p = model.init(jax.random.key(0), 1, 4)
      >>> h0, xs = model.cell.initial_state(p), jnp.ones((6, 1))
      >>> forward_mode.online_samples(forward_mode.uoro(), model.cell,
      ...     model.loss_fn, p, h0, xs, xs, jax.random.key(1), 5).shape
      (5, 29)
    """
    if not isinstance(estimator, OnlineEstimator):
        raise TypeError(
            f"estimator must be an OnlineEstimator, got {type(estimator).__name__}."
        )
    n = validation.positive_int("n", n)
    chunk = validation.positive_int("chunk", chunk)
    key = validation.prng_key("key", key)

    def one(k):
        kw = {} if resets is None else {"resets": resets}
        _, g = estimator.estimate(k, cell, loss_fn, params, h0, xs, ys, **kw)
        return ravel_pytree(g)[0]

    return sharding.map_rows(one, (jax.random.split(key, n),), chunk, mesh)
