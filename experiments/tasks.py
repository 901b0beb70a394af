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
}


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


def make_model(cell_name: str, output_size: int) -> jbptt.Model:
    """A built-in cell (``elman`` tanh, ``lstm``, ``gru``) with a readout."""
    if cell_name not in CELLS:
        raise ValueError(
            f"Unknown cell {cell_name!r}. It needs to be one of {sorted(CELLS)}."
        )
    return jbptt.readout(CELLS[cell_name](), output_size=output_size)


def make_problem(
    task: Task, cell_name: str, key, T: int, hidden: int, batch: int
) -> tuple[jbptt.Model, Problem]:
    """Model and a :class:`jbptt.estimators.Problem` at freshly initialised params."""
    model = make_model(cell_name, task.output_size)
    k_init, k_data = jax.random.split(key)
    params = model.init(k_init, task.input_size, hidden)
    xs, ys = task.sample(k_data, T, batch)
    h0 = model.cell.initial_state(params, (batch,))
    return model, Problem(model.cell, model.loss_fn, params, h0, xs, ys)
