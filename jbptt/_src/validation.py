"""Argument checks shared by every public entry point.

Two kinds live here:

* **Static checks** (shapes, dtypes, options) run once per trace, so they
  cost nothing inside ``jit`` and work on tracers.
* **Scalar and value checks** for Python-level arguments (sizes, rates,
  probabilities, keys) and, when an array is concrete, its values (finite,
  ≥ 0). A traced value is never inspected: it is checked where it is used
  (e.g. the divergence policies of training).

Conventions, the same everywhere: NumPy integer and float scalars (and
concrete 0-d integer/float arrays) are accepted where a Python number is;
``bool`` is refused as a number (``True`` is not a size); NaN and ±inf are
refused where they are meaningless. Errors are ``TypeError`` for the wrong
kind of value and ``ValueError`` for a value out of range, each naming the
argument.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jbptt._src.cell import Cell, token_vocab

tree_util = jax.tree_util


# ------------------------------------------------------------- scalars ---


def is_traced(value) -> bool:
    """Whether ``value`` (or a leaf of it) is a tracer: its values are unknown."""
    return any(isinstance(a, jax.core.Tracer) for a in tree_util.tree_leaves(value))


def _scalar(name: str, value, kinds: str, what: str):
    """``value`` as a NumPy scalar of ``kinds`` ("i": integer, "if": number).

    Refuses bools, arrays with a shape, strings and tracers of the wrong kind.
    """
    if isinstance(value, bool | np.bool_):
        raise ValueError(
            f"{name} must be {what}, got {value!r} (a bool is not a number)."
        )
    if isinstance(value, numbers.Integral):
        return np.int64(int(value))
    if isinstance(value, numbers.Real) and "f" in kinds:
        return np.float64(float(value))
    if hasattr(value, "dtype") and hasattr(value, "shape") and not is_traced(value):
        a = np.asarray(value)
        if a.shape == ():
            if np.issubdtype(a.dtype, np.integer):
                return np.int64(a.item())
            if np.issubdtype(a.dtype, np.floating) and "f" in kinds:
                return np.float64(a.item())
    return None


def _kind_error(name: str, value, what: str) -> TypeError:
    got = (
        f"{type(value).__name__} of shape {tuple(np.shape(value))}"
        if hasattr(value, "shape")
        else f"{type(value).__name__} {value!r}"
    )
    return TypeError(f"{name} must be {what}, got {got}.")


def integer(name: str, value, *, minimum: int | None = None, what: str = "") -> int:
    """``value`` as a Python ``int`` (NumPy and 0-d integer arrays accepted).

    Args:
      name: the argument's name, for the message.
      value: the value to check.
      minimum: smallest allowed value, if any.
      what: how the message describes a valid value (default derived from
        ``minimum``), e.g. ``"a positive int (number of steps)"``.

    Raises:
      ValueError: for an int below ``minimum``, a number that is not an
        integer (e.g. ``2.5``) or a bool.
      TypeError: for a string, an array with a shape, or None.

    Examples:
      >>> import numpy as np
      >>> from jbptt._src import validation
      >>> validation.integer("k", np.int64(3), minimum=1)
      3
      >>> validation.integer("k", True, minimum=1)
      Traceback (most recent call last):
      ...
      ValueError: k must be a positive int, got True (a bool is not a number).
    """
    if not what:
        what = {None: "an int", 0: "an int ≥ 0", 1: "a positive int"}.get(
            minimum, f"an int ≥ {minimum}"
        )
    v = _scalar(name, value, "if", what)
    if v is None:
        raise _kind_error(name, value, what)
    if isinstance(v, np.floating):
        raise ValueError(f"{name} must be {what}, got {value!r}.")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be {what}, got {value!r}.")
    return int(v)


def positive_int(name: str, value, what: str = "a positive int") -> int:
    """``integer(name, value, minimum=1)``: sizes, lengths, counts."""
    return integer(name, value, minimum=1, what=what)


def nonnegative_int(name: str, value) -> int:
    """``integer(name, value, minimum=0)``: steps, offsets from a start."""
    return integer(name, value, minimum=0)


def real(
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    what: str = "",
) -> float:
    """``value`` as a finite Python ``float`` within optional bounds.

    NaN and ±inf are always refused (they are meaningless as a rate, a
    probability or a length). ``*_open`` makes a bound strict.

    Examples:
      >>> from jbptt._src import validation
      >>> validation.real("lr", 0.1, low=0.0, low_open=True)
      0.1
      >>> validation.real("lr", float("nan"))
      Traceback (most recent call last):
      ...
      ValueError: lr must be a finite number, got nan.
    """
    if not what:
        lo = "" if low is None else ("> " if low_open else "≥ ") + f"{low:g}"
        hi = "" if high is None else ("< " if high_open else "≤ ") + f"{high:g}"
        what = "a finite number" + (f" {lo}" if lo else "")
        what += (" and " if lo else " ") + hi if hi else ""
    v = _scalar(name, value, "if", what)
    if v is None:
        raise _kind_error(name, value, what)
    v = float(v)
    bad = not math.isfinite(v)
    if low is not None:
        bad |= v <= low if low_open else v < low
    if high is not None:
        bad |= v >= high if high_open else v > high
    if bad:
        raise ValueError(f"{name} must be {what}, got {value!r}.")
    return v


def finite_float(name: str, value) -> float:
    """Any finite number."""
    return real(name, value)


def positive_float(name: str, value, *, allow_none: bool = False) -> float | None:
    """A finite number > 0 (e.g. a learning rate or clip norm); ``None`` if allowed."""
    if value is None and allow_none:
        return None
    what = "a finite number > 0" + (" or None" if allow_none else "")
    return real(name, value, low=0.0, low_open=True, what=what)


def probability(name: str, value) -> float:
    """A cut probability in [0, 1)."""
    return real(
        name, value, low=0.0, high=1.0, high_open=True, what="a probability in [0, 1)"
    )


def prng_key(name: str, key) -> jax.Array:
    """A typed PRNG key from a typed key or a legacy ``uint32[2]`` key.

    Legacy keys (``jax.random.PRNGKey(0)``) are wrapped with
    ``jax.random.wrap_key_data``; batches of keys (``[..., 2]``) too.

    Raises:
      TypeError: for anything that is not a key, naming ``name``.

    Examples:
      >>> import jax
      >>> from jbptt._src import validation
      >>> k = validation.prng_key("key", jax.random.PRNGKey(0))
      >>> jax.dtypes.issubdtype(k.dtype, jax.dtypes.prng_key)
      True
    """
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return key
    if dtype is not None and dtype == jnp.uint32 and np.ndim(key) >= 1:
        try:
            return jax.random.wrap_key_data(key)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"{name} is a uint32 array of shape {tuple(np.shape(key))}, which "
                f"is not raw key data of the default PRNG ({err}); pass "
                "jax.random.key(seed)."
            ) from None
    raise _kind_error(
        name,
        key,
        "a PRNG key (jax.random.key(seed), or a legacy jax.random.PRNGKey(seed))",
    )


def option(name: str, value, options) -> str:
    """``value`` if it is one of ``options``, else the optax-style ValueError."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(
            f"Unknown {name} {value!r}. It needs to be one of {list(options)}."
        )
    return value


