"""Shared helpers for cell initialisation and argument checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def check_sizes(input_size, hidden_size) -> None:
    """Raise ValueError unless both sizes are positive Python ints."""
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")


def uniform(key, shape, bound, dtype=None) -> jax.Array:
    """U(-bound, bound), the PyTorch default for recurrent layers."""
    dtype = dtype or jnp.result_type(float)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_style(key, shapes: dict[str, tuple[int, ...]], hidden_size, dtype=None):
    """Every array U(-1/√H, 1/√H), as ``torch.nn.RNN/LSTM/GRU`` initialise."""
    keys = jax.random.split(key, len(shapes))
    bound = 1.0 / hidden_size**0.5
    return {
        name: uniform(k, shape, bound, dtype)
        for k, (name, shape) in zip(keys, shapes.items(), strict=True)
    }


def zeros_state(hidden_size: int, batch_shape, dtype) -> jax.Array:
    return jnp.zeros(tuple(batch_shape) + (hidden_size,), dtype)
