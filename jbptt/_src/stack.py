r"""`stack`: layers of cells as one cell, each layer keeping its reverse rules.

Layer l reads layer l−1's output at the same step:

.. math::

    s^0_t = f_0(s^0_{t-1}, x_t), \qquad
    s^l_t = f_l(s^l_{t-1}, \mathrm{out}_{l-1}(s^{l-1}_t)), \qquad
    out_t = \mathrm{out}_{L-1}(s^{L-1}_t).

The state is the tuple of the layers' states and the params the tuple of
their params. When every layer has :class:`ReverseRules`, so does the stack:

- ``project``: only layer 0's input projection is known before the scan; the
  others project inside the step, from the layer below's fresh output.
- ``backward``: the layers' backward rules from the top down. Layer l's
  cotangent of its linear map, pulled back to its input (a transposed GEMM
  with its input weights), is the output cotangent of layer l−1.
- ``linear``: every layer's linear map on all steps, layer l > 0 on the stacked
  outputs of layer l−1 (read from the states ``hs``), so every weight gradient
  is still one GEMM after the reverse scan.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import jax

from jbptt._src import validation
from jbptt._src.cell import Cell, ReverseRules

# The stacked `linear` reads the states h_1..h_T besides h_0..h_{T-1}: a layer
# above the first takes the output of the layer below at the same step.
_HAS_LINEAR_STATES = "linear_states" in ReverseRules._fields


def stack(layers: Sequence[Cell]) -> Cell:
    """Stack cells: layer l's input is layer l−1's output at the same step.

    Args:
      layers: one or more :class:`jbptt.cells.Cell`. Each layer's output
        must have the hidden size that ``init`` gives the next layer's input.

    Returns:
      A cell with params and state the tuples of the layers' params and
      states. ``init(key, input_size, hidden_size)`` takes ``hidden_size`` as
      one int (every layer) or one int per layer. When every layer has
      hand-derived :class:`ReverseRules`, the stack has them too (composed
      layer by layer, no per-step ``jax.vjp``).

    Raises:
      TypeError: if ``layers`` is not a non-empty sequence of cells.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jbptt import cells
      >>> cell = cells.stack([cells.lstm(), cells.gru()])
      >>> params = cell.init(jax.random.key(0), 3, (8, 4))
      >>> h0 = cell.initial_state(params, (2,))
      >>> h1, out = cell.step(params, h0, jnp.ones((2, 3)))
      >>> out.shape
      (2, 4)
    """
    if isinstance(layers, Cell) or not isinstance(layers, Sequence):
        raise TypeError(
            "layers must be a list of jbptt cells, e.g. "
            f"cells.stack([cells.lstm(), cells.lstm()]), got {type(layers).__name__}."
        )
    layers = tuple(layers)
    if not layers:
        raise TypeError("layers must hold at least one cell, got an empty list.")
    for k, c in enumerate(layers):
        if not isinstance(c, Cell):
            raise TypeError(
                f"layers[{k}] must be a jbptt Cell, got {type(c).__name__}."
            )
    L = len(layers)

    def init(key, input_size, hidden_size, **kwargs):
        sizes = _layer_sizes(hidden_size, L)
        keys = jax.random.split(validation.prng_key("key", key), L)
        ins = (input_size,) + sizes[:-1]
        return tuple(
            c.init(k, i, h, **kwargs)
            for c, k, i, h in zip(layers, keys, ins, sizes, strict=True)
        )

    def initial_state(params, batch_shape=()):
        return tuple(
            c.initial_state(p, tuple(batch_shape))
            for c, p in zip(layers, params, strict=True)
        )

    def step(params, state, x):
        new = []
        for c, p, s in zip(layers, params, state, strict=True):
            s, x = c.step(p, s, x)
            new.append(s)
        return tuple(new), x

    first = layers[0]
    input_size = None
    if first.input_size is not None:
        input_size = lambda params: first.input_size(params[0])  # noqa: E731
    name = "stack([" + ", ".join(c.name for c in layers) + "])"
    rules = None
    if _HAS_LINEAR_STATES and all(c.rules is not None for c in layers):
        rules = _stacked_rules([c.rules for c in layers])
    # every layer diagonal: the stack runs layer by layer over all steps
    diagonal = all(c.diagonal is not None and c.rules is None for c in layers)
    return Cell(
        init, initial_state, step, rules, input_size, name=name,
        diagonal_layers=layers if diagonal else None,
    )  # fmt: skip


def _stacked_rules(rules: list[ReverseRules]) -> ReverseRules:
    L = len(rules)

    # A layer whose rules cannot read its states from its residuals keeps its
    # state in the stack's residual, so the stack always has `states`.
    def pack_res(r, s, res):
        return res if r.states else (s, res)

    def layer_res(r, res):
        return res if r.states else res[1]

    def layer_states(r, res):
        return r.states(res) if r.states else res[0]

    def project(params, xs):
        return rules[0].project(params[0], xs)

    def forward(params, state, xz_t):
        new, res, out = [], [], None
        for l, r in enumerate(rules):
            if l:  # input projection of a layer above: from the fresh output below
                xz_t = r.project(params[l], out)
            s, res_l = r.forward(params[l], state[l], xz_t)
            out = r.output(s)
            new.append(s)
            res.append(pack_res(r, s, res_l))
        return tuple(new), tuple(res)

    def states(res):
        return tuple(layer_states(r, x) for r, x in zip(rules, res, strict=True))

    def backward(params, state_prev, state, res, dstate, dout):
        dh_prev, dlin = [None] * L, [None] * L
        for l in reversed(range(L)):
            r = rules[l]
            dh_prev[l], dlin[l] = r.backward(
                params[l],
                state_prev[l],
                state[l],
                layer_res(r, res[l]),
                dstate[l],
                dout,
            )
            if l:
                # Cotangent of the layer's input out_{l-1,t}: the transpose of
                # its linear map in the input (Wᵀ dlin), the output cotangent
                # of the layer below. Only the input part is used; the
                # recurrent part of the map is dead code under jit.
                x = rules[l - 1].output(state[l - 1])
                dout = _input_cotangent(
                    r, params[l], x, state_prev[l], state[l], dlin[l]
                )
        return tuple(dh_prev), tuple(dlin)

    def linear(params, xs, hs_prev, hs):
        lins = []
        for l, r in enumerate(rules):
            x = xs if l == 0 else rules[l - 1].output(hs[l - 1])
            extra = (hs[l],) if r.linear_states else ()  # a nested stack
            lins.append(r.linear(params[l], x, hs_prev[l], *extra))
        return tuple(lins)

    return ReverseRules(
        project,
        forward,
        backward,
        linear,
        output=lambda state: rules[-1].output(state[-1]),
        states=states,
        linear_states=True,
    )


def _input_cotangent(r: ReverseRules, params, x, h_prev, h, dlin):
    """(∂ linear / ∂ x)ᵀ dlin for one layer at one step."""
    extra = (h,) if r.linear_states else ()  # a nested stack reads its states
    _, pull = jax.vjp(lambda x: r.linear(params, x, h_prev, *extra), x)
    return pull(dlin)[0]


def _layer_sizes(hidden_size, L: int) -> tuple:
    """One hidden size per layer from an int (NumPy ints too) or ``L`` ints;
    each is checked again, by name, by its layer's ``init``."""
    if isinstance(hidden_size, numbers.Integral):
        return (hidden_size,) * L
    sizes = tuple(hidden_size) if isinstance(hidden_size, Sequence) else ()
    if len(sizes) != L or not all(isinstance(h, numbers.Integral) for h in sizes):
        raise ValueError(
            f"hidden_size must be an int or {L} ints (one per layer), "
            f"got {hidden_size!r}."
        )
    return sizes