# -------------------------------------------------------------- arrays ---


def _shape_dtype(a):
    return tuple(np.shape(a)), jnp.result_type(a)


def check_xs(xs) -> tuple[int, tuple[int, ...]]:
    """Return ``(T, batch_shape)`` of time-major inputs ``xs``."""
    if not hasattr(xs, "shape") or not hasattr(xs, "dtype"):
        raise TypeError(f"xs must be an array, got {type(xs).__name__}.")
    if xs.ndim < 2:
        raise ValueError(
            f"xs must be time-major with shape (T, I) or (T, B, I), got shape "
            f"{tuple(xs.shape)}."
        )
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(
            f"xs must have a floating dtype, got {xs.dtype}; convert it, e.g. "
            "xs.astype(jnp.float32). Integer token ids [T, *batch] are read by a "
            "model with an embedding: jbptt.readout(cell, output_size, "
            "vocab_size=V) takes them as they are."
        )
    if xs.shape[0] == 0:
        raise ValueError("xs has T = 0 time steps; a sequence needs T ≥ 1.")
    return xs.shape[0], tuple(xs.shape[1:-1])


def check_w(w, T: int, dtype):
    """Default link weights to ones; see :func:`link_weights`."""
    if w is None:
        return jnp.ones((T,), dtype)
    return link_weights(w, T, dtype)


def link_weights(w, T: int, dtype, name: str = "w (link weights)") -> jax.Array:
    """Check link weights: shape ``(T,)``, floating, and (when concrete) ≥ 0.

    Lists and NumPy arrays are accepted and converted to ``dtype``. The values
    are inspected only when ``w`` is concrete (not a tracer): NaN, ±inf and
    negative weights are refused, since a link weight scales a gradient by a
    probability ratio and none of those can be one.

    Raises:
      TypeError: ``w`` is not an array of numbers or is not floating.
      ValueError: wrong shape, or a non-finite or negative concrete value
        (the message gives the first bad index).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jbptt._src import validation
      >>> validation.link_weights([1.0, 0.0, 2.0], 3, jnp.float32).dtype
      dtype('float32')
      >>> validation.link_weights(jnp.array([1.0, -1.0]), 2, jnp.float32)
      Traceback (most recent call last):
      ...
      ValueError: w (link weights) must be finite and ≥ 0, got w[1] = -1.0.
    """
    if isinstance(w, list | tuple):
        try:
            w = np.asarray(w)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be an array of shape ({T},): {err}") from None
    if not hasattr(w, "shape") or not hasattr(w, "dtype"):
        raise TypeError(
            f"{name} must be an array of shape ({T},), got {type(w).__name__}."
        )
    shape, w_dtype = _shape_dtype(w)
    if shape != (T,):
        raise ValueError(f"{name} must have shape (T,) = ({T},), got {shape}.")
    if not jnp.issubdtype(w_dtype, jnp.floating):
        raise TypeError(f"{name} must be floating, got {w_dtype}.")
    if not is_traced(w):
        a = np.asarray(w, np.float64)
        bad = ~(np.isfinite(a) & (a >= 0))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{name} must be finite and ≥ 0, got w[{i}] = {a[i]}.")
    return jnp.asarray(w, dtype)


