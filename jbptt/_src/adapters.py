"""Adapters: any Flax recurrent cell or plain step function as a :class:`Cell`.

Adapted cells have no hand-derived rules; :func:`jbptt.rnn_scan` runs their
reverse scan with one ``jax.vjp`` of the step per time step. Their steps are
checked when traced: a step that returns a state of another structure,
shape or dtype than it was given is refused, naming the cell (a scan needs
the state to keep all three). The ``init`` of an adapted Flax or Equinox
module takes a PRNG key (``jax.random.key(seed)``), checked like every
other key.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import jax

from jbptt._src import _init, validation
from jbptt._src.cell import Cell, layer_params_of


def checked_step(step: Callable, name: str) -> Callable:
    """``step`` refusing, at trace time, a returned state whose structure,
    shapes or dtypes differ from the state it was given
    (:func:`jbptt._src.validation.check_step_state`, naming the cell). The
    dtype is compared when params, state and input share one floating dtype
    (as inside a scan).

    Only static properties are compared, once per trace, so the check costs
    nothing in the compiled scan.
    """

    def step_checked(params, h, x):
        new_h, out = step(params, h, x)
        # A dtype change is the step's own only when params, h and x share
        # one floating dtype (as in the scan, which casts the params to the
        # compute dtype); mixed inputs promote, which is the caller's doing.
        uniform = len(_float_dtypes((params, h, x))) <= 1
        validation.check_step_state(name, h, new_h, dtypes=uniform)
        return new_h, out

    return step_checked


def _float_dtypes(tree) -> set:
    return {
        jax.numpy.result_type(a)
        for a in jax.tree_util.tree_leaves(tree)
        if jax.numpy.issubdtype(jax.numpy.result_type(a), jax.numpy.floating)
    }


def _keyed(init: Callable) -> Callable:
    """``init`` with its key checked (and a legacy key wrapped) first."""

    def init_checked(key, *args, **kwargs):
        if not isinstance(key, dict):  # flax also takes a dict of named keys
            key = validation.prng_key("key", key)
        return init(key, *args, **kwargs)

    return init_checked


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
        init,  # the user's: it takes whatever key it documents
        lambda params, batch_shape=(): initial_state(params, tuple(batch_shape)),
        checked_step(step, name),
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

    name = f"from_flax({type(module).__name__})"
    return Cell(_keyed(init), initial_state, checked_step(step, name), name=name)


def scoped(cell: Cell, key: str) -> Cell:
    """The same cell reading its params from ``params[key]``.

    Lets a model keep more than the cell in one params dict (e.g. a readout),
    while gradients keep the full dict's structure.

    Examples:
      >>> import jax
      >>> from jbptt import cells
      >>> from jbptt._src.adapters import scoped
      >>> inner = cells.gru()
      >>> cell = scoped(inner, "rnn")
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
    diagonal = cell.diagonal
    if diagonal is not None:  # a diagonal cell keeps its elementwise path
        diagonal = diagonal._replace(
            gates=sub(diagonal.gates), readout=sub(diagonal.readout)
        )
    layer_params = None  # a diagonal stack keeps its layer-by-layer path
    if cell.diagonal_layers is not None:
        layer_params = sub(functools.partial(layer_params_of, cell))
    return Cell(
        init=cell.init,
        initial_state=sub(cell.initial_state),
        step=sub(cell.step),
        rules=rules,
        input_size=None if cell.input_size is None else sub(cell.input_size),
        name=cell.name,
        diagonal=diagonal,
        diagonal_layers=cell.diagonal_layers,
        layer_params=layer_params,
    )


