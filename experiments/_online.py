"""Online training along one long stream, one optax update per truncation.

TEMPORARY: a minimal private loop used by the reproductions until the
library's online training loop (``jbptt.train``) lands; replace its callers
with ``jbptt.train`` then and delete this file.

Link weights ``w`` over the whole stream (from an estimator) define the
segments: a segment starts at every cut (``w[t] = 0``) and at t = 0. Each
segment is run forward from the carried state with the current params, its
losses are backpropagated with the segment's link weights (ARTBP's
``1/(1 − c)`` reweighting included, the link into the carried state cut), the
optimizer updates, and the final state is carried on with its gradient
stopped. Segments are padded to a few bucket lengths (state held and loss
masked on padding) so ARTBP's random lengths compile a bounded number of times.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class OnlineStep(NamedTuple):
    """One segment's record: where it ended and what it measured."""

    t_end: int  # number of steps processed after this segment
    length: int  # segment length (steps backpropagated)
    loss: float  # mean per-step loss on the segment
    grad_norm: float
    seconds: float  # wall-clock so far, training only


def segments(w) -> list[tuple[int, int]]:
    """``(start, stop)`` of the segments cut by link weights ``w`` (cuts at 0)."""
    w = np.asarray(w)
    starts = [0] + [int(t) for t in np.flatnonzero(w == 0) if t > 0]
    stops = starts[1:] + [len(w)]
    return list(zip(starts, stops, strict=True))


def bucket(n: int, sizes=None) -> int:
    """The smallest allowed size ≥ n: ``sizes`` if given, else powers of two ≥ 8."""
    if sizes is not None:
        for s in sorted(sizes):
            if s >= n:
                return s
    return max(8, 2 ** math.ceil(math.log2(n)))


@functools.lru_cache(maxsize=16)
def make_segment_update(cell, loss_fn, optimizer, probe):
    """Jitted update over a group of G same-size segments (a scan over them).

    ``(params, opt_state, h, xs[G,S], ys[G,S], w[G,S], mask[G,S]) ->
    (params, opt_state, h, L[G], |g|[G], probe[G])``.
    """

    def objective(params, h, xs, ys, w, mask):
        def body(h, inp):
            x, y, w_t, m = inp
            # identity forward, backward scaled by the link weight w_t
            h_in = jax.tree_util.tree_map(
                lambda a: a + (w_t - 1) * (a - jax.lax.stop_gradient(a)), h
            )
            h_new, out = cell.step(params, h_in, x)
            h_new = jax.tree_util.tree_map(
                lambda a, b: jnp.where(m > 0, a, b), h_new, h
            )
            return h_new, m * loss_fn(params, out, y)

        h_T, losses = jax.lax.scan(body, h, (xs, ys, w, mask))
        return jnp.sum(losses), h_T

    grad = jax.value_and_grad(objective, has_aux=True)

    def one(carry, seg):
        params, opt_state, h = carry
        (L, h_T), g = grad(params, h, *seg)
        updates, opt_state = optimizer.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
        h_T = jax.lax.stop_gradient(h_T)
        return (params, opt_state, h_T), (L, optax.tree.norm(g), probe(params))

    @jax.jit
    def update(params, opt_state, h, xs, ys, w, mask):
        (params, opt_state, h), (L, gn, pr) = jax.lax.scan(
            one, (params, opt_state, h), (xs, ys, w, mask)
        )
        return params, opt_state, h, L, gn, pr

    return update


def _groups(segs, group, sizes):
    """Consecutive segments of one bucket size, in groups of ``group`` or 1."""
    size = lambda seg: bucket(seg[1] - seg[0], sizes)
    i = 0
    while i < len(segs):
        S = size(segs[i])
        j = i
        while j < len(segs) and j - i < group and size(segs[j]) == S:
            j += 1
        n = j - i if j - i == group else 1
        yield S, segs[i : i + n]
        i += n


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
    group: int = 32,
    sizes=None,
    callback: Callable | None = None,
    progress: bool = False,
):
    """Train online along ``xs``/``ys`` (time-major) with segments cut by ``w``.

    ``probe(params)`` is recorded after every update (e.g. a parameter);
    ``callback(params, records)`` runs after every jitted call (e.g. to
    evaluate); wall-clock in the records excludes the callback's time. Runs
    of ``group`` equal-size segments go through one jitted call (cached per
    ``(cell, loss_fn, optimizer, probe)``: reuse them to share compilations);
    segments are padded to ``sizes`` (e.g. ``[k]`` for TBPTT(k); default
    powers of two ≥ 8).
    The first call of each shape is run once untimed first, so wall-clock
    excludes compilation.

    Returns:
      ``(params, h_T, records, probes)`` with one :class:`OnlineStep` and
      one probe value per segment.
    """
    fdt = np.dtype(jnp.result_type(float))
    xs, ys, w = np.asarray(xs), np.asarray(ys), np.asarray(w, fdt)
    update = make_segment_update(cell, loss_fn, optimizer, probe)
    opt_state = optimizer.init(params)
    h = h0
    records, probes, elapsed = [], [], 0.0
    segs = segments(w)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(xs), desc="steps", mininterval=1.0)
    seen = set()
    for S, grp in _groups(segs, group, sizes):
        cols = [[], [], [], []]
        for start, stop in grp:
            n, pad = stop - start, S - (stop - start)
            sl = slice(start, stop)
            w_seg = w[sl].copy()
            w_seg[0] = 0.0  # the carried state is a constant: no gradient into it
            for c, a in zip(cols, (xs[sl], ys[sl], w_seg), strict=False):
                c.append(np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]))
            cols[3].append(np.r_[np.ones(n), np.zeros(pad)].astype(fdt))
        batch = [np.stack(c) for c in cols]
        if (S, len(grp)) not in seen:  # compile outside the timed region
            seen.add((S, len(grp)))
            jax.block_until_ready(update(params, opt_state, h, *batch))
        t0 = time.perf_counter()
        params, opt_state, h, L, gn, pr = update(params, opt_state, h, *batch)
        L, gn, pr = np.asarray(L), np.asarray(gn), np.asarray(pr)  # blocks
        dt = time.perf_counter() - t0
        for i, (start, stop) in enumerate(grp):
            elapsed += dt / len(grp)
            n = stop - start
            records.append(OnlineStep(stop, n, float(L[i]) / n, float(gn[i]), elapsed))
            probes.append(pr[i])
        if bar is not None:
            bar.update(grp[-1][1] - grp[0][0])
        if callback is not None:
            callback(params, records)
    if bar is not None:
        bar.close()
    return params, h, records, probes