def _float_dtypes(tree):
    return {
        jnp.result_type(a)
        for a in tree_util.tree_leaves(tree)
        if jnp.issubdtype(jnp.result_type(a), jnp.floating)
    }


def check_h0(cell: Cell, params, h0, batch_shape, dtype=None) -> None:
    """``h0`` must be shaped like ``cell.initial_state(params, batch_shape)``,
    with floating leaves in ``dtype`` when given (the compute dtype of ``xs``
    under mixed precision), else in the params' dtype."""
    expected = jax.eval_shape(lambda p: cell.initial_state(p, batch_shape), params)
    if dtype is not None:
        expected = tree_util.tree_map(
            lambda e: (
                jax.ShapeDtypeStruct(e.shape, dtype)
                if jnp.issubdtype(e.dtype, jnp.floating)
                else e
            ),
            expected,
        )
    got = tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(*_shape_dtype(a)), h0)
    if tree_util.tree_structure(expected) != tree_util.tree_structure(got):
        raise ValueError(
            f"h0 does not match the state of {cell.name}: expected a pytree like "
            f"{_describe(expected)}, got {_describe(got)}. Use "
            f"cell.initial_state(params, {batch_shape})."
        )
    leaves = zip(
        tree_util.tree_leaves(expected), tree_util.tree_leaves(got), strict=True
    )
    for e, g in leaves:
        if e.shape != g.shape:
            raise ValueError(
                f"h0 has shape {_describe(got)} but xs has batch shape "
                f"{batch_shape}, so {cell.name} expects {_describe(expected)}."
            )
        if e.dtype != g.dtype:
            raise TypeError(
                f"h0 has dtype {g.dtype} but expected {e.dtype}; h0 and xs share "
                "one floating dtype (the compute dtype)."
            )


def _describe(tree) -> str:
    return str(tree_util.tree_map(lambda a: f"{a.dtype}{list(a.shape)}", tree))


def check_scan_args(cell: Cell, params, h0, xs, w):
    """All checks for ``rnn_scan``; returns ``w`` (ones when ``None``)."""
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a jbptt Cell, got {type(cell).__name__}.")
    _check_token_ids(cell, xs)
    T, batch_shape = check_xs(xs)
    dtypes = _float_dtypes(params)
    if len(dtypes) > 1:
        raise TypeError(f"params mix floating dtypes {sorted(map(str, dtypes))}.")
    # Mixed precision: xs (and h0) may have another floating dtype than the
    # params; it is the compute dtype, the params keep theirs.
    if cell.input_size is not None:
        size = cell.input_size(params)
        if xs.shape[-1] != size:
            raise ValueError(
                f"xs has feature size {xs.shape[-1]} (shape {tuple(xs.shape)}) "
                f"but {cell.name} was initialised with input_size={size}."
            )
    check_h0(cell, params, h0, batch_shape, xs.dtype)
    if cell.input_size is None:
        _check_step_runs(cell, params, h0, xs)
    return check_w(w, T, xs.dtype)


def _check_token_ids(cell: Cell, xs) -> None:
    """Integer ids given to a token model where the float ids are taken."""
    vocab = token_vocab(cell)
    if vocab is None or not hasattr(xs, "dtype"):
        return
    if jnp.issubdtype(xs.dtype, jnp.integer):
        raise TypeError(
            f"xs holds integer token ids (dtype {xs.dtype}) for {cell.name}; "
            "here xs are the float ids [T, *batch, 1]: pass "
            "model.encode(xs). (jbptt.loss, value_and_grad, rnn_scan, "
            "estimators.estimate, an online estimator's estimate and the "
            "trainer take the integer ids as they are.)"
        )


