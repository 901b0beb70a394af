"""Shared helpers for cell initialisation and argument checks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from jbptt._src import validation


def check_sizes(input_size, hidden_size) -> tuple[int, int]:
    """Both sizes as positive Python ints (NumPy integers accepted)."""
    return (
        validation.positive_int("input_size", input_size),
        validation.positive_int("hidden_size", hidden_size),
    )


def check_params(params, names: Sequence[str], cell_name: str):
    """``params`` must be a mapping holding ``names``; returns it.

    A static check (keys only), so it costs nothing under ``jit``; it turns
    the bare ``KeyError`` of a params dict from another cell (or the whole
    params of a readout model) into an error naming the cell and the keys.
    """
    if not isinstance(params, Mapping):
        raise TypeError(
            f"params of {cell_name} must be a dict with keys {list(names)} (as "
            f"returned by cell.init), got {type(params).__name__}."
        )
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(
            f"params of {cell_name} are missing {missing}: expected keys "
            f"{list(names)} (as returned by cell.init), got {sorted(params)}."
        )
    return params


def uniform(key, shape, bound, dtype=None) -> jax.Array:
    """U(-bound, bound), the PyTorch default for recurrent layers."""
    dtype = jnp.dtype(dtype or jnp.result_type(float))
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype, got {dtype}.")
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_style(key, shapes: dict[str, tuple[int, ...]], hidden_size, dtype=None):
    """Every array U(-1/√H, 1/√H), as ``torch.nn.RNN/LSTM/GRU`` initialise."""
    keys = jax.random.split(validation.prng_key("key", key), len(shapes))
    bound = 1.0 / hidden_size**0.5
    return {
        name: uniform(k, shape, bound, dtype)
        for k, (name, shape) in zip(keys, shapes.items(), strict=True)
    }


def zeros_state(hidden_size: int, batch_shape, dtype) -> jax.Array:
    if isinstance(batch_shape, int) or not isinstance(batch_shape, Sequence):
        raise TypeError(
            f"batch_shape must be a tuple of ints, e.g. () or (B,), got "
            f"{batch_shape!r}."
        )
    batch_shape = tuple(
        validation.nonnegative_int(f"batch_shape[{i}]", b)
        for i, b in enumerate(batch_shape)
    )
    return jnp.zeros(tuple(batch_shape) + (hidden_size,), dtype)
