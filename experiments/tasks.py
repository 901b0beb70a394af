"""Built-in sequence tasks with long-range dependence, for experiments.

Each task is a function ``(key, T, batch) -> (xs[T, B, I], ys[T, B, O])``,
time-major, float, plus :func:`make_problem` that builds a model (cell with a
linear readout and squared loss) and a :class:`jbptt.estimators.Problem` on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

import jbptt
from jbptt.estimators import Problem

CELLS = {
    "elman": lambda: jbptt.cells.elman("tanh"),
    "lstm": jbptt.cells.lstm,
    "gru": jbptt.cells.gru,
    # diagonal linear recurrences (jbptt.cells.diagonal)
    "lru": jbptt.cells.lru,
    "min_gru": jbptt.cells.min_gru,
    "min_lstm": jbptt.cells.min_lstm,
}
# Seed index of each cell (experiments fold it into their key): new cells are
# appended, so the draws of the cells already there never change.
CELL_ORDER = ("elman", "gru", "lstm", "lru", "min_gru", "min_lstm")


class Task(NamedTuple):
    """A sequence task: ``sample(key, T, batch) -> (xs, ys)`` and its sizes."""

    name: str
    sample: Callable
    input_size: int
    output_size: int


def delayed_sum(delays: tuple[int, ...] = (2, 8, 24)) -> Task:
    """Regression on distant inputs: ``y_t = Σ_i x_{t − d_i}^{(i)}``.

    Input channel ``i`` (iid N(0, 1)) must be recalled ``d_i`` steps later
    (zero before the sequence starts), so the loss at step t depends on steps
    up to ``max(delays)`` back: gradients truncated at ``k < d_i`` miss the
    channel's contribution. One output, squared loss.

    Examples:
      >>> import jax
      >>> from experiments import tasks
      >>> task = tasks.delayed_sum((1, 3))
      >>> xs, ys = task.sample(jax.random.key(0), 6, 2)
      >>> xs.shape, ys.shape
      ((6, 2, 2), (6, 2, 1))
      >>> bool(abs(ys[5, 0, 0] - xs[4, 0, 0] - xs[2, 0, 1]) < 1e-6)
      True
    """
    delays = tuple(int(d) for d in delays)
    if not delays or min(delays) < 0:
        raise ValueError(f"delays must be non-negative ints, got {delays!r}.")

    def sample(key, T, batch):
        xs = jax.random.normal(key, (T, batch, len(delays)))
        shifted = [
            jnp.concatenate([jnp.zeros((d, batch)), xs[: T - d, :, i]])[:T]
            for i, d in enumerate(delays)
        ]
        ys = sum(shifted)[..., None]  # [T, B, 1]
        return xs, ys

    return Task(f"delayed_sum{delays}", sample, len(delays), 1)


def make_model(cell_name, output_size: int) -> jbptt.Model:
    """A built-in cell (a name in :data:`CELLS`) or a given
    :class:`jbptt.cells.Cell` with a linear readout and squared loss."""
    if isinstance(cell_name, jbptt.cells.Cell):
        cell = cell_name
    elif cell_name in CELLS:
        cell = CELLS[cell_name]()
    else:
        raise ValueError(
            f"Unknown cell {cell_name!r}. It needs to be one of {sorted(CELLS)}."
        )
    if cell.name.startswith("lru("):
        return _lru_model(cell, output_size)
    return jbptt.readout(cell, output_size=output_size)


def _re_im(params, h, x):
    del params, x
    return jnp.concatenate([jnp.real(h), jnp.imag(h)], axis=-1)


def _lru_model(lru: jbptt.cells.Cell, output_size: int) -> jbptt.Model:
    """The LRU's recurrence read out as ``ŷ = V [Re h; Im h] + c``.

    That is ``Re(C h) + c`` with a complex ``C = V_re − i V_im [O, H]``, the
    LRU's own readout at any output size (its built-in one has the input's
    size). Its ``C``, ``D`` stay in the params, unread (zero gradient).
    """
    rules = lru.diagonal
    body = jbptt.cells.diagonal(
        rules.gates, lru.init, input_size=lru.input_size, readout=_re_im, name=lru.name
    )
    return jbptt.readout(body, output_size=output_size)  # V: [O, 2H]


def make_problem(
    task: Task, cell_name, key, T: int, hidden: int, batch: int
) -> tuple[jbptt.Model, Problem]:
    """Model and a :class:`jbptt.estimators.Problem` at freshly initialised params.

    ``cell_name`` is a name in :data:`CELLS` or a :class:`jbptt.cells.Cell`.
    """
    model = make_model(cell_name, task.output_size)
    k_init, k_data = jax.random.split(key)
    params = model.init(k_init, task.input_size, hidden)
    xs, ys = task.sample(k_data, T, batch)
    h0 = model.cell.initial_state(params, (batch,))
    return model, Problem(model.cell, model.loss_fn, params, h0, xs, ys)
