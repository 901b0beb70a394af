"""LSTM and GRU cells with PyTorch's equations, gate order and parameter names.

Parameters are ``{"weight_ih": [G·H, I], "weight_hh": [G·H, H], "bias_ih":
[G·H], "bias_hh": [G·H]}`` exactly as ``torch.nn.LSTM`` (G = 4, gates i, f, g,
o) and ``torch.nn.GRU`` (G = 3, gates r, z, n) store them for one layer, so
weights convert one-to-one (:func:`lstm_params_from_torch`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jbptt._src import _init, validation
from jbptt._src.cell import Cell, ReverseRules

sigmoid = jax.nn.sigmoid


_KEYS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _gated_params(key, input_size, hidden_size, gates, dtype):
    input_size, hidden_size = _init.check_sizes(input_size, hidden_size)
    gh = gates * hidden_size
    shapes = {
        "weight_ih": (gh, input_size),
        "weight_hh": (gh, hidden_size),
        "bias_ih": (gh,),
        "bias_hh": (gh,),
    }
    return _init.torch_style(key, shapes, hidden_size, dtype)


def _checker(name):
    def input_size(params):
        return _init.check_params(params, _KEYS, name)["weight_ih"].shape[1]

    return input_size


def _hidden_size(params):
    return params["weight_hh"].shape[1]


def lstm(forget_bias: float = 0.0) -> Cell:
    """LSTM cell (PyTorch equations, gates i, f, g, o); state ``(c, h)``.

    .. math::

        a_t &= W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh} \\\\
        i, f, g, o &= σ(a^i_t), σ(a^f_t), \\tanh(a^g_t), σ(a^o_t) \\\\
        c_t &= f ⊙ c_{t-1} + i ⊙ g, \\qquad h_t = o ⊙ \\tanh(c_t), \\qquad out_t = h_t.

    The state is the tuple ``(c, h)`` (cell first, as in ``flax.linen``).

    Args:
      forget_bias: added to the forget gate's ``bias_hh`` at ``init`` (Gers
        et al. 2000; Jozefowicz et al. 2015 use 1): a larger initial ``f``
        keeps ``c`` longer. The equations do not change.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jbptt import cells
      >>> cell = cells.lstm()
      >>> params = cell.init(jax.random.key(0), 3, 4)
      >>> c0, h0 = cell.initial_state(params, (2,))
      >>> (c1, h1), out = cell.step(params, (c0, h0), jnp.ones((2, 3)))
      >>> out.shape
      (2, 4)
      >>> p1 = cells.lstm(forget_bias=1.0).init(jax.random.key(0), 3, 4)
      >>> (p1["bias_hh"] - params["bias_hh"]).reshape(4, 4)[:, 0].tolist()
      [0.0, 1.0, 0.0, 0.0]
    """
    forget_bias = validation.real("forget_bias", forget_bias)
    name = "lstm()" if not forget_bias else f"lstm(forget_bias={forget_bias:g})"
    _input_size = _checker(name)

    def init(key, input_size, hidden_size, *, dtype=None):
        p = _gated_params(key, input_size, hidden_size, 4, dtype)
        if forget_bias:  # gates i, f, g, o: f is the second block
            H = p["weight_hh"].shape[1]
            p["bias_hh"] = p["bias_hh"].at[H : 2 * H].add(forget_bias)
        return p

    def initial_state(params, batch_shape=()):
        _init.check_params(params, _KEYS, name)
        z = _init.zeros_state(
            _hidden_size(params), batch_shape, params["weight_hh"].dtype
        )
        return (z, z)

    def project(params, xs):
        _init.check_params(params, _KEYS, name)
        return xs @ params["weight_ih"].T + (params["bias_ih"] + params["bias_hh"])

    # Per step one packed residual [..., 6·H] = (i, f, g, o, c_t, tanh c_t): the
    # scan then writes one array per step, which keeps XLA's loop body short
    # (see ReverseRules.states). Gates are handled as a [..., 4, H] view.
    def forward(params, state, xz_t):
        c_prev, h_prev = state
        lead = xz_t.shape[:-1]
        a = _lstm_acts(xz_t + h_prev @ params["weight_hh"].T)  # [..., 4, H]
        i, f, g, o = _gates(a)
        c = f * c_prev + i * g
        tc = jnp.tanh(c)
        res = jnp.concatenate([a, c[..., None, :], tc[..., None, :]], axis=-2)
        return (c, o * tc), res.reshape(*lead, 6 * c.shape[-1])

    def states(res):
        r = _split_heads(res, 6)
        return r[..., 4, :], r[..., 3, :] * r[..., 5, :]  # (c_t, h_t = o ⊙ tanh c_t)

    def backward(params, state_prev, state, res, dstate, dout):
        c_prev, _ = state_prev
        dc, dh = dstate
        dh = dh + dout
        r = _split_heads(res, 6)
        i, f, g, o = _gates(r)
        tc = r[..., 5, :]
        dc = dc + dh * o * (1.0 - tc * tc)  # total ∂/∂c_t
        dact = jnp.stack([dc * g, dc * c_prev, dc * i, dh * tc], axis=-2)
        # back through each gate's nonlinearity: σ' = a(1 − a), tanh' = 1 − a²
        a = r[..., :4, :]
        dpre = dact * jnp.where(_LSTM_TANH_GATE, 1.0 - a * a, a * (1.0 - a))
        dpre = dpre.reshape(*res.shape[:-1], -1)
        return (dc * f, dpre @ params["weight_hh"]), dpre

    def linear(params, xs, states_prev):
        return project(params, xs) + states_prev[1] @ params["weight_hh"].T

    def step(params, state, x):
        new, _ = forward(params, state, project(params, x))
        return new, new[1]

    rules = ReverseRules(
        project, forward, backward, linear, output=lambda s: s[1], states=states
    )
    return Cell(init, initial_state, step, rules, _input_size, name=name)


# Gate g (third of i, f, g, o) is the tanh one; the others are logistic.
_LSTM_TANH_GATE = np.array([False, False, True, False])[:, None]


def _split_heads(a, n):
    """[..., n·H] -> [..., n, H] (a free reshape)."""
    return a.reshape(*a.shape[:-1], n, a.shape[-1] // n)


def _gates(a):
    return tuple(a[..., k, :] for k in range(4))


def _lstm_acts(pre):
    """σ on gates i, f, o and tanh on g: one elementwise op on [..., 4, H]."""
    pre = _split_heads(pre, 4)
    return jnp.where(_LSTM_TANH_GATE, jnp.tanh(pre), sigmoid(pre))


def gru() -> Cell:
    """GRU cell (PyTorch equations, gates r, z, n); state ``h``.

    .. math::

        r &= σ(W_{ir} x + b_{ir} + W_{hr} h + b_{hr}), \\quad
        z = σ(W_{iz} x + b_{iz} + W_{hz} h + b_{hz}) \\\\
        n &= \\tanh(W_{in} x + b_{in} + r ⊙ (W_{hn} h + b_{hn})), \\quad
        h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}.

    The reset gate multiplies the recurrent term (PyTorch/cuDNN convention).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jbptt import cells
      >>> cell = cells.gru()
      >>> params = cell.init(jax.random.key(0), 3, 4)
      >>> h1, out = cell.step(params, cell.initial_state(params), jnp.ones(3))
      >>> h1.shape
      (4,)
    """

    _input_size = _checker("gru()")

    def init(key, input_size, hidden_size, *, dtype=None):
        return _gated_params(key, input_size, hidden_size, 3, dtype)

    def initial_state(params, batch_shape=()):
        _init.check_params(params, _KEYS, "gru()")
        return _init.zeros_state(
            _hidden_size(params), batch_shape, params["weight_hh"].dtype
        )

    def project(params, xs):
        _init.check_params(params, _KEYS, "gru()")
        return xs @ params["weight_ih"].T + params["bias_ih"]

    def forward(params, h_prev, xz_t):
        hz = h_prev @ params["weight_hh"].T + params["bias_hh"]
        xr, xz, xn = jnp.split(xz_t, 3, axis=-1)
        hr, hzz, hn = jnp.split(hz, 3, axis=-1)
        r, z = sigmoid(xr + hr), sigmoid(xz + hzz)
        n = jnp.tanh(xn + r * hn)
        return (1.0 - z) * n + z * h_prev, jnp.concatenate([r, z, n, hn], -1)

    def backward(params, h_prev, h, res, dh, dout):
        dh = dh + dout
        r, z, n, hn = jnp.split(res, 4, axis=-1)
        dpre_n = dh * (1.0 - z) * (1.0 - n * n)
        dpre_r = dpre_n * hn * r * (1.0 - r)
        dpre_z = dh * (h_prev - n) * z * (1.0 - z)
        dx = jnp.concatenate([dpre_r, dpre_z, dpre_n], -1)  # input-side pre-acts
        dhh = jnp.concatenate([dpre_r, dpre_z, dpre_n * r], -1)  # recurrent side
        return dh * z + dhh @ params["weight_hh"], (dx, dhh)

    def linear(params, xs, hs_prev):
        return project(params, xs), hs_prev @ params["weight_hh"].T + params["bias_hh"]

    def step(params, h, x):
        h_new, _ = forward(params, h, project(params, x))
        return h_new, h_new

    rules = ReverseRules(project, forward, backward, linear, output=lambda h: h)
    return Cell(init, initial_state, step, rules, _input_size, name="gru()")


def _params_from_torch(state_dict, gates: int, kind: str):
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    missing = [f"{n}_l0" for n in names[:2] if f"{n}_l0" not in state_dict]
    if missing:
        raise ValueError(
            f"state_dict is missing {missing}; expected a single-layer "
            f"torch.nn.{kind} state_dict with keys "
            f"{[n + '_l0' for n in names]}."
        )
    out = {n: _to_jax(state_dict[f"{n}_l0"]) for n in names if f"{n}_l0" in state_dict}
    gh = out["weight_hh"].shape[0]
    if out["weight_hh"].shape != (gh, gh // gates) or gh % gates:
        raise ValueError(
            f"weight_hh_l0 has shape {out['weight_hh'].shape}; a torch.nn.{kind} "
            f"layer stores ({gates}·H, H)."
        )
    for n in ("bias_ih", "bias_hh"):  # bias=False layers: zero biases
        out.setdefault(n, jnp.zeros((gh,), out["weight_hh"].dtype))
    return out


def _to_jax(a):
    if hasattr(a, "detach"):  # a torch tensor
        a = a.detach().cpu().numpy()
    return jnp.asarray(np.asarray(a))


def lstm_params_from_torch(state_dict) -> dict:
    """Params for :func:`lstm` from a one-layer ``torch.nn.LSTM`` state_dict.

    Args:
      state_dict: mapping with ``weight_ih_l0``, ``weight_hh_l0`` and, unless
        the layer had ``bias=False``, ``bias_ih_l0``, ``bias_hh_l0`` (torch
        tensors or numpy arrays).

    Examples:
      >>> import numpy as np
      >>> from jbptt import cells
      >>> H, I = 2, 3
      >>> sd = {"weight_ih_l0": np.zeros((4 * H, I)),
      ...       "weight_hh_l0": np.zeros((4 * H, H))}
      >>> sorted(cells.lstm_params_from_torch(sd))
      ['bias_hh', 'bias_ih', 'weight_hh', 'weight_ih']
    """
    return _params_from_torch(state_dict, 4, "LSTM")


def gru_params_from_torch(state_dict) -> dict:
    """Params for :func:`gru` from a one-layer ``torch.nn.GRU`` state_dict.

    Same conventions as :func:`lstm_params_from_torch` (gates r, z, n).

    Examples:
      >>> import numpy as np
      >>> from jbptt import cells
      >>> sd = {"weight_ih_l0": np.ones((6, 3)), "weight_hh_l0": np.ones((6, 2)),
      ...       "bias_ih_l0": np.zeros(6), "bias_hh_l0": np.zeros(6)}
      >>> cells.gru_params_from_torch(sd)["weight_ih"].shape
      (6, 3)
    """
    return _params_from_torch(state_dict, 3, "GRU")
