"""The model of the BPTT literature: a cell, a linear readout ``V h + c`` and a
per-step loss, with the readout's params inside the model's params."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jbptt._src import _init
from jbptt._src.adapters import scoped
from jbptt._src.cell import Cell


class Model(NamedTuple):
    """A cell with a readout and a loss; params are ``{"cell", "readout"}``.

    Attributes:
      cell: the cell, reading ``params["cell"]`` (use with any jbptt function
        that takes a cell).
      loss_fn: per-step loss ``(params, out_t, y_t) -> scalar`` (batch mean).
      init: ``(key, input_size, hidden_size) -> params``.
      predict: ``(params, outs[..., H]) -> [..., output_size]``.
    """

    cell: Cell
    loss_fn: Callable
    init: Callable
    predict: Callable


def _mse(pred, y):
    # ½‖ŷ − y‖² over features, mean over the batch.
    return jnp.mean(0.5 * jnp.sum((pred - y) ** 2, axis=-1))


def _xent(logits, y):
    # −log softmax(ŷ)[y] for integer labels, mean over the batch.
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, y[..., None], axis=-1))


_LOSSES = {"mse": _mse, "xent": _xent}


def readout(cell: Cell, output_size: int, loss: str = "mse") -> Model:
    """Attach a linear readout ``ŷ_t = V h_t + c`` and a per-step loss.

    Args:
      cell: any :class:`jbptt.cells.Cell`.
      output_size: size of ``ŷ_t`` (number of classes for ``"xent"``).
      loss: ``"mse"`` (½‖ŷ−y‖², ``y`` float ``[..., output_size]``) or
        ``"xent"`` (softmax cross-entropy, ``y`` integer labels ``[...]``).
        Both average over batch dimensions and sum over time.

    Examples:
      >>> import jax
      >>> import jbptt
      >>> model = jbptt.readout(jbptt.cells.gru(), output_size=5, loss="xent")
      >>> params = model.init(jax.random.key(0), 5, 16)
      >>> sorted(params), params["readout"]["V"].shape
      (['cell', 'readout'], (5, 16))
    """
    if loss not in _LOSSES:
        raise ValueError(
            f"Unknown loss {loss!r}. It needs to be one of {sorted(_LOSSES)}."
        )
    if not isinstance(output_size, int) or output_size <= 0:
        raise ValueError(f"output_size must be a positive int, got {output_size!r}.")
    per_step = _LOSSES[loss]

    def init(key, input_size, hidden_size, **kwargs):
        k_cell, k_out = jax.random.split(key)
        cell_params = cell.init(k_cell, input_size, hidden_size, **kwargs)
        dtype = jax.tree_util.tree_leaves(cell_params)[0].dtype
        ro = _init.torch_style(
            k_out,
            {"V": (output_size, hidden_size), "c": (output_size,)},
            hidden_size,
            dtype,
        )
        return {"cell": cell_params, "readout": ro}

    def predict(params, outs):
        return outs @ params["readout"]["V"].T + params["readout"]["c"]

    def loss_fn(params, out_t, y_t):
        return per_step(predict(params, out_t), y_t)

    return Model(scoped(cell, "cell"), loss_fn, init, predict)
