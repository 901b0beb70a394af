"""Who this process is in a ``jax.distributed`` job, and process 0's word
for all: what result files and checkpoints need to let process 0 alone
write while every process reads the same rows."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


def group() -> tuple[int, int]:
    """``(index, count)`` of this process in a ``jax.distributed`` job;
    ``(0, 1)`` outside one (without starting JAX's backend)."""
    initialized = getattr(jax.distributed, "is_initialized", None)
    if initialized is None:  # jax before is_initialized
        from jax._src import distributed

        up = distributed.global_state.client is not None
    else:
        up = initialized()
    if not up:
        return 0, 1
    return jax.process_index(), jax.process_count()


def broadcast(obj, is_source: bool, default: Callable[[Any], Any] | None = None):
    """Process 0's ``obj`` (JSON-able, through ``default`` where it is not)
    on every process: a collective, so every process of the job calls it at
    the same point."""
    from jax.experimental import multihost_utils

    data = (
        json.dumps(obj, default=default, allow_nan=True).encode() if is_source else b""
    )
    size = multihost_utils.broadcast_one_to_all(
        np.int32(len(data)), is_source=is_source
    )
    buf = np.zeros(int(size), np.uint8)
    if is_source:
        buf[:] = np.frombuffer(data, np.uint8)
    got = multihost_utils.broadcast_one_to_all(buf, is_source=is_source)
    return json.loads(np.asarray(got, np.uint8).tobytes())


def broadcast_arrays(tree, is_source: bool):
    """Process 0's ``tree`` of arrays on every process, bit for bit, as NumPy
    arrays: every process passes a tree of the same structure, shapes and
    dtypes (the others' values are ignored). The bytes travel as one
    ``uint8`` buffer, so no dtype is cast on the way (float64 with x64 off,
    bools, PRNG key data). A collective, like :func:`broadcast`."""
    from jax.experimental import multihost_utils

    leaves, treedef = jax.tree_util.tree_flatten(tree)
    leaves = [np.ascontiguousarray(a) for a in leaves]  # 0-d: shape (1,)
    shapes = [np.shape(a) for a in jax.tree_util.tree_leaves(tree)]
    parts = [a.reshape(-1).view(np.uint8) for a in leaves]
    buf = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    if buf.size:
        buf = np.asarray(multihost_utils.broadcast_one_to_all(buf, is_source))
    out, at = [], 0
    for a, shape in zip(leaves, shapes, strict=True):
        out.append(
            np.frombuffer(buf[at : at + a.nbytes].tobytes(), a.dtype).reshape(shape)
        )
        at += a.nbytes
    return jax.tree_util.tree_unflatten(treedef, out)


def differing(tree) -> list[int]:
    """The processes whose ``tree`` of host arrays differs from process 0's
    (by a SHA-256 of their bytes, shapes and dtypes), the same list on every
    process: one all-gather of 32 bytes, where ``jax.device_put`` of each
    array onto a mesh spanning the processes gathers the whole array.
    ``[]`` outside a ``jax.distributed`` job. A collective."""
    from jax.experimental import multihost_utils

    if group()[1] == 1:
        return []
    digest = hashlib.sha256()
    for a in jax.tree_util.tree_leaves(tree):
        a = np.ascontiguousarray(a)
        digest.update(f"{a.shape}{a.dtype}".encode())
        digest.update(a.reshape(-1).view(np.uint8).tobytes())
    mine = np.frombuffer(digest.digest(), np.uint8)
    every = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, mine.size)
    return [int(i) for i in np.flatnonzero((every != every[0]).any(axis=1))]
