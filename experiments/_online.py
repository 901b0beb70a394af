"""A thin driver over :mod:`jbptt.train` for experiments that look inside a run.

``jbptt.train.train`` runs a whole stream and returns per-segment losses.
The reproductions also need, after each segment, a probe of the params (the
learned θ of influence balancing) and periodic held-out evaluation (the
bits per character of the char LM) with training wall-clock that excludes
compilation and evaluation. This driver walks the same segments with the
library's own jitted segment update, :func:`jbptt.train.make_step`, so the
estimator is exactly the library's: one optax update per segment, link
weights inside the segment, the carried state's gradient stopped.

TRANSITIONAL: until ``jbptt.train`` is on the main branch, a private
fallback with the same signature and semantics (plain ``jax.grad`` through a
masked scan) stands in for ``make_step``, ``segments`` and ``bucket_length``.
Delete the fallback once ``jbptt.train`` is merged.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jbptt


class OnlineStep(NamedTuple):
    """One segment's record: where it ended and what it measured."""

    t_end: int  # number of steps processed after this segment
    length: int  # segment length (steps backpropagated)
    loss: float  # mean per-step loss on the segment
    grad_norm: float
    seconds: float  # training wall-clock so far (no compilation, no callback)


def _fallback_segments(w):
    w = np.asarray(w)
    starts = np.concatenate([[0], np.flatnonzero(w[1:] == 0) + 1]).astype(int)
    return starts, np.diff(np.concatenate([starts, [len(w)]])).astype(int)


def _fallback_bucket_length(n, min_bucket, n_max):
    return int(min(max(min_bucket, 1 << max(0, int(n) - 1).bit_length()), n_max))


def _fallback_make_step(cell, loss_fn, optimizer):
    def step(params, opt_state, h, xs, ys, w, start, n, bucket):
        def cut(a):
            return jax.lax.dynamic_slice_in_dim(a, start, bucket, axis=0)

        xs_s, ys_s, w_s = cut(xs), cut(ys), cut(w)
        w_s = w_s.at[0].set(0.0)  # the carried state is a constant
        real = jnp.arange(bucket) < n

        def seg_loss(params):
            def body(h, inp):
                x, y, w_t, m = inp
                # identity forward, backward scaled by the link weight w_t
                h_in = jax.tree_util.tree_map(
                    lambda a: a + (w_t - 1) * (a - jax.lax.stop_gradient(a)), h
                )
                h_new, out = cell.step(params, h_in, x)
                h_new = jax.tree_util.tree_map(
                    lambda a, b: jnp.where(m, a, b), h_new, h
                )
                return h_new, jnp.where(m, loss_fn(params, out, y), 0.0)

            h_T, losses = jax.lax.scan(body, h, (xs_s, ys_s, w_s, real))
            return jnp.sum(losses), h_T

        (total, h_T), g = jax.value_and_grad(seg_loss, has_aux=True)(params)
        updates, opt_state = optimizer.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
        h_T = jax.lax.stop_gradient(h_T)
        return params, opt_state, h_T, total / n, optax.tree.norm(g)

    return jax.jit(step, static_argnames="bucket")


_LIB = getattr(jbptt, "train", None)
_segments = _LIB.segments if _LIB else _fallback_segments
_bucket_length = _LIB.bucket_length if _LIB else _fallback_bucket_length
_make_step = _LIB.make_step if _LIB else _fallback_make_step


def segments(w) -> list[tuple[int, int]]:
    """``(start, stop)`` of the segments cut by link weights ``w``."""
    starts, lengths = _segments(np.asarray(w))
    return [(int(s), int(s + n)) for s, n in zip(starts, lengths, strict=True)]


@functools.lru_cache(maxsize=16)
def _step(cell, loss_fn, optimizer):
    # one jitted update per (cell, loss, optimizer): runs sharing them share
    # compilations
    return _make_step(cell, loss_fn, optimizer)


def _no_probe(params):
    return 0.0


def train_online(
    cell,
    loss_fn: Callable,
    params,
    optimizer: optax.GradientTransformation,
    h0,
    xs,
    ys,
    w,
    *,
    probe: Callable = _no_probe,
    callback: Callable | None = None,
    min_bucket: int = 8,
    progress: bool = False,
):
    """Train online along ``xs``/``ys`` (time-major), segments cut by ``w``.

    Args:
      probe: ``params -> value`` recorded after every update.
      callback: ``(params, records)`` after every segment (e.g. evaluate);
        its time is not counted as training time.
      min_bucket: smallest static segment length (see
        ``jbptt.train.bucket_length``).

    Returns:
      ``(params, h_T, records, probes)``: one :class:`OnlineStep` and one
      probe value per segment.
    """
    fdt = jnp.result_type(float)
    xs = jnp.asarray(xs)
    starts, lengths = _segments(np.asarray(w))
    n_max = int(lengths.max())
    sizes = [_bucket_length(int(n), min_bucket, n_max) for n in lengths]
    pad = max(sizes)

    def pad_time(a):  # as jbptt.train.train: repeat the last step
        a = jnp.asarray(a)
        return jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)], axis=0)

    xs_p, ys_p, w_p = pad_time(xs), pad_time(ys), pad_time(jnp.asarray(w, fdt))
    step = _step(cell, loss_fn, optimizer)
    opt_state = optimizer.init(params)
    h = h0
    records, probes, elapsed, seen = [], [], 0.0, set()
    it = zip(starts.tolist(), lengths.tolist(), sizes, strict=True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(xs), desc="steps", mininterval=1.0)
    for s, n, b in it:
        args = (params, opt_state, h, xs_p, ys_p, w_p, s, n)
        if b not in seen:  # compile outside the timed region (step is pure)
            seen.add(b)
            jax.block_until_ready(step(*args, bucket=b))
        t0 = time.perf_counter()
        params, opt_state, h, loss, gn = step(*args, bucket=b)
        loss = float(loss)  # waits for the update
        elapsed += time.perf_counter() - t0
        records.append(OnlineStep(s + n, n, loss, float(gn), elapsed))
        probes.append(probe(params))
        if bar is not None:
            bar.update(n)
        if callback is not None:
            callback(params, records)
    if bar is not None:
        bar.close()
    return params, h, records, [np.asarray(p) for p in probes]
