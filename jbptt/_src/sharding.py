"""Spread a batch of independent computations over devices.

A sweep evaluates one function (a reverse scan with link weights ``w``) on
many rows: configurations × samples, flattened to one leading axis. This
module maps a function over that axis in chunks of ``chunk`` rows
(``lax.map`` of ``vmap``, to bound memory) and, given a device mesh, splits
the rows over the mesh's devices with ``jax.shard_map``: each device maps
its own contiguous block; everything the function closes over (the shared
forward pass) is replicated. The result is gathered (replicated) before it
leaves the map, so statistics computed from it afterwards run the same
reductions as on one device.

Rows are independent, so the numbers do not depend on the number of
devices, up to the shape of the per-device vmapped batch: with the same
``chunk`` rows per vmapped batch on every device count (``chunk`` divides
the rows per device), each row runs the same compiled arithmetic.

Multi-host: call ``jax.distributed.initialize()`` on every host first; then
``jax.devices()`` lists the devices of all hosts and :func:`make_mesh`
spans them (see docs/scale.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jbptt._src import validation

AXIS = "rows"

if hasattr(jax, "shard_map"):  # jax ≥ 0.6
    _shard_map, _NO_CHECK = jax.shard_map, {"check_vma": False}
else:  # older jax: the experimental module, same semantics
    from jax.experimental.shard_map import shard_map as _shard_map

    _NO_CHECK = {"check_rep": False}


def make_mesh(
    devices: int | Sequence[jax.Device] | None = None, *, name: str = "devices"
) -> Mesh:
    """A 1-D mesh (axis ``"rows"``) over ``devices`` (default: all of them).

    Args:
      devices: ``None`` for ``jax.devices()``, an int ``n`` for the first
        ``n`` of them, or a list of devices.
      name: the argument's name in error messages.

    Examples:
      >>> from jbptt import sharding
      >>> mesh = sharding.make_mesh(1)
      >>> mesh.axis_names, mesh.size
      (('rows',), 1)
    """
    available = jax.devices()
    if devices is None:
        devs = available
    elif isinstance(devices, int | np.integer) and not isinstance(devices, bool):
        devices = int(devices)
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"{name} must be between 1 and the {len(available)} available "
                f"device(s), got {devices}. On CPU, more host devices come from "
                "XLA_FLAGS=--xla_force_host_platform_device_count=N or "
                "jax.config.update('jax_num_cpu_devices', N) before any jax use."
            )
        devs = available[:devices]
    else:
        devs = list(devices)
        if not devs or not all(isinstance(d, jax.Device) for d in devs):
            raise TypeError(
                f"{name} must be None, a positive int or a non-empty list of "
                f"jax devices, got {devices!r}."
            )
    return Mesh(np.array(devs), (AXIS,))


def resolve_mesh(mesh: Mesh | int | Sequence | None) -> Mesh | None:
    """``None`` stays ``None`` (plain single-device map); ints and device lists
    become :func:`make_mesh`; a 1-D :class:`jax.sharding.Mesh` is kept."""
    if mesh is None:
        return None
    if isinstance(mesh, Mesh):
        if len(mesh.axis_names) != 1:
            raise ValueError(
                f"mesh must be 1-D (one axis for the rows), got axes {mesh.axis_names}."
            )
        return mesh
    return make_mesh(mesh, name="mesh")


def _pad_rows(a, pad: int):
    # Padding repeats the first row: real values (no NaN), sliced off after.
    if pad == 0:
        return a
    return jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)])


def _local_map(fn, args, chunk: int):
    """``vmap(fn)`` over the leading axis, ``chunk`` rows at a time."""
    S = jax.tree_util.tree_leaves(args)[0].shape[0]
    chunk = max(1, min(chunk, S))
    pad = (-S) % chunk
    args = jax.tree_util.tree_map(lambda a: _pad_rows(a, pad), args)
    blocks = jax.tree_util.tree_map(
        lambda a: a.reshape((-1, chunk) + a.shape[1:]), args
    )
    out = jax.lax.map(lambda b: jax.vmap(fn)(*b), blocks)
    return jax.tree_util.tree_map(lambda o: o.reshape((-1,) + o.shape[2:])[:S], out)


def map_rows(
    fn: Callable, args: tuple, chunk: int = 64, mesh: Mesh | int | None = None
):
    """``vmap(fn)(*args)`` over the leading axis, chunked, optionally sharded.

    Args:
      fn: function of one row of each of ``args``; it may close over arrays
        (replicated on every device).
      args: tuple of arrays (or pytrees) with the same leading size S.
      chunk: rows per vmapped batch on each device.
      mesh: ``None`` (current device), a device count, a list of devices or
        a 1-D mesh (:func:`make_mesh`). Rows are padded to a multiple of
        the device count (and of ``chunk`` per device) and split in
        contiguous blocks.

    Returns:
      The stacked outputs (leading size S), replicated.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jbptt import sharding
      >>> out = sharding.map_rows(lambda x, y: x @ y, (jnp.ones((10, 3)),
      ...                         jnp.ones((10, 3))), chunk=4, mesh=1)
      >>> out.shape, float(out[0])
      ((10,), 3.0)
    """
    if not isinstance(args, tuple) or not args:
        raise TypeError(f"args must be a non-empty tuple of arrays, got {args!r}.")
    chunk = validation.integer("chunk", chunk, minimum=1, what="an int ≥ 1")
    sizes = {
        np.shape(a)[0] if np.ndim(a) else None for a in jax.tree_util.tree_leaves(args)
    }
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"args must share one leading (row) axis, got leading sizes {sizes}."
        )
    mesh = resolve_mesh(mesh)
    if mesh is None:
        return _local_map(fn, args, chunk)
    S = sizes.pop()
    n_dev = mesh.size
    per_dev = -(-S // n_dev)  # ceil
    pad = per_dev * n_dev - S
    args = jax.tree_util.tree_map(lambda a: _pad_rows(a, pad), args)
    spec = jax.tree_util.tree_map(lambda _: P(AXIS), args)
    mapped = _shard_map(
        lambda *a: _local_map(fn, a, chunk),
        mesh=mesh,
        in_specs=spec,
        out_specs=P(AXIS),
        **_NO_CHECK,
    )
    out = mapped(*args)
    # Gather: later reductions (statistics) then run as on one device.
    out = jax.lax.with_sharding_constraint(
        out, jax.tree_util.tree_map(lambda _: NamedSharding(mesh, P()), out)
    )
    return jax.tree_util.tree_map(lambda o: o[:S], out)


def split_batch(tree, mesh: Mesh | int | Sequence, axis: int = 0, *,
                check_same: bool = True):  # fmt: skip
    """Place ``tree`` with its batch axis split over ``mesh`` (data parallel).

    Leaves with a batch axis ``axis`` are split into contiguous blocks, one
    per device; the other leaves (fewer dimensions, e.g. link weights ``w[T]``
    shared by the batch) are replicated. Under ``jit``, XLA then partitions
    the whole computation along the batch: each device runs the scans on
    its own streams and the parameter gradients are summed across devices
    (an all-reduce XLA inserts), so the results equal the single-device ones
    up to the order of that sum. Whether the split is faster depends on the
    backend and the shapes (docs/performance.md, "Data parallel on host
    devices").

    Args:
      tree: arrays (or a pytree of them), e.g. ``xs [T, B, I]`` (``axis=1``)
        or a state ``h [B, H]`` (``axis=0``).
      mesh: a device count, a list of devices or a 1-D mesh
        (:func:`make_mesh`).
      axis: the batch axis of the leaves that have one.
      check_same: on a mesh spanning several processes, let
        ``jax.device_put`` check that every process passed the same values
        (it gathers each whole array to every process). ``False`` places
        each process's own shards without the check, for a caller that
        checked its data once already (the trainer does, per call, with a
        digest). No effect within one process.

    Raises:
      ValueError: a batched leaf whose batch does not divide evenly over the
        mesh's devices.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jbptt import sharding
      >>> xs = sharding.split_batch(jnp.ones((5, 4, 3)), 1, axis=1)
      >>> xs.shape, len(xs.sharding.device_set)
      ((5, 4, 3), 1)
    """
    mesh = resolve_mesh(mesh)
    axis = validation.integer("axis", axis, minimum=0, what="an int ≥ 0")

    def place(a, spec):
        sharding = NamedSharding(mesh, spec)
        if check_same or sharding.is_fully_addressable or isinstance(a, jax.Array):
            return jax.device_put(a, sharding)
        host = np.asarray(a)  # this process's shards only, unchecked
        return jax.make_array_from_callback(host.shape, sharding, lambda i: host[i])

    def put(a):
        if np.ndim(a) <= axis:
            return place(a, P())
        size = np.shape(a)[axis]
        if size % mesh.size:
            raise ValueError(
                f"mesh: a batch axis of size {size} (axis {axis} of a leaf of "
                f"shape {np.shape(a)}) must divide evenly over the mesh's "
                f"{mesh.size} devices."
            )
        return place(a, P(*([None] * axis), AXIS))

    return jax.tree_util.tree_map(put, tree)


def replicate(tree, mesh: Mesh | int | Sequence):
    """Place every leaf of ``tree`` whole on each device of ``mesh`` (params
    and optimizer state beside a batch placed by :func:`split_batch`).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jbptt import sharding
      >>> p = sharding.replicate({"W": jnp.ones((3, 3))}, 1)
      >>> p["W"].sharding.is_fully_replicated
      True
    """
    return jax.device_put(tree, NamedSharding(resolve_mesh(mesh), P()))
