r"""Elman (vanilla) RNN cell with hand-derived reverse rules.

.. math::

    h_t = f(U x_t + W h_{t-1} + b), \qquad out_t = h_t,

with ``f`` one of tanh, identity or relu. Without bias and with the identity,
this is exactly the linear ``U, W`` recurrence of the classic BPTT
derivations (add a readout ``V`` with :func:`jbptt.readout`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jbptt._src import _init
from jbptt._src.cell import Cell, ReverseRules

# f and f'(pre) written through f(pre) = h, so the backward needs only h_t.
_ACTIVATIONS = {
    "tanh": (jnp.tanh, lambda h: 1.0 - h * h),
    "identity": (lambda a: a, lambda h: jnp.ones_like(h)),
    "relu": (jax.nn.relu, lambda h: (h > 0).astype(h.dtype)),
}


def elman(activation: str = "tanh", *, bias: bool = True) -> Cell:
    """Elman RNN cell ``h_t = f(U x_t + W h_{t-1} + b)``.

    Args:
      activation: ``"tanh"``, ``"identity"`` or ``"relu"``.
      bias: whether the cell has the bias ``b``.

    Returns:
      A :class:`jbptt.cells.Cell` with params ``{"U": [H, I], "W": [H, H],
      "b": [H]}`` initialised U(-1/√H, 1/√H) like ``torch.nn.RNN``.

    Raises:
      ValueError: for an unknown activation.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jbptt import cells
      >>> cell = cells.elman("tanh")
      >>> params = cell.init(jax.random.key(0), 3, 5)
      >>> h0 = cell.initial_state(params, (2,))
      >>> h1, out = cell.step(params, h0, jnp.ones((2, 3)))
      >>> h1.shape
      (2, 5)
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"Unknown activation {activation!r}. "
            f"It needs to be one of {sorted(_ACTIVATIONS)}."
        )
    f, df_of_h = _ACTIVATIONS[activation]

    name = f"elman({activation!r})"
    keys = ("U", "W", "b") if bias else ("U", "W")

    def checked(params):
        return _init.check_params(params, keys, name)

    def init(key, input_size, hidden_size, *, dtype=None):
        input_size, hidden_size = _init.check_sizes(input_size, hidden_size)
        shapes = {"U": (hidden_size, input_size), "W": (hidden_size, hidden_size)}
        if bias:
            shapes["b"] = (hidden_size,)
        return _init.torch_style(key, shapes, hidden_size, dtype)

    def initial_state(params, batch_shape=()):
        params = checked(params)
        return _init.zeros_state(params["W"].shape[0], batch_shape, params["W"].dtype)

    def project(params, xs):  # U x_t + b for all t: one GEMM
        params = checked(params)
        xz = xs @ params["U"].T
        return xz + params["b"] if bias else xz

    def forward(params, h_prev, xz_t):
        h = f(xz_t + h_prev @ params["W"].T)
        return h, ()

    def backward(params, h_prev, h, res, dh, dout):
        dpre = (dh + dout) * df_of_h(h)  # δ_t ⊙ f'(a_t)
        return dpre @ params["W"], dpre  # (∂h_t/∂h_{t-1})ᵀ δ_t = Wᵀ (δ_t ⊙ f')

    def linear(params, xs, hs_prev):
        return project(params, xs) + hs_prev @ params["W"].T

    def step(params, h, x):
        h_new, _ = forward(params, h, project(params, x))
        return h_new, h_new

    rules = ReverseRules(project, forward, backward, linear, output=lambda h: h)
    return Cell(
        init,
        initial_state,
        step,
        rules=rules,
        input_size=lambda p: checked(p)["U"].shape[1],
        name=name,
    )
