r"""Layer-wise exact RTRL for stacks of diagonal recurrences.

In ``cells.stack(layers)`` of diagonal layers, layer ``l`` reads
``x^l_t = readout_{l-1}(θ_{l-1}, h^{l-1}_t, x^{l-1}_t)`` and runs
``h^l_t = a^l_t ⊙ h^l_{t-1} + b^l_t`` with ``(a^l_t, b^l_t) =
gates_l(θ_l, x^l_t)``. Layer ``l``'s input does not depend on ``θ_l``, so
its own diagonal influence ``e^l_t = ∂h^l_t/∂θ_l`` is exact
(:mod:`jbptt._src.diagonal_rtrl`), at ``O(|θ_l|)`` memory. The estimate at
step ``t`` combines them by spatial backprop within the step:

.. math::

    g_t = ∂ℓ_t/∂θ \big|_{h^{0..L-1}_t} + \mathrm{Re} \textstyle\sum_l
    c^l_t \cdot e^l_t, \qquad c^l_t = dℓ_t/dh^l_t
    \text{ through layers } l+1..L-1 \text{ at step } t,

where the first term holds every layer's new state as a function of its
gates' *inputs* but not of its gates' params (the readouts' params and the
loss's act directly). Exact for one layer and for the top layer's params;
biased below: layer ``l``'s params reach the states of layers above at later
steps through those layers' recurrences (``h^{l+1}_{t'}`` depends on
``x^{l+1}_t``, ``t < t'``), and that path is ignored (Zucchet et al. 2023,
"Online learning of long-range dependencies", Section 3.2).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jbptt._src import diagonal_rtrl as diag
from jbptt._src import diagonal_window, forward_mode, validation
from jbptt._src import influence as flat
from jbptt._src.cell import Cell, layer_params_of
from jbptt._src.stack import stack

tree_map = jax.tree_util.tree_map


def _check_layers(layers) -> tuple[Cell, ...]:
    if isinstance(layers, Cell) or not isinstance(layers, Sequence) or not layers:
        raise TypeError(
            "layers must be the non-empty list of diagonal cells given to "
            f"cells.stack, got {type(layers).__name__}."
        )
    for k, c in enumerate(layers):
        if not isinstance(c, Cell) or c.diagonal is None:
            raise TypeError(
                f"layers[{k}] must be a diagonal cell (cells.diagonal, lru, "
                f"min_gru, min_lstm), got {getattr(c, 'name', type(c).__name__)}."
            )
    return tuple(layers)


def _forward(layers, params, hs, x_t, us=None):
    """New states and the inputs each layer read; with ``us``, layer ``l``'s
    gates see its params through ``stop_gradient`` and its new state is
    shifted by ``us[l]`` (so ``d/dus[l]`` is the spatial cotangent)."""
    new, inputs, x = [], [], x_t
    for l, (c, p, h) in enumerate(zip(layers, params, hs, strict=True)):
        inputs.append(x)
        g_p = p if us is None else jax.lax.stop_gradient(p)
        a, b = c.diagonal.gates(g_p, x)
        h_new = a * h + b if us is None else a * h + b + us[l]
        new.append(h_new)
        x = c.diagonal.readout(p, h_new, x)
    return tuple(new), tuple(inputs), x


def _split(cell):
    """``params -> the layers' params`` (a ``jbptt.readout`` model's too)."""
    return functools.partial(layer_params_of, cell)


def _plus(g, back, per_layer):
    """``g`` (a gradient in params) plus the layers' gradients
    ``per_layer``, taken back to params by ``back`` (the split's vjp)."""
    return tree_map(jnp.add, g, back(tuple(per_layer))[0])


def _step(layers, split, lays, loss_fn, params, hs, infl, x_t, y_t):
    def spatial(params, us):
        new, inputs, out = _forward(layers, split(params), hs, x_t, us)
        return loss_fn(params, out, y_t), (new, inputs)

    shapes = jax.eval_shape(lambda: _forward(layers, split(params), hs, x_t)[0])
    us = tuple(jnp.zeros(s.shape, s.dtype) for s in shapes)
    (loss, (new, inputs)), (g, cs) = jax.value_and_grad(
        spatial, argnums=(0, 1), has_aux=True
    )(params, us)
    (own, back), reads, new_infl = jax.vjp(split, params), [], []
    for l, c in enumerate(layers):
        X = inputs[l].reshape((-1, inputs[l].shape[-1]))
        H_prev = jnp.broadcast_to(hs[l], new[l].shape).reshape(X.shape[0], -1)
        e = diag.update(lays[l], c.diagonal.gates, own[l], infl[l], H_prev, X)
        reads.append(diag.read(lays[l], own[l], e, cs[l].reshape(X.shape[0], -1)))
        new_infl.append(e)
    return new, tuple(new_infl), loss, _plus(g, back, reads)


def _layers_forward(layers, params, hs, xs, real, resets, h_reset):
    """The stack over a window, layer by layer (each layer's gates on all
    steps at once): ``(h_K, h_{t-1} [K, …], x^l_t [K, …])`` per layer, the
    entering states after resets, padded steps the identity."""
    h_K, h_prev, inputs, x = [], [], [], xs
    for l, (c, p, h) in enumerate(zip(layers, params, hs, strict=True)):
        a, b = c.diagonal.gates(p, x)
        reset_l = None if h_reset is None else h_reset[l]
        h_last, h_in, h_new, _ = diagonal_window.recurrence(
            a, b, h, real, resets, reset_l
        )
        h_K.append(h_last)
        h_prev.append(h_in)
        inputs.append(x)
        x = c.diagonal.readout(p, h_new, x)
    return tuple(h_K), tuple(h_prev), tuple(inputs)


def _pairing(params, h, c):
    """``Re Σ c ⊙ h``, whose gradient in ``h`` is ``c`` (JAX's convention,
    complex states too): a layer's loss in :func:`_window`."""
    return jnp.sum(jnp.real(h * c))


def _window(layers, split, loss_fn, params, hs, infl, xs, ys, keep, resets, h_reset):
    r"""``K`` steps of :func:`_step` under fixed params at once: ``(losses
    [K], Σ_t g_t, h_K, e_K)``, the same sums.

    The direct terms ``Σ_t ∂ℓ_t/∂θ|_{h^{0..L-1}_t}`` and the spatial
    cotangents ``c^l_t`` come from one vjp over all steps, each step's
    entering states held fixed. Then ``Re Σ_t c^l_t · e^l_t`` is, per layer,
    :func:`jbptt._src.diagonal_window.window` on the layer alone: its inputs
    ``x^l_t`` fixed, its readout the state and its loss ``Re⟨c^l_t, h^l_t⟩``
    (BPTT inside the layer, the carried influence read once at the start).
    """
    real = keep > 0
    own, back = jax.vjp(split, params)
    h_K, h_prev, inputs = _layers_forward(layers, own, hs, xs, real, resets, h_reset)

    def spatial(params, us):  # Σ_t ℓ_t, every h^l_{t-1} fixed
        def one(h, x, u, y, m):
            out = _forward(layers, split(params), h, x, u)[2]
            return jnp.where(m, loss_fn(params, out, y), 0)

        losses = jax.vmap(one)(h_prev, xs, us, ys, real)
        return jnp.sum(losses), losses

    us = tree_map(jnp.zeros_like, h_prev)
    (_, losses), (g, cs) = jax.value_and_grad(spatial, (0, 1), has_aux=True)(params, us)
    reads, new_infl = [], []
    for l, c in enumerate(layers):
        alone = c._replace(diagonal=c.diagonal._replace(readout=lambda p, h, x: h))
        _, g_l, _, e = diagonal_window.window(
            alone, _pairing, own[l], hs[l], infl[l],
            jax.lax.stop_gradient(inputs[l]), cs[l], keep, resets,
            None if h_reset is None else h_reset[l],
        )  # fmt: skip
        reads.append(g_l)
        new_infl.append(e)
    return losses, _plus(g, back, reads), h_K, tuple(new_infl)


def layerwise_rtrl(
    layers: Sequence[Cell],
    *,
    max_bytes: int = forward_mode.DEFAULT_MAX_BYTES,
    window: int = 64,
) -> forward_mode.OnlineEstimator:
    """Per-layer exact diagonal RTRL for ``cells.stack(layers)``, with
    spatial backprop between layers (module docstring).

    Every layer carries its own diagonal influence (as :func:`rtrl` on one
    diagonal cell: memory ``O(|θ_l|)`` per sequence); the gradient reads
    each layer's influence with the cotangent of its new state taken through
    the layers above at the same step. Exact for a one-layer stack and for
    the top layer; biased for the layers below, whose params also reach the
    layers above at later steps through the upper recurrences, a path this
    estimator ignores. :func:`rtrl` on the stack is the exact (dense,
    ``O(S·|θ|)``) alternative for small real-state models.

    Where the params stay fixed over many steps (``estimate``, and the
    trainer's segments under :meth:`OnlineEstimator.every`), the steps run
    ``window`` at a time with the same sums: the direct terms and the
    spatial cotangents from one vjp over the window's steps, then per layer
    BPTT inside the layer and its influence read and advanced once
    (:func:`jbptt._src.diagonal_window.window`).

    Args:
      layers: the diagonal cells given to :func:`jbptt.cells.stack`; the
        estimator takes that stack (checked by name) as its cell, or a
        ``jbptt.readout`` model of it (its params ``{"cell", "readout"}``),
        with or without ``vocab_size=`` (a token model's first layer reads
        the ids through the lookup and carries the embedding's influence:
        ``B·H·|E|`` numbers).
      max_bytes: largest carried influence plus per-step work, in bytes.
      window: steps taken at once under fixed params; ``1`` steps one at a
        time.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jbptt import cells, forward_mode
      >>> layers = [cells.min_gru(), cells.min_gru()]
      >>> cell = cells.stack(layers)
      >>> p = cell.init(jax.random.key(0), 2, 3)
      >>> h0 = cell.initial_state(p, (4,))
      >>> xs, ys = jnp.ones((5, 4, 2)), jnp.zeros((5, 4, 3))
      >>> mse = lambda p, out, y: jnp.mean((out - y) ** 2)
      >>> est = forward_mode.layerwise_rtrl(layers)
      >>> (L, h_T), g = est.estimate(jax.random.key(0), cell, mse, p, h0, xs, ys)
      >>> g[0]["W_z"].shape
      (3, 2)
    """
    layers = _check_layers(layers)
    max_bytes = validation.positive_int("max_bytes", max_bytes)
    window = validation.positive_int("window", window)
    name = stack(list(layers)).name

    def own_layers(cell):  # the layers the cell runs (a token model's first
        # layer reads its ids through the lookup: params {"embed", "cell"})
        ok = isinstance(cell, Cell) and (
            cell.name == name or cell.name.endswith(f") -> {name}")
        )
        if not ok:
            raise ValueError(
                f"layerwise_rtrl: cell must be {name} (cells.stack of the "
                "layers given, or jbptt.readout of it, with or without "
                "vocab_size=), got "
                f"{getattr(cell, 'name', type(cell).__name__)}."
            )
        return cell.diagonal_layers

    def layouts(cell, params, x):
        run = own_layers(cell)
        diag.check_params(params)
        x_b = x.reshape((-1, x.shape[-1]))[0]
        lays = []
        for c, p in zip(run, _split(cell)(params), strict=True):
            lay = diag.layout(c, p, x_b)
            lays.append(lay)
            x_b = jax.eval_shape(
                c.diagonal.readout, p, jnp.zeros(lay.H, lay.dtype), x_b
            )
            x_b = jnp.zeros(x_b.shape, x_b.dtype)
        return tuple(lays)

    def cost(cell, params, h0, x):
        lays = layouts(cell, params, x)
        B = int(np.prod(x.shape[:-1]))
        n = sum(lay.numbers(B) for lay in lays)
        nbytes = sum(lay.nbytes(B) for lay in lays)
        what = (
            f"exact per layer, biased across layers (layer-wise diagonal "
            f"influence): {n:,} numbers = {nbytes:,} bytes"
        )
        extra = sum(diag.window_bytes(lay, B, window) for lay in lays)
        if extra:
            what += f"; windows of {window} steps work in about {extra:,} bytes more"
        return diag.DiagonalFootprint(nbytes, nbytes + extra, float(4 * n), what)

    def init(cell, params, h0, x):
        lays = layouts(cell, params, x)
        validation.check_h0(cell, params, h0, tuple(x.shape[:-1]))
        fp = cost(cell, params, h0, x)
        flat.check_bytes("layerwise_rtrl", fp, max_bytes, "the influences")
        B = int(np.prod(x.shape[:-1]))
        own = _split(cell)(params)
        infl = tuple(diag.zeros(lay, p, B) for lay, p in zip(lays, own, strict=True))
        return forward_mode.OnlineState(h0, infl)

    def step(cell, loss_fn, key, params, state, x_t, y_t, reset=None, h_reset=None):
        lays = layouts(cell, params, x_t)
        hs, infl = state
        if reset is not None:  # episode start: h := h_reset, every e := 0
            hs, infl = diag.restart(reset, h_reset, hs, infl)
        hs, infl, loss, g = _step(
            own_layers(cell), _split(cell), lays, loss_fn, params, hs, infl, x_t, y_t
        )
        return forward_mode.OnlineState(hs, infl), (loss, g)

    def run(cell, loss_fn, params, h, infl, xs, ys, keep, resets, h_reset):
        def one(cell, *args):
            return _window(own_layers(cell), _split(cell), *args)

        return diagonal_window.windows(
            cell, loss_fn, params, h, infl, xs, ys, keep, resets, h_reset, window,
            one=one,
        )  # fmt: skip

    hparams = {"max_bytes": max_bytes, "window": window}
    windowed = (lambda cell: run) if window > 1 else None
    return forward_mode.assemble(
        "layerwise_rtrl", init, step, cost, True, hparams, windowed
    )