def from_nnx(module) -> Cell:
    """A cell from a ``flax.nnx`` recurrent cell ``(carry, x) -> (carry, y)``.

    Works with ``nnx.LSTMCell``, ``nnx.OptimizedLSTMCell``, ``nnx.GRUCell``,
    ``nnx.SimpleCell`` and any ``nnx.Module`` with the same calling convention
    and an ``initialize_carry(input_shape)`` method. Params are the module's
    ``nnx.Param`` state (``nnx.split(module, nnx.Param, ...)``), so gradients
    are an ``nnx.State`` with the module's structure; other state (rngs,
    batch statistics) is held fixed: the cell runs a copy of the module in
    evaluation mode (``module.eval()``: ``Dropout`` deterministic,
    ``BatchNorm`` on its running averages), and a module whose step would
    still change such state is refused when traced, naming that state. The
    module is already initialised, so ``init`` returns its current params
    (the key is checked but unused) after checking the sizes.

    Args:
      module: an ``nnx.Module`` recurrent cell.

    Raises:
      TypeError: if ``module`` is not an ``nnx.Module`` with ``__call__`` and
        ``initialize_carry``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from jbptt import cells
      >>> cell = cells.from_nnx(nnx.GRUCell(3, 4, rngs=nnx.Rngs(0)))
      >>> params = cell.init(jax.random.key(0), 3, 4)
      >>> h, y = cell.step(params, cell.initial_state(params, (2,)), jnp.ones((2, 3)))
      >>> y.shape
      (2, 4)
    """
    import flax.errors
    from flax import nnx

    if not isinstance(module, nnx.Module) or not hasattr(module, "initialize_carry"):
        raise TypeError(
            "module must be a flax.nnx recurrent cell (an nnx.Module called as "
            "module(carry, x) -> (carry, y), with initialize_carry), got "
            f"{type(module).__name__}."
        )
    module = nnx.clone(module)
    module.eval()  # Dropout deterministic, BatchNorm on running averages
    graphdef, params0, rest = nnx.split(module, nnx.Param, ...)
    name = f"from_nnx({type(module).__name__})"
    in_features = getattr(module, "in_features", None)
    hidden = getattr(module, "hidden_features", None)

    def init(key, input_size, hidden_size):
        _init.check_sizes(input_size, hidden_size)
        for arg, got, have, attr in (
            ("input_size", input_size, in_features, "in_features"),
            ("hidden_size", hidden_size, hidden, "hidden_features"),
        ):
            if have is not None and got != have:
                raise ValueError(f"{arg}={got} but the nnx module has {attr}={have}.")
        return params0

    def bound(params):
        return nnx.merge(graphdef, params, rest)

    def initial_state(params, batch_shape=()):
        size = in_features if in_features is not None else 1
        cell = bound(params)
        shape = tuple(batch_shape) + (size,)
        # Flax's cells draw the carry from rngs (zeros by default: no randomness).
        if "rngs" in inspect.signature(cell.initialize_carry).parameters:
            carry = cell.initialize_carry(shape, rngs=nnx.Rngs(0))
        else:
            carry = cell.initialize_carry(shape)
        dtype = jax.tree_util.tree_leaves(params)[0].dtype
        return jax.tree_util.tree_map(lambda a: a.astype(dtype), carry)

    def step(params, h, x):
        try:
            return bound(params)(h, x)
        except flax.errors.TraceContextError as err:
            raise TypeError(
                f"{name}: the module changes state other than nnx.Param during a "
                f"step ({err}); from_nnx holds that state fixed ({_fixed(rest)}). "
                "Make it deterministic (e.g. Dropout(deterministic=True), "
                "BatchNorm(use_running_average=True)) or hold it as nnx.Param."
            ) from None

    return Cell(
        _keyed(init),
        initial_state,
        checked_step(step, name),
        input_size=None if in_features is None else (lambda p: in_features),
        name=name,
    )


def _fixed(state) -> str:
    """The paths of the leaves of an ``nnx.State``, e.g. ``drop/rngs/count``."""
    paths = [
        "/".join(str(getattr(k, "key", k)) for k in path)
        for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]
    ]
    return "fixed: " + (", ".join(paths) if paths else "none")


