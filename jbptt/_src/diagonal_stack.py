r"""A stack of diagonal cells (:func:`jbptt.cells.stack`), layer by layer.

Layer ``l`` reads layer ``l−1``'s output at the same step, and every layer
is diagonal, so the stack runs as ``L`` diagonal passes over all steps
(:mod:`jbptt._src.diagonal_scan`): layer 0 on the inputs, layer ``l`` on
the outputs of layer ``l−1``. The reverse pass runs them from the top down,
each layer's input cotangent (``dxs``) the output cotangent of the layer
below.

Link weights: a link weight ``w_t`` scales the stack's temporal Jacobian
``∂S_t/∂S_{t-1}`` (``S`` the tuple of the layers' states). Every path from
``S_{t-1}`` to ``S_t`` crosses one temporal link, in one layer (``h^l_{t-1}
→ h^l_t``), and then only links within step ``t`` (``h^l_t → h^{l+1}_t``),
so scaling each layer's own recurrence by ``w_t`` scales every such path by
``w_t`` once: the same gradient. Padding and resets are per step and per
sequence, the same for every layer.
"""

from __future__ import annotations

import functools

import jax

from jbptt._src import diagonal_scan, diagonal_solve
from jbptt._src.cell import layer_params_of


def forward(
    cell, params, h0, xs, mask=None, resets=None, h_reset=None, steps=None,
    how=diagonal_solve.AUTO_HOW,
):  # fmt: skip
    """``(h_T, outs, saved)`` of a diagonal stack: the layers' end states
    and states as tuples, ``saved.res`` the tuple of the layers' own saved
    forwards (:class:`jbptt._src.diagonal_scan.Saved`); every layer's scan
    by ``how = (method, chunk)``."""
    x, ends, states, saved = xs, [], [], []
    layer_params = layer_params_of(cell, params)
    for l, layer in enumerate(cell.diagonal_layers):
        reset_l = None if h_reset is None else h_reset[l]
        h_T, x, s = diagonal_scan.forward(
            layer, layer_params[l], h0[l], x, mask, resets, reset_l, steps, how
        )
        ends.append(h_T)
        states.append(s.hs)
        saved.append(s)
    mask = diagonal_scan.with_steps(mask, steps, (xs.shape[0],) + xs.shape[1:-1])
    res = diagonal_scan.Saved(
        h0, xs, tuple(states), tuple(saved), mask, resets, h_reset
    )
    return tuple(ends), x, res


def backward(cell, params, r, w, dh_T, douts, how=diagonal_solve.AUTO_HOW):
    """The reverse pass of :func:`forward` with link weights ``w``, from the
    top layer down: ``(dparams, dh0, dxs, dh_reset)`` as
    :func:`jbptt._src.scan.backward_unchecked` returns them."""
    layers = cell.diagonal_layers
    layer_params, to_params = jax.vjp(functools.partial(layer_params_of, cell), params)
    dparams, dh0, dh_reset = [None] * len(layers), [None] * len(layers), []
    d = douts
    for l in reversed(range(len(layers))):
        dparams[l], dh0[l], d, dr = diagonal_scan.backward(
            layers[l], layer_params[l], r.res[l], w, dh_T[l], d, how
        )
        dh_reset.insert(0, dr)
    dparams = tuple(dparams)
    return (
        dparams if cell.layer_params is None else to_params(dparams)[0],
        tuple(dh0),
        d,
        (None if r.resets is None else tuple(dh_reset)),
    )


def scan(cell, how, params, h0, xs, w, mask, resets, h_reset, steps):
    """``(h_T, outs)`` of a diagonal stack, each layer's
    :func:`jbptt._src.diagonal_scan.scan` by ``how`` (autodiff chains their
    reverse passes from the top down)."""
    x, ends = xs, []
    layer_params = layer_params_of(cell, params)
    for l, layer in enumerate(cell.diagonal_layers):
        reset_l = None if h_reset is None else h_reset[l]
        h_T, x = diagonal_scan.scan(
            layer, how, layer_params[l], h0[l], x, w, mask, resets, reset_l, steps
        )
        ends.append(h_T)
    return tuple(ends), x
