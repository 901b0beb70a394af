"""A thin driver over :mod:`jbptt.train` for experiments that look inside a run.

``jbptt.train.train`` runs a whole stream and returns per-segment losses.
The reproductions also need, after each segment, a probe of the params (the
learned θ of influence balancing) and periodic held-out evaluation (the
bits per character of the char LM) with training wall-clock that excludes
compilation and evaluation. This driver walks the same segments with the
library's own jitted segment update, :func:`jbptt.train.make_step`, so the
estimator is exactly the library's: one optax update per segment, link
weights inside the segment, the carried state's gradient stopped.
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


def segments(w) -> list[tuple[int, int]]:
    """``(start, stop)`` of the segments cut by link weights ``w``."""
    starts, lengths = jbptt.train.segments(np.asarray(w))
    return [(int(s), int(s + n)) for s, n in zip(starts, lengths, strict=True)]


@functools.lru_cache(maxsize=16)
def _step(cell, loss_fn, optimizer):
    # one jitted update per (cell, loss, optimizer): runs sharing them share
    # compilations
    return jbptt.train.make_step(cell, loss_fn, optimizer)


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
        :func:`jbptt.train.bucket_length`).

    Returns:
      ``(params, h_T, records, probes)``: one :class:`OnlineStep` and one
      probe value per segment.
    """
    fdt = jnp.result_type(float)
    xs = jnp.asarray(xs)
    starts, lengths = jbptt.train.segments(np.asarray(w))
    n_max = int(lengths.max())
    sizes = [jbptt.train.bucket_length(int(n), min_bucket, n_max) for n in lengths]
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