def _check_step_runs(cell: Cell, params, h0, xs) -> None:
    """For cells whose input size is unknown: one abstract step must trace."""
    try:
        new_h, _ = jax.eval_shape(cell.step, params, h0, xs[0])
    except (TypeError, ValueError) as err:
        if getattr(err, "names_the_state", False):
            raise  # the step's own state check (check_step_state) says it all
        raise ValueError(
            f"{cell.name}.step failed on h0 {_describe(h0)} and x_t of shape "
            f"{tuple(xs.shape[1:])} (xs shape {tuple(xs.shape)}); check the "
            f"feature size of xs. Original error: {err}"
        ) from err
    if tree_util.tree_structure(new_h) != tree_util.tree_structure(h0) or any(
        a.shape != b.shape
        for a, b in zip(
            tree_util.tree_leaves(new_h), tree_util.tree_leaves(h0), strict=True
        )
    ):
        raise ValueError(
            f"{cell.name}.step returns a state {_describe(new_h)} that differs "
            f"from h0 {_describe(h0)}; the state must keep its structure."
        )


def check_ys(ys, T: int) -> None:
    """Every leaf of ``ys`` is time-major with length ``T``.

    ``ys`` is a pytree (usually one array ``[T, ...]``); a loss that ignores
    its targets takes an empty tuple ``()``. ``None`` is refused, since it is
    almost always a forgotten argument.
    """
    if ys is None:
        raise TypeError(
            f"ys must be the per-step targets, time-major with length T = {T}, "
            "got None (pass () if the loss ignores its targets)."
        )
    for path, leaf in tree_util.tree_flatten_with_path(ys)[0]:
        if not hasattr(leaf, "shape") and not isinstance(leaf, np.generic):
            raise TypeError(
                f"ys{tree_util.keystr(path)} must be an array (time-major, length "
                f"T = {T}), got {type(leaf).__name__}."
            )
        shape = np.shape(leaf)
        if not shape or shape[0] != T:
            raise ValueError(
                f"ys must be time-major with length T = {T} (the length of xs), "
                f"got a leaf of shape {shape}."
            )


def check_loss(loss_fn, params, out_t, ys) -> None:
    """One abstract call of the per-step loss on step 0; errors name ``ys``.

    ``out_t`` is a ``jax.ShapeDtypeStruct`` pytree of one step's output (e.g.
    from ``jax.eval_shape``). The loss must accept ``ys[0]`` and return a
    scalar; a shape mismatch between targets and outputs is reported here,
    at trace time, instead of deep inside the scan.
    """
    y_0 = tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a)[1:], jnp.result_type(a)), ys
    )
    try:
        value = jax.eval_shape(loss_fn, params, out_t, y_0)
    except (TypeError, ValueError, IndexError, KeyError) as err:
        raise ValueError(
            f"loss_fn failed on one step's outputs {_describe(out_t)} and targets "
            f"ys[t] {_describe(y_0)}; check the shape of ys. Original error: "
            f"{type(err).__name__}: {err}"
        ) from err
    if not hasattr(value, "shape") or value.shape != ():
        raise ValueError(
            f"loss_fn must return a scalar per step, got {_describe(value)} for "
            f"outputs {_describe(out_t)} and targets ys[t] {_describe(y_0)}."
        )


# ------------------------------------------- appended: adapted steps ---


def check_step_state(name: str, h, new_h, *, dtypes: bool = True) -> None:
    """A step's returned state must keep the structure, shapes and (with
    ``dtypes``) dtypes of the state it was given (a scan carries it
    unchanged); static, so it runs once per trace.

    Raises:
      ValueError: another structure or shape, naming the cell and both.
      TypeError: another dtype, naming the cell and both.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jbptt._src import validation
      >>> try:
      ...     validation.check_step_state("cell", jnp.zeros(3), jnp.zeros(4))
      ... except ValueError as err:
      ...     print(str(err)[:61])
      cell.step returns a state float64[4] but was given float64[3]
    """
    same = tree_util.tree_structure(h) == tree_util.tree_structure(new_h)
    pairs = list(
        zip(tree_util.tree_leaves(h), tree_util.tree_leaves(new_h), strict=False)
    )
    err = None
    if not same or any(np.shape(a) != np.shape(b) for a, b in pairs):
        err = ValueError(
            f"{name}.step returns a state {_describe(new_h)} but was given "
            f"{_describe(h)}: the state must keep its structure and shapes "
            "from step to step."
        )
    elif dtypes and any(jnp.result_type(a) != jnp.result_type(b) for a, b in pairs):
        err = TypeError(
            f"{name}.step returns a state {_describe(new_h)} but was given "
            f"{_describe(h)}: the state must keep its dtype from step to step "
            "(e.g. return h_new.astype(h.dtype))."
        )
    if err is not None:
        err.names_the_state = True
        raise err


def sample_count(n, chunk) -> tuple[int, int]:
    """``(n, chunk)`` of an estimator's ``samples``: positive ints (NumPy
    ints accepted), each named in the error."""
    return positive_int("n", n), positive_int("chunk", chunk)
