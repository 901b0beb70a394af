r"""Adaptive truncation (Aicher, Foti & Fox 2019): pick k from the decay of the
per-lag gradient norms.

With m_τ the per-lag gradient norm (``jbptt.diagnostics.per_lag_norms``: the
norm of the part of the gradient that travelled τ steps back, averaged over
loss steps), assume geometric decay beyond a lag τ₀: m_τ ≤ m_{τ₀} β^{τ−τ₀}
for τ ≥ τ₀ with β < 1. A loss that is backpropagated d steps drops the lags
τ ≥ d, whose mass is

.. math::

    \text{tail}(d) = \sum_{d ≤ j < τ₀} m_j + \frac{m_{τ₀} β^{\max(d, τ₀) − τ₀}}{1 − β},

and the relative bias of a truncation is bounded by its dropped mass over the
total mass tail(0) (or over a given ‖g‖). For d ≥ τ₀ this is docs/design.md's
‖g_τ‖ β^{k−τ} / ((1 − β)‖g‖). Sliding-window truncation (every loss keeps k
lags) drops tail(k); jbptt's chunked TBPTT(k) backpropagates the loss at
chunk position i by i + 1 steps and drops the mean of tail(1..k).
:func:`choose_k` returns the smallest k whose bound is at most δ; call it
again every N updates to follow the training (:func:`rechoose`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jbptt._src import estimators, protocol, truncation, validation
from jbptt._src.losses import sum_of_losses


class Decay(NamedTuple):
    """Fitted geometric decay: ``m_τ ≈ m_tau0 · beta^(τ − tau0)`` for τ ≥ tau0."""

    beta: float
    tau0: int


def _check_delta(delta) -> float:
    """δ, a relative bias, as a Python float in (0, 1)."""
    return validation.real(
        "delta",
        delta,
        low=0.0,
        high=1.0,
        low_open=True,
        high_open=True,
        what="a float in (0, 1)",
    )


def _check_tau0(tau0) -> int | None:
    """``None`` (the default fit start) or an int ≥ 0."""
    if tau0 is None:
        return None
    return validation.integer("tau0", tau0, minimum=0, what="None or an int ≥ 0")


def fit_decay(norms, tau0: int, *, conservative: bool = True) -> Decay:
    """Fit the decay rate β of the per-lag norms beyond lag ``tau0``.

    Args:
      norms: ``[L]`` per-lag norms (``LagNorms.mean``).
      tau0: first lag of the geometric regime, ``0 ≤ tau0 ≤ L − 2``.
      conservative: use the largest one-lag ratio m_{τ+1}/m_τ for τ ≥ tau0
        (an upper bound on the decay over the measured lags); otherwise the
        least-squares slope of log m_τ.

    Returns:
      :class:`Decay`; ``beta`` is ``inf``-free but may be ≥ 1 (no decay: then
      no finite k meets a bound, and :func:`choose_k` returns ``None``).

    Examples:
      >>> import numpy as np
      >>> from jbptt._src.adaptive import fit_decay
      >>> round(fit_decay(np.array([4.0, 2.0, 1.0, 0.5]), 1).beta, 6)
      0.5
    """
    m = np.asarray(norms, dtype=np.float64)
    if m.ndim != 1:
        raise ValueError(f"norms must be one-dimensional [L], got shape {m.shape}.")
    what = f"an int in [0, {m.size - 2}] (two lags to fit)"
    tau0 = validation.integer("tau0", tau0, minimum=0, what=what)
    if tau0 > m.size - 2:
        raise ValueError(f"tau0 must be {what}, got {tau0!r}.")
    tail = np.maximum(m[tau0:], np.finfo(np.float64).tiny)
    if conservative:
        beta = float(np.max(tail[1:] / tail[:-1]))
    else:
        slope = np.polyfit(np.arange(tail.size), np.log(tail), 1)[0]
        beta = float(np.exp(slope))
    return Decay(beta, int(tau0))


def tail_mass(norms, decay: Decay, d) -> np.ndarray:
    """tail(d): the per-lag mass at lags ≥ d under the fitted model."""
    m = np.asarray(norms, dtype=np.float64)
    beta, t0 = decay
    d = np.asarray(d)
    cum = np.concatenate([np.cumsum(m[:t0][::-1])[::-1], [0.0]])  # Σ_{j≥d, j<t0}
    head = cum[np.minimum(d, t0)]
    return head + m[t0] * beta ** (np.maximum(d, t0) - t0) / (1.0 - beta)


def bias_bound(norms, decay: Decay, k, *, mode: str = "chunked", g_norm=None):
    """Bound on the relative bias of truncation at ``k`` (see the module doc).

    Args:
      norms: ``[L]`` per-lag norms.
      decay: from :func:`fit_decay` (β < 1).
      k: truncation length(s) ≥ 1.
      mode: ``"chunked"`` (jbptt's ``truncation.tbptt``: mean of tail(1..k))
        or ``"window"`` (every loss keeps k lags: tail(k)).
      g_norm: ‖g‖ in the norms' units; default the total mass tail(0).
    """
    if mode not in ("chunked", "window"):
        raise ValueError(f"mode must be 'chunked' or 'window', got {mode!r}.")
    if not decay.beta < 1:
        return np.full(np.shape(k), np.inf)
    denom = tail_mass(norms, decay, 0) if g_norm is None else float(g_norm)
    k = np.asarray(k)
    if mode == "window":
        return tail_mass(norms, decay, k) / denom
    kmax = int(np.max(k))
    cum = np.cumsum(tail_mass(norms, decay, np.arange(1, kmax + 1)))
    return cum[k - 1] / k / denom


def choose_k(
    norms, delta: float, tau0: int, *, mode="chunked", g_norm=None, k_max=None
):
    """Smallest k with :func:`bias_bound` ≤ ``delta`` (``None`` if none ≤ k_max).

    Examples:
      >>> import numpy as np
      >>> from jbptt._src.adaptive import choose_k
      >>> m = 0.8 ** np.arange(20)
      >>> choose_k(m, 0.1, 2, mode="window")
      11
    """
    delta = _check_delta(delta)
    if k_max is not None:
        k_max = validation.positive_int("k_max", k_max)
    decay = fit_decay(norms, tau0)
    if not decay.beta < 1:
        return None
    if k_max is None:
        # window bound ≤ δ by k* = τ0 + log(δ(1−β)·denom/m_τ0)/log β; the
        # chunked mean of tail(1..k) needs at most ~k*/δ.
        k_max = 1 + int(np.ceil(len(norms) + 4 * np.log(1e-12) / np.log(decay.beta)))
        k_max = int(k_max / delta) + 1 if mode == "chunked" else k_max
    b = bias_bound(norms, decay, np.arange(1, k_max + 1), mode=mode, g_norm=g_norm)
    ok = np.nonzero(b <= delta)[0]
    return int(ok[0]) + 1 if ok.size else None


class ParamLags(NamedTuple):
    """Per-lag gradient contributions in parameter space.

    Attributes:
      norms: ``[T, L]``: ``norms[s, τ]`` = ‖c_{s+τ,τ}‖, the norm of the
        parameter gradient that loss s + τ sends through step s (τ steps
        back); zero where s + τ ≥ T.
      g_near: the gradient from lags < L plus the loss's own ∂ℓ/∂θ, flattened
        (the exact gradient when L = T).
    """

    norms: jax.Array
    g_near: jax.Array


def param_lag_norms(cell, loss_fn, max_lag: int):
    """``(params, h0, xs, ys) -> ParamLags``: one reverse scan with a lag buffer.

    At state step s the buffer holds, for each lag τ < L, the cotangent that
    loss s + τ sends into h_s; a ``jax.vjp`` of ``cell.step`` vmapped over τ
    gives each one's parameter contribution c_{s+τ,τ} and moves it one step
    (and lag) back. Unlike the state-space profile of
    ``jbptt.diagnostics.per_lag_norms``, these norms bound the bias in
    parameter space by the triangle inequality. Cost: L gradients.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt._src.adaptive import param_lag_norms
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> p = model.init(jax.random.key(0), 1, 3)
      >>> fn = param_lag_norms(model.cell, model.loss_fn, 4)
      >>> r = fn(p, model.cell.initial_state(p), jnp.ones((6, 1)), jnp.zeros((6, 1)))
      >>> r.norms.shape
      (6, 4)
    """
    max_lag = validation.positive_int("max_lag", max_lag)

    def fn(params, h0, xs, ys):
        validation.check_scan_args(cell, params, h0, xs, None)
        T, L = xs.shape[0], max_lag
        if L > T:
            raise ValueError(f"max_lag={L} exceeds the T={T} steps of xs.")

        def fwd(h, x):
            h_new, out = cell.step(params, h, x)
            return h_new, (h, out)

        _, (hs_prev, outs) = jax.lax.scan(fwd, h0, xs)
        # The loss's own parameter dependence (readout weights), outs fixed.
        direct, douts = jax.grad(
            lambda p, o: sum_of_losses(loss_fn, p, o, ys), argnums=(0, 1)
        )(params, outs)

        def body(buf, inp):  # buf[τ]: cotangent at h_s from loss s + τ (τ ≥ 1)
            h_prev, x, dout = inp
            _, vjp = jax.vjp(lambda p, h: cell.step(p, h, x), params, h_prev)
            douts_l = jax.tree_util.tree_map(
                lambda d: jnp.zeros((L,) + d.shape, d.dtype).at[0].set(d), dout
            )  # only lag 0 gets the output cotangent of loss s itself
            dp, dh = jax.vmap(lambda b, d: vjp((b, d)))(buf, douts_l)
            flat = jax.vmap(lambda t: ravel_pytree(t)[0])(dp)  # [L, D]
            buf = jax.tree_util.tree_map(
                lambda a: jnp.concatenate([jnp.zeros_like(a[:1]), a[:-1]]), dh
            )
            return buf, (jnp.linalg.norm(flat, axis=1), jnp.sum(flat, 0))

        buf0 = jax.tree_util.tree_map(lambda a: jnp.zeros((L,) + a.shape, a.dtype), h0)
        _, (norms, sums) = jax.lax.scan(body, buf0, (hs_prev, xs, douts), reverse=True)
        g_near = ravel_pytree(direct)[0] + jnp.sum(sums, 0)
        return ParamLags(norms, g_near)

    return fn


def tbptt_bias_bounds(lags: ParamLags, tau0: int | None = None) -> np.ndarray:
    """``[T]``: bound on the relative bias of chunked ``truncation.tbptt(T, k)``
    for k = 1..T (offset 0).

    Loss t keeps lags τ ≤ t mod k, so TBPTT(k) drops c_{t,τ} for
    τ > t mod k; the bound is the sum of their norms (plus, when L < T, the
    geometric tail beyond lag L − 1 fitted from lags ≥ ``tau0``) over
    ‖g_near‖ minus that tail (a lower bound on ‖g‖).
    """
    N = np.asarray(lags.norms, dtype=np.float64)  # [T, L] by state step s
    T, L = N.shape
    s, tau = np.arange(T)[:, None], np.arange(L)[None, :]
    t = s + tau
    mass = N.sum(0)  # per-lag mass
    tail = 0.0
    if L < T:
        decay = fit_decay(mass, L - 2 if tau0 is None else tau0)
        if not decay.beta < 1:
            return np.full(T, np.inf)
        tail = mass[-1] * decay.beta / (1.0 - decay.beta)
    denom = float(np.linalg.norm(np.asarray(lags.g_near))) - tail
    if denom <= 0:
        return np.full(T, np.inf)
    out = np.empty(T)
    for k in range(1, T + 1):
        dropped = (tau > t % k) & (t < T)
        out[k - 1] = (N[dropped].sum() + tail) / denom
    return out


def choose_tbptt_k(lags: ParamLags, delta: float, tau0: int | None = None):
    """Smallest k whose :func:`tbptt_bias_bounds` entry is ≤ ``delta``
    (``None`` if none is).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt._src.adaptive import choose_tbptt_k, param_lag_norms
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> p = model.init(jax.random.key(0), 1, 3)
      >>> xs, ys = jnp.ones((8, 1)), jnp.zeros((8, 1))
      >>> lags = param_lag_norms(model.cell, model.loss_fn, 8)(
      ...     p, model.cell.initial_state(p), xs, ys)
      >>> 1 <= choose_tbptt_k(lags, 0.5) <= 8
      True
    """
    delta = _check_delta(delta)
    tau0 = _check_tau0(tau0)
    ok = np.nonzero(tbptt_bias_bounds(lags, tau0) <= delta)[0]
    return int(ok[0]) + 1 if ok.size else None


class Rechooser(NamedTuple):
    """Re-choosing k during training (see :func:`rechooser`)."""

    measure: Callable  # (params, h0, xs, ys) -> ParamLags (jitted)
    update: Callable  # (count, k, params, h0, xs, ys) -> k (host side)


def rechooser(
    cell, loss_fn, *, delta: float, max_lag: int, every: int, tau0=None
) -> Rechooser:
    """Re-choose TBPTT's k every ``every`` updates from the current batch:
    the smallest k with relative-bias bound ≤ ``delta`` (T if none).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt._src.adaptive import rechooser
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> p = model.init(jax.random.key(0), 1, 4)
      >>> r = rechooser(model.cell, model.loss_fn, delta=0.2, max_lag=8,
      ...               every=10)
      >>> xs, ys = jnp.ones((16, 1)), jnp.zeros((16, 1))
      >>> 1 <= r.update(0, None, p, model.cell.initial_state(p), xs, ys) <= 16
      True
    """
    every = validation.positive_int("every", every)
    delta, tau0 = _check_delta(delta), _check_tau0(tau0)
    measure = jax.jit(param_lag_norms(cell, loss_fn, max_lag))

    def update(count, k, params, h0, xs, ys):
        if k is not None and count % every:
            return k
        new = choose_tbptt_k(measure(params, h0, xs, ys), delta, tau0)
        return xs.shape[0] if new is None else new

    return Rechooser(measure, update)


# ------------------------------------------------ as a protocol estimator ---


def _is_traced(tree) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves(tree))


class AdaptiveTBPTT(NamedTuple):
    """Adaptive TBPTT as an estimator of the protocol
    (:class:`jbptt.estimators.GradientEstimator`).

    ``samples`` measures the per-lag parameter norms on the problem
    (:func:`param_lag_norms`, lags < ``max_lag``), picks the smallest k whose
    bound on the relative bias is ≤ ``delta`` (:func:`choose_tbptt_k`; T if
    none) and returns chunked TBPTT(k) on the shared forward. Inside
    ``jit`` (a sweep) the choice runs on the host through
    ``jax.pure_callback``, a pure function of the problem (:meth:`choose`);
    nothing is written.

    Online, the estimator trains TBPTT segments of its ``k`` (``k0`` while
    it is ``None``): the chosen k is data of the estimator value, never
    written anywhere. :meth:`rechoose` returns the estimator with ``k``
    chosen on a problem, and :func:`train_adaptive` trains in rounds of
    ``every`` updates, each with the estimator :meth:`rechoose` returned on
    the stream ahead of it.

    Attributes:
      delta: tolerance δ on the relative bias.
      max_lag: lags measured (the tail beyond is fitted geometrically).
      every: updates between re-estimations (online).
      k0: k before the first choice.
      tau0: first lag of the geometric fit (default ``max_lag − 2``).
      k: the chosen k its online rule trains with (``None``: none chosen
        yet, ``k0``).
    """

    delta: float
    max_lag: int
    every: int
    k0: int
    tau0: int | None
    k: int | None = None
    deterministic: bool = True

    @property
    def name(self) -> str:
        return f"adaptive_tbptt(delta={self.delta:g})"

    @property
    def hparams(self) -> dict:
        return {"delta": self.delta, "max_lag": self.max_lag, "every": self.every}

    def __repr__(self) -> str:
        return self.name

    def _choose(self, problem, T: int) -> int:
        L = min(self.max_lag, T)
        lags = _measure(problem.cell, problem.loss_fn, L)(*problem[2:6])
        lags = ParamLags(np.asarray(lags.norms), np.asarray(lags.g_near))
        tau0 = self.tau0 if self.tau0 is None else min(self.tau0, L - 2)
        k = choose_tbptt_k(lags, self.delta, tau0) if L >= 2 else None
        return T if k is None else int(k)

    def choose(self, problem) -> int:
        """The k picked on ``problem`` (concrete arrays): the smallest whose
        bias bound is ≤ ``delta`` (T if none); a pure function of it."""
        return self._choose(problem, protocol.check_problem(problem))

    def rechoose(self, problem) -> AdaptiveTBPTT:
        """This estimator with ``k`` the :meth:`choose` on ``problem`` (host
        side, between training rounds): its online rule trains TBPTT(k)."""
        return self._replace(k=self.choose(problem))

    def samples(self, problem, key, n: int, *, chunk: int = 64, mesh=None):
        """``[n, D]``: TBPTT(k) for the k chosen on ``problem`` (repeated)."""
        T = protocol.check_problem(problem)
        n, chunk = validation.sample_count(n, chunk)
        if _is_traced(problem.params):
            k = jax.pure_callback(
                lambda *a: np.int32(self._choose(type(problem)(*problem[:2], *a), T)),
                jax.ShapeDtypeStruct((), jnp.int32),
                *problem[2:6],
            )
        else:
            k = self._choose(problem, T)
        w = truncation.tbptt(T, k, dtype=problem.xs.dtype)
        g = protocol.gradient_fn(problem)(w, jnp.ones_like(w))
        return jnp.broadcast_to(ravel_pytree(g)[0], (n, ravel_pytree(g)[0].size))

    def cost(self, problem):
        """TBPTT's cost at the chosen k: chosen now when ``problem`` is
        concrete, else its ``k`` (``nan`` depth while none is chosen)."""
        T = protocol.check_problem(problem)
        k = self.k
        if not _is_traced(problem.params):
            k = self._choose(problem, T)
        if k is None:
            c = estimators.full().cost(problem)
            return c._replace(depth=float("nan"))
        return estimators.tbptt(int(k)).cost(problem)

    def online(self):
        """TBPTT segments of ``k`` (``k0`` while ``None``)."""
        rule = estimators.tbptt(1).online()  # the shared TBPTT segment
        chosen = self.k0 if self.k is None else self.k

        def plan(key, T):
            k = min(int(chosen), T)
            lengths = np.full(T // k, k, int)
            return (np.append(lengths, T % k) if T % k else lengths), None

        # its own plan: the TBPTT(1) law's cuts and buckets do not apply
        return rule._replace(plan=plan, cuts=None, buckets=None, stream_cuts=None)


@functools.lru_cache(maxsize=32)
def _measure(cell, loss_fn, L):
    return jax.jit(param_lag_norms(cell, loss_fn, L))


def adaptive_tbptt(
    delta: float, *, max_lag: int = 32, every: int = 10, k0: int = 8, tau0=None
) -> AdaptiveTBPTT:
    """Adaptive TBPTT (Aicher, Foti & Fox 2019) as a protocol estimator.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jbptt
      >>> from jbptt import estimators, sweep
      >>> model = jbptt.readout(jbptt.cells.elman(), output_size=1)
      >>> p = model.init(jax.random.key(0), 1, 3)
      >>> prob = estimators.Problem(model.cell, model.loss_fn, p,
      ...     model.cell.initial_state(p), jnp.ones((12, 1)), jnp.zeros((12, 1)))
      >>> est = estimators.adaptive_tbptt(0.1, max_lag=12)
      >>> float(sweep.sweep(prob, [est], jax.random.key(0), 4).rel_bias[0]) <= 0.1
      True
    """
    delta = _check_delta(delta)
    max_lag, every, k0 = (
        validation.integer(nm, v, minimum=low)
        for nm, v, low in (("max_lag", max_lag, 2), ("every", every, 1), ("k0", k0, 1))
    )
    return AdaptiveTBPTT(delta, max_lag, every, k0, _check_tau0(tau0))


def train_adaptive(
    cell, loss_fn, params, xs, ys, optimizer, estimator: AdaptiveTBPTT, *, key, h0
):
    """Online training with k re-estimated every ``estimator.every`` updates.

    Each round: :meth:`AdaptiveTBPTT.rechoose` on the next
    ``max(max_lag, every·k)`` steps of the stream from the current state and
    params (k: the last round's, ``estimator.k`` or ``k0`` at first), then
    one :meth:`jbptt.train.Trainer.run` of the estimator it returned over
    ``every·k`` steps (``every`` TBPTT(k) updates), carrying params,
    optimizer state and h. The rounds' trainers share one set of compiled
    steps (the segment rule does not depend on k).

    Returns:
      ``(histories, ks)``: the rounds' :class:`jbptt.train.History` and the
      k chosen before each.
    """
    from jbptt._src.protocol import Problem
    from jbptt._src.train import Trainer

    T = xs.shape[0]
    start, histories, ks, opt_state, h = 0, [], [], None, h0
    est, steps = estimator, None
    while start < T:
        k = est.k0 if est.k is None else est.k
        span = min(T - start, max(est.max_lag, est.every * k))
        win = slice(start, start + span)
        est = est.rechoose(Problem(cell, loss_fn, params, h, xs[win], ys[win]))
        n = min(T - start, est.every * est.k)
        seg = slice(start, start + n)
        tr = Trainer(cell, loss_fn, optimizer, est)
        if steps is None:
            steps = tr.steps
        tr.steps = steps  # the first round's compiled steps: one compile per bucket
        state = tr.init(params, jax.random.fold_in(key, start), h)
        if opt_state is not None:
            state = state._replace(opt_state=opt_state)
        _, hist = tr.run(state, xs[seg], ys[seg])
        params, opt_state, h = hist.params, hist.opt_state, hist.h
        histories.append(hist)
        ks.append(est.k)
        start += n
    return histories, ks
