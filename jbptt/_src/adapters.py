"""Adapters: any Flax recurrent cell or plain step function as a :class:`Cell`.

Adapted cells have no hand-derived rules; :func:`jbptt.rnn_scan` runs their
reverse scan with one ``jax.vjp`` of the step per time step.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from jbptt._src import _init
from jbptt._src.cell import Cell


def from_fn(
    init: Callable,
    step: Callable,
    initial_state: Callable,
    *,
    name: str = "from_fn",
) -> Cell:
    """A cell from plain functions.

    Args:
      init: ``(key, input_size, hidden_size) -> params``.
      step: ``(params, h, x) -> (h_new, out)``; ``h`` may be any pytree.
      initial_state: ``(params, batch_shape) -> h0``. Required because the
        state's shape cannot be read from arbitrary params.
      name: shown in error messages.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jbptt import cells
      >>> def init(key, i, h):
      ...     return {"A": 0.5 * jnp.eye(h), "B": jnp.ones((h, i))}
      >>> def step(p, h, x):
      ...     h = jnp.tanh(h @ p["A"].T + x @ p["B"].T)
      ...     return h, h
      >>> def initial_state(p, batch_shape=()):
      ...     return jnp.zeros(batch_shape + (p["A"].shape[0],))
      >>> cell = cells.from_fn(init, step, initial_state)
      >>> p = cell.init(jax.random.key(0), 2, 3)
      >>> cell.step(p, cell.initial_state(p, ()), jnp.ones(2))[0].shape
      (3,)
    """
    for arg, fn in (("init", init), ("step", step), ("initial_state", initial_state)):
        if not callable(fn):
            raise TypeError(f"{arg} must be callable, got {type(fn).__name__}.")
    return Cell(
        init,
        lambda params, batch_shape=(): initial_state(params, tuple(batch_shape)),
        step,
        name=name,
    )


def from_flax(module) -> Cell:
    """A cell from a ``flax.linen`` recurrent cell ``(carry, x) -> (carry, y)``.

    Works with ``LSTMCell``, ``OptimizedLSTMCell``, ``GRUCell``,
    ``SimpleCell`` and any module with the same calling convention and an
    ``initialize_carry(rng, input_shape)`` method. Params are the module's
    variables ``{"params": ...}``; the state is the module's carry, which for
    Flax LSTMs is ``(c, h)``, the order :func:`jbptt.cells.lstm` uses too.

    Args:
      module: an (unbound) ``flax.linen.Module`` instance.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import flax.linen as nn
      >>> from jbptt import cells
      >>> cell = cells.from_flax(nn.GRUCell(features=4))
      >>> params = cell.init(jax.random.key(0), 3, 4)
      >>> h, y = cell.step(params, cell.initial_state(params, (2,)), jnp.ones((2, 3)))
      >>> y.shape
      (2, 4)
    """
    if not hasattr(module, "initialize_carry") or not hasattr(module, "apply"):
        raise TypeError(
            "from_flax expects a flax.linen recurrent cell with "
            f"initialize_carry and apply, got {type(module).__name__}."
        )
    features = getattr(module, "features", None)

    def carry(batch_shape, input_size=1):
        # Flax builds zero carries of shape batch + (features,) from the input
        # shape; the key is unused by the default zero carry_init.
        shape = tuple(batch_shape) + (input_size,)
        return module.initialize_carry(jax.random.key(0), shape)

    def init(key, input_size, hidden_size):
        _init.check_sizes(input_size, hidden_size)
        if features is not None and hidden_size != features:
            raise ValueError(
                f"hidden_size={hidden_size} but the Flax module has "
                f"features={features}."
            )
        x = jax.numpy.zeros((input_size,))
        variables = module.init(key, carry((), input_size), x)
        return {"params": variables["params"]}

    def initial_state(params, batch_shape=()):
        dtype = jax.tree_util.tree_leaves(params)[0].dtype
        return jax.tree_util.tree_map(lambda a: a.astype(dtype), carry(batch_shape))

    def step(params, h, x):
        return module.apply({"params": params["params"]}, h, x)

    return Cell(init, initial_state, step, name=f"from_flax({type(module).__name__})")


def scoped(cell: Cell, key: str) -> Cell:
    """The same cell reading its params from ``params[key]``.

    Lets a model keep more than the cell in one params dict (e.g. a readout),
    while gradients keep the full dict's structure.

    Examples:
      >>> import jax
      >>> from jbptt import cells
      >>> inner = cells.gru()
      >>> cell = cells.scoped(inner, "rnn")
      >>> params = {"rnn": inner.init(jax.random.key(0), 2, 3), "other": 1.0}
      >>> cell.initial_state(params, (4,)).shape
      (4, 3)
    """

    def sub(fn):
        return lambda params, *args: fn(params[key], *args)

    rules = cell.rules
    if rules is not None:
        rules = rules._replace(  # output and states read no params: kept
            project=sub(rules.project),
            forward=sub(rules.forward),
            backward=sub(rules.backward),
            linear=sub(rules.linear),
        )
    return Cell(
        init=cell.init,
        initial_state=sub(cell.initial_state),
        step=sub(cell.step),
        rules=rules,
        input_size=None if cell.input_size is None else sub(cell.input_size),
        name=cell.name,
    )
