r"""Diagonal linear recurrences: LRU, minGRU, minLSTM and the user's own.

Every cell here is one recurrence

.. math::

    h_t = a_t \odot h_{t-1} + b_t, \qquad (a_t, b_t) = \mathrm{gates}(\theta, x_t),
    \qquad out_t = \mathrm{readout}(\theta, h_t, x_t),

where the gates read the input only. Two facts follow (docs/design.md,
"Diagonal recurrences"): the recurrence and its adjoint are elementwise, so
they run as a fused sequential loop or as a parallel scan, and every
parameter enters through ``gates`` and ``readout``, both evaluated on all
steps at once, so the parameters' gradients are one vjp over all steps.

The cells carry :class:`DiagonalRules` (``cell.diagonal``); ``cell.step`` is
the same recurrence one step at a time, so every path of jbptt that takes a
cell takes these.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jbptt._src import _init, validation
from jbptt._src.cell import Cell

Params = Any


class DiagonalRules(NamedTuple):
    """What makes a cell diagonal: its gates and its readout, on any steps.

    Attributes:
      gates: ``(params, x[..., I]) -> (a[..., H], b[..., H])``, the input-only
        gates of ``h_t = a_t ⊙ h_{t-1} + b_t``. Called on one step or on all
        steps at once (leading dims ``[T, *batch]``); ``a`` and ``b`` may be
        complex and must broadcast together to the state's shape.
      readout: ``(params, h[..., H], x[..., I]) -> out[..., O]``, the step
        output from the new state and the input (any leading dims).
    """

    gates: Callable[[Params, jax.Array], tuple[jax.Array, jax.Array]]
    readout: Callable[[Params, jax.Array, jax.Array], jax.Array]


def _state_readout(params, h, x):
    del params, x
    return jnp.real(h) if jnp.iscomplexobj(h) else h


def _input_dtype(params):
    leaves = [jnp.asarray(a) for a in jax.tree_util.tree_leaves(params)]
    real = [jnp.real(a).dtype for a in leaves if jnp.issubdtype(a.dtype, jnp.inexact)]
    return real[0] if real else jnp.result_type(float)


def diagonal(
    gates: Callable,
    init: Callable,
    *,
    input_size: Callable[[Params], int],
    readout: Callable | None = None,
    name: str = "diagonal",
) -> Cell:
    """A diagonal linear recurrence ``h_t = a_t ⊙ h_{t-1} + b_t`` from its gates.

    The fast path for a researcher's own diagonal layer (RG-LRU, RTU,
    S5-style): jbptt runs the recurrence and its adjoint elementwise and
    takes the parameters' gradients in one vjp of ``gates`` and ``readout``
    over all steps.

    Args:
      gates: ``(params, x) -> (a, b)`` reading the input only (never the
        state); ``x`` has any leading dims ``[..., I]``, ``a`` and ``b``
        broadcast together to ``[..., H]``. Complex gates give a complex
        state.
      init: ``(key, input_size, hidden_size) -> params``.
      input_size: ``params -> int``, the feature size ``x`` must have (the
        state's shape and dtype are read from ``gates`` on a zero input).
      readout: ``(params, h, x) -> out``; default the state (its real part
        when the state is complex).
      name: shown in error messages.

    Returns:
      A :class:`jbptt.cells.Cell` whose ``diagonal`` holds the rules.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jbptt import cells
      >>> def gates(p, x):  # a leaky integrator with input-dependent decay
      ...     a = jax.nn.sigmoid(x @ p["W_a"].T)
      ...     return a, (1 - a) * (x @ p["W_b"].T)
      >>> def init(key, i, h):
      ...     ka, kb = jax.random.split(key)
      ...     return {"W_a": jax.random.normal(ka, (h, i)),
      ...             "W_b": jax.random.normal(kb, (h, i))}
      >>> cell = cells.diagonal(gates, init, input_size=lambda p: p["W_a"].shape[1])
      >>> p = cell.init(jax.random.key(0), 3, 4)
      >>> h1, out = cell.step(p, cell.initial_state(p, (2,)), jnp.ones((2, 3)))
      >>> h1.shape
      (2, 4)
    """
    for arg, fn in (("gates", gates), ("init", init), ("input_size", input_size)):
        if not callable(fn):
            raise TypeError(f"{arg} must be callable, got {type(fn).__name__}.")
    if readout is not None and not callable(readout):
        raise TypeError(f"readout must be callable, got {type(readout).__name__}.")
    readout = _state_readout if readout is None else readout

    def initial_state(params, batch_shape=()):
        x = jnp.zeros((input_size(params),), _input_dtype(params))
        a, b = jax.eval_shape(gates, params, x)
        shape = jnp.broadcast_shapes(a.shape, b.shape)
        return jnp.zeros(tuple(batch_shape) + shape, jnp.result_type(a.dtype, b.dtype))

    def step(params, h, x):
        a, b = gates(params, x)
        h_new = a * h + b  # h_t = a_t ⊙ h_{t-1} + b_t
        return h_new, readout(params, h_new, x)

    return Cell(
        init,
        initial_state,
        step,
        input_size=input_size,
        name=name,
        diagonal=DiagonalRules(gates, readout),
    )


# ------------------------------------------------------------------- LRU ---

_LRU_KEYS = ("nu_log", "theta_log", "gamma_log", "B_re", "B_im", "C_re", "C_im", "D")


def lru_eigenvalues(params) -> jax.Array:
    """λ = exp(−exp(ν) + i·exp(θ)) of an LRU's params, shape ``[H]``."""
    return jnp.exp(-jnp.exp(params["nu_log"]) + 1j * jnp.exp(params["theta_log"]))


def lru(r_min: float = 0.0, r_max: float = 1.0, max_phase: float = 2 * math.pi) -> Cell:
    r"""The Linear Recurrent Unit (Orvieto et al. 2023).

    .. math::

        λ = \exp(-\exp(ν) + i \exp(θ)), \quad
        h_t = λ ⊙ h_{t-1} + \exp(γ) ⊙ ((B_{re} + i B_{im}) x_t), \quad
        out_t = \mathrm{Re}((C_{re} + i C_{im}) h_t) + D ⊙ x_t.

    The state is complex ``[..., H]``; the output has the input's size.
    The eigenvalues λ ``[H]`` are the gates' ``a``:
    ``lam, _ = cell.diagonal.gates(params, x)``.
    Initialisation (the paper's ring): |λ| uniform in the area of the ring
    ``r_min ≤ |λ| ≤ r_max``, phase uniform in ``[0, max_phase]``,
    γ = sqrt(1 − |λ|²) (stored as ``gamma_log``), ``B`` entries
    N(0, 1/(2I)), ``C`` entries N(0, 1/H), ``D`` N(0, 1).

    Args:
      r_min: smallest eigenvalue modulus at init, ``0 ≤ r_min < r_max``.
      r_max: largest eigenvalue modulus at init, ``r_max ≤ 1``.
      max_phase: largest eigenvalue phase at init, ``> 0``.

    Returns:
      A diagonal :class:`jbptt.cells.Cell` with params ``nu_log, theta_log,
      gamma_log [H]``, ``B_re, B_im [H, I]``, ``C_re, C_im [I, H]``, ``D [I]``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jbptt import cells
      >>> cell = cells.lru(r_min=0.9, r_max=0.999)
      >>> p = cell.init(jax.random.key(0), 3, 8)
      >>> h1, out = cell.step(p, cell.initial_state(p, (2,)), jnp.ones((2, 3)))
      >>> h1.dtype.kind, out.shape
      ('c', (2, 3))
    """
    r_min = validation.finite_float("r_min", r_min)
    r_max = validation.finite_float("r_max", r_max)
    max_phase = validation.finite_float("max_phase", max_phase)
    if not 0.0 <= r_min < r_max <= 1.0:
        raise ValueError(
            f"r_min and r_max must satisfy 0 <= r_min < r_max <= 1, got "
            f"r_min={r_min}, r_max={r_max}."
        )
    if max_phase <= 0.0:
        raise ValueError(f"max_phase must be > 0, got {max_phase}.")
    name = f"lru(r_min={r_min}, r_max={r_max})"

    def checked(params):
        return _init.check_params(params, _LRU_KEYS, name)

    def init(key, input_size, hidden_size, *, dtype=None):
        i, h = _init.check_sizes(input_size, hidden_size)
        dtype = jnp.dtype(dtype or jnp.result_type(float))
        k = jax.random.split(validation.prng_key("key", key), 6)
        u1, u2 = (jax.random.uniform(kk, (h,), dtype) for kk in k[:2])
        # |λ|² uniform on [r_min², r_max²] (uniform in the ring's area)
        nu = -0.5 * jnp.log(u1 * (r_max**2 - r_min**2) + r_min**2)
        theta = max_phase * u2
        mod = jnp.exp(-nu)
        return {
            "nu_log": jnp.log(nu),
            "theta_log": jnp.log(theta),
            "gamma_log": 0.5 * jnp.log1p(-(mod**2)),  # γ = sqrt(1 − |λ|²)
            "B_re": jax.random.normal(k[2], (h, i), dtype) / math.sqrt(2 * i),
            "B_im": jax.random.normal(k[3], (h, i), dtype) / math.sqrt(2 * i),
            "C_re": jax.random.normal(k[4], (i, h), dtype) / math.sqrt(h),
            "C_im": jax.random.normal(k[5], (i, h), dtype) / math.sqrt(h),
            "D": jax.random.normal(jax.random.fold_in(k[5], 1), (i,), dtype),
        }

    def gates(params, x):
        params = checked(params)
        lam = lru_eigenvalues(params)
        # (B_re + i B_im) x, each product over B's own axes (_times_w)
        bx = _times_w(x, params["B_re"]) + 1j * _times_w(x, params["B_im"])
        return lam, jnp.exp(params["gamma_log"]) * bx

    def readout(params, h, x):
        # Re((C_re + i C_im) h) = C_re Re(h) − C_im Im(h)
        y = _times_w(jnp.real(h), params["C_re"]) - _times_w(
            jnp.imag(h), params["C_im"]
        )
        return y + params["D"] * x

    return diagonal(
        gates,
        init,
        input_size=lambda p: checked(p)["B_re"].shape[1],
        readout=readout,
        name=name,
    )


def _times_w(v, W):
    """``v @ W.T`` for ``v [..., n]``, ``W [m, n]``, as one contraction over
    ``W``'s own axes: written with ``.T``, XLA:CPU copied the transposed
    weight inside every step of an online loop (a forward step, exact RTRL's
    gates and readout; benchmarks/log/2026-12-07-diagonal-rtrl-windows.md)."""
    return jnp.einsum("...n,mn->...m", v, W)


# ------------------------------------------------------ minGRU / minLSTM ---


def _linear_init(key, names, input_size, hidden_size, dtype):
    i, h = _init.check_sizes(input_size, hidden_size)
    keys = jax.random.split(validation.prng_key("key", key), len(names))
    bound = 1.0 / math.sqrt(i)  # torch.nn.Linear's default
    params = {}
    for k, n in zip(keys, names, strict=True):
        shape = (h, i) if n.startswith("W") else (h,)
        params[n] = _init.uniform(k, shape, bound, dtype)
    return params


def _affine(params, w, b, x):
    return _times_w(x, params[w]) + params[b]


def min_gru() -> Cell:
    r"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?").

    .. math::

        z_t = σ(W_z x_t + b_z), \quad \tilde h_t = W_h x_t + b_h, \quad
        h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ \tilde h_t, \quad out_t = h_t.

    Returns:
      A diagonal :class:`jbptt.cells.Cell` with params ``W_z, W_h [H, I]``,
      ``b_z, b_h [H]``, initialised U(−1/√I, 1/√I) like ``torch.nn.Linear``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jbptt import cells
      >>> cell = cells.min_gru()
      >>> p = cell.init(jax.random.key(0), 3, 5)
      >>> cell.step(p, cell.initial_state(p, (2,)), jnp.ones((2, 3)))[0].shape
      (2, 5)
    """
    keys = ("W_z", "b_z", "W_h", "b_h")

    def init(key, input_size, hidden_size, *, dtype=None):
        return _linear_init(key, keys, input_size, hidden_size, dtype)

    def gates(params, x):
        params = _init.check_params(params, keys, "min_gru()")
        z = jax.nn.sigmoid(_affine(params, "W_z", "b_z", x))
        return 1.0 - z, z * _affine(params, "W_h", "b_h", x)

    return diagonal(
        gates, init, input_size=lambda p: p["W_z"].shape[1], name="min_gru()"
    )


def min_lstm() -> Cell:
    r"""minLSTM (Feng et al. 2024, "Were RNNs All We Needed?").

    .. math::

        f_t = σ(W_f x_t + b_f), \quad i_t = σ(W_i x_t + b_i), \quad
        \tilde h_t = W_h x_t + b_h, \quad
        h_t = \frac{f_t}{f_t + i_t} ⊙ h_{t-1} + \frac{i_t}{f_t + i_t} ⊙ \tilde h_t.

    Returns:
      A diagonal :class:`jbptt.cells.Cell` with params ``W_f, W_i, W_h
      [H, I]``, ``b_f, b_i, b_h [H]``, initialised U(−1/√I, 1/√I).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jbptt import cells
      >>> cell = cells.min_lstm()
      >>> p = cell.init(jax.random.key(0), 3, 5)
      >>> cell.step(p, cell.initial_state(p, ()), jnp.ones(3))[1].shape
      (5,)
    """
    keys = ("W_f", "b_f", "W_i", "b_i", "W_h", "b_h")

    def init(key, input_size, hidden_size, *, dtype=None):
        return _linear_init(key, keys, input_size, hidden_size, dtype)

    def gates(params, x):
        params = _init.check_params(params, keys, "min_lstm()")
        f = jax.nn.sigmoid(_affine(params, "W_f", "b_f", x))
        i = jax.nn.sigmoid(_affine(params, "W_i", "b_i", x))
        norm = f + i  # f and i normalised to sum to 1
        return f / norm, (i / norm) * _affine(params, "W_h", "b_h", x)

    return diagonal(
        gates, init, input_size=lambda p: p["W_f"].shape[1], name="min_lstm()"
    )