def from_equinox(
    module, *, initial_state: Callable | None = None, output: Callable | None = None
) -> Cell:
    """A cell from an Equinox recurrent cell ``(x, hidden) -> hidden``.

    Works with ``equinox.nn.LSTMCell`` (state ``(h, c)``, Equinox's order),
    ``equinox.nn.GRUCell`` and any ``eqx.Module`` with the same calling
    convention. Equinox cells act on one example; the step maps them over
    the batch dimensions. Params are the module's inexact arrays
    (``eqx.partition(module, eqx.is_inexact_array)``), so gradients are a
    module of the same structure that ``optax`` updates and
    ``eqx.apply_updates`` applies as usual. The state may be any pytree
    (an array, a tuple, a dict, ...); the step output is ``output(state)``,
    by default the state's first leaf (``h`` of the LSTM's ``(h, c)``, the
    state itself when it is one array).

    Args:
      module: an ``eqx.Module`` recurrent cell.
      initial_state: ``(params, batch_shape) -> h0``; needed for cells
        without a ``hidden_size`` attribute or whose state is not an array
        of ``hidden_size`` (e.g. a dict). By default zeros of
        ``hidden_size`` (a pair ``(h, c)`` for ``eqx.nn.LSTMCell``).
      output: ``state -> out``, what the step outputs (default: the
        state's first leaf).

    Raises:
      TypeError: if ``module`` is not a callable ``eqx.Module``, or has no
        ``hidden_size`` and no ``initial_state`` was given.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import equinox as eqx
      >>> from jbptt import cells
      >>> cell = cells.from_equinox(eqx.nn.LSTMCell(3, 4, key=jax.random.key(0)))
      >>> params = cell.init(jax.random.key(0), 3, 4)
      >>> (h, c), y = cell.step(params, cell.initial_state(params, (2,)),
      ...                       jnp.ones((2, 3)))
      >>> y.shape
      (2, 4)
    """
    import equinox as eqx

    if not isinstance(module, eqx.Module) or not callable(module):
        raise TypeError(
            "module must be an Equinox recurrent cell (an eqx.Module called as "
            f"module(x, hidden) -> hidden), got {type(module).__name__}."
        )
    hidden = getattr(module, "hidden_size", None)
    in_size = getattr(module, "input_size", None)
    if initial_state is None and not isinstance(hidden, int):
        raise TypeError(
            f"{type(module).__name__} has no int hidden_size attribute; pass "
            "initial_state=(params, batch_shape) -> h0 to from_equinox."
        )
    for arg, fn in (("initial_state", initial_state), ("output", output)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{arg} must be callable, got {type(fn).__name__}.")
    if output is None:
        output = _first_leaf
    params0, static = eqx.partition(module, eqx.is_inexact_array)
    pair = isinstance(module, eqx.nn.LSTMCell)

    def init(key, input_size, hidden_size):
        _init.check_sizes(input_size, hidden_size)
        for arg, got, have, attr in (
            ("input_size", input_size, in_size, "input_size"),
            ("hidden_size", hidden_size, hidden, "hidden_size"),
        ):
            if isinstance(have, int) and got != have:
                raise ValueError(
                    f"{arg}={got} but the Equinox module has {attr}={have}."
                )
        return params0

    def zeros(params, batch_shape=()):
        dtype = jax.tree_util.tree_leaves(params)[0].dtype
        z = jax.numpy.zeros(tuple(batch_shape) + (hidden,), dtype)
        return (z, z) if pair else z

    def step(params, h, x):
        cell = eqx.combine(params, static)
        fn = cell
        for _ in range(x.ndim - 1):  # one example per call: map the batch dims
            fn = jax.vmap(fn)
        h = fn(x, h)
        return h, output(h)

    state_fn = zeros if initial_state is None else initial_state
    name = f"from_equinox({type(module).__name__})"
    return Cell(
        _keyed(init),
        lambda params, batch_shape=(): state_fn(params, tuple(batch_shape)),
        checked_step(step, name),
        input_size=(lambda p: in_size) if isinstance(in_size, int) else None,
        name=name,
    )


def _first_leaf(state):
    """A state's first leaf (``h`` of ``(h, c)``; the state if an array)."""
    leaves = jax.tree_util.tree_leaves(state)
    if not leaves:
        raise ValueError(
            "the cell's state has no arrays; pass output= to from_equinox."
        )
    return leaves[0]
