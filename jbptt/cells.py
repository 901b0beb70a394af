"""Recurrent cells: built-in Elman, LSTM and GRU with hand-derived reverse
rules, diagonal linear recurrences (LRU, minGRU, minLSTM and the user's own),
stacks of layers that keep them, and adapters for Flax (linen and nnx) and
Equinox cells and plain step functions."""

from jbptt._src import adapters as _adapters
from jbptt._src.adapters import from_equinox as from_equinox
from jbptt._src.adapters import from_flax as from_flax
from jbptt._src.adapters import from_fn as from_fn
from jbptt._src.adapters import from_nnx as from_nnx
from jbptt._src.cell import Cell as Cell
from jbptt._src.cell import ReverseRules as ReverseRules
from jbptt._src.deprecations import Moved as _Moved
from jbptt._src.deprecations import forward as _forward
from jbptt._src.diagonal import diagonal as diagonal
from jbptt._src.diagonal import lru as lru
from jbptt._src.diagonal import min_gru as min_gru
from jbptt._src.diagonal import min_lstm as min_lstm
from jbptt._src.elman import elman as elman
from jbptt._src.gated import gru as gru
from jbptt._src.gated import gru_params_from_torch as gru_params_from_torch
from jbptt._src.gated import lstm as lstm
from jbptt._src.gated import lstm_params_from_torch as lstm_params_from_torch
from jbptt._src.stack import stack as stack

_deprecated = {
    "scoped": _Moved(
        _adapters.scoped, "jbptt.readout(cell, ...) (which scopes the cell's params)"
    ),
}
__getattr__ = _forward(__name__, _deprecated)
