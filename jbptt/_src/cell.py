"""The `Cell` interface: a recurrent step as a NamedTuple of pure functions.

A cell is the recurrence ``h_t, out_t = step(params, h_{t-1}, x_t)``. Built-in
cells also carry :class:`ReverseRules`, the hand-derived pieces that let
:func:`jbptt.rnn_scan` run the forward and reverse scans with the performance
structure of docs/design.md, "Performance structure": every input projection
is one GEMM before the scan, only the recurrent part runs inside it, and every
weight gradient is one GEMM after the reverse scan. Cells without rules (Flax
modules, plain functions) go through a generic per-step ``jax.vjp`` reverse
scan.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

PyTree = Any
Params = PyTree
State = PyTree


class ReverseRules(NamedTuple):
    """Hand-derived forward/backward pieces of a cell (see module docstring).

    Every parameter of the cell enters through ``linear``, a map that is
    linear in ``params`` and evaluated on all steps at once; the vjp of that
    map gives the weight gradients as GEMMs over all steps.

    Attributes:
      project: ``(params, xs[T, ..., I]) -> xz[T, ..., G]``, the input part of
        ``linear`` for all steps (one GEMM before the forward scan).
      forward: ``(params, h_prev, xz_t) -> (h_t, res_t)``, the sequential part
        of one step; ``res_t`` holds what ``backward`` needs beyond the states.
      backward: ``(params, h_prev, h_t, res_t, dh_t, dout_t) -> (dh_prev,
        dlin_t)``: Jacobian-transpose products of one step. ``dh_t`` is the
        cotangent reaching state ``h_t`` from later steps, ``dout_t`` the one
        from the loss at step t; ``dh_prev`` is (∂h_t/∂h_{t-1})ᵀ δ_t (not yet
        scaled by the link weight) and ``dlin_t`` the cotangent of
        ``linear``'s output at step t.
      linear: ``(params, xs, hs_prev) -> lin``, all parameter dependence, on
        all steps (``hs_prev`` is the stacked state h_{t-1}, t = 0..T-1).
      output: ``state -> out``, the step output read from a (stacked) state.
      states: optional ``res[T] -> hs[T]``, the stacked states h_1..h_T read
        back from the stacked residuals. When given, the forward scan stacks
        only ``res`` (one write per step instead of one per state leaf plus
        one for ``res``: a shorter loop body, docs/performance.md); ``res``
        must then hold (or determine) the states.
      linear_states: when True, ``linear`` is called as ``linear(params, xs,
        hs_prev, hs)`` with ``hs`` the states h_1..h_T too (a stacked cell's
        upper layers read their input, the lower layer's output at the same
        step, from ``hs``).
    """

    project: Callable[[Params, jax.Array], Any]
    forward: Callable[..., tuple[State, Any]]
    backward: Callable[..., tuple[State, Any]]
    linear: Callable[[Params, jax.Array, State], Any]
    output: Callable[[State], jax.Array]
    states: Callable[[Any], State] | None = None
    linear_states: bool = False


class Cell(NamedTuple):
    """A recurrent cell: pure functions, safe to close over and ``jit``.

    Attributes:
      init: ``(key, input_size, hidden_size) -> params``.
      initial_state: ``(params, batch_shape) -> h0`` (zeros).
      step: ``(params, h, x) -> (h_new, out)``; ``x`` may have leading batch
        dimensions, matched by those of ``h``.
      rules: hand-derived :class:`ReverseRules`, or ``None`` for the generic
        per-step ``jax.vjp`` reverse scan.
      input_size: ``params -> int``, the feature size ``x`` must have, or
        ``None`` when it cannot be read from ``params``.
      name: a short description used in error messages and reports.
      diagonal: for diagonal linear recurrences ``h_t = a_t ⊙ h_{t-1} + b_t``
        (:func:`jbptt.cells.diagonal`), their ``DiagonalRules(gates,
        readout)``: ``gates(params, x) -> (a, b)`` and ``readout(params, h,
        x) -> out`` on any leading steps; ``None`` otherwise.
      diagonal_layers: for :func:`jbptt.cells.stack` of diagonal cells, the
        layers (params and state are the tuples of theirs), run layer by
        layer over all steps; ``None`` otherwise. A wrapper that changes
        ``step`` must drop it, or wrap the layers and give ``layer_params``.
      layer_params: with ``diagonal_layers``, ``params -> the layers'
        params`` (a tuple, one per layer) for a wrapped stack whose params
        are not that tuple (a token model's: ``{"embed", "cell"}``); the
        gradients go back through its vjp. ``None``: params is the tuple.
    """

    init: Callable[..., Params]
    initial_state: Callable[[Params, tuple[int, ...]], State]
    step: Callable[[Params, State, jax.Array], tuple[State, jax.Array]]
    rules: ReverseRules | None = None
    input_size: Callable[[Params], int] | None = None
    name: str = "cell"
    diagonal: Any = None
    diagonal_layers: tuple | None = None
    layer_params: Callable[[Params], tuple] | None = None


def layer_params_of(cell: Cell, params) -> tuple:
    """The params of a diagonal stack's layers, one per layer:
    ``cell.layer_params(params)`` for a wrapped stack, ``params`` itself
    for ``cells.stack``'s own."""
    return params if cell.layer_params is None else cell.layer_params(params)


def token_vocab(cell) -> int | None:
    """The vocabulary size of a cell that reads integer token ids (an
    embedding in front of it, :func:`jbptt.readout` with ``vocab_size=``),
    else ``None``."""
    return getattr(getattr(cell, "step", None), "vocab_size", None)
