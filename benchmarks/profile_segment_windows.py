"""Does a truncated configuration gain from skipping its zero-weight links?

A cut (``w_t = 0``) removes one recurrent product from the reverse scan: for
TBPTT(k) that is 1/k of them, and the rest of a step's work (the gate
cotangents, the weight-gradient GEMM) stays. What a cut does offer is
independence: the segments between cuts do not exchange cotangents, so
their reverse scans can run side by side, k steps over a batch ⌈T/k⌉ times
larger instead of T steps in a row. This script times both forms of one
TBPTT(k) gradient with the forward shared, as a sweep computes it
(:func:`jbptt.estimators.gradient_fn`):

* ``full``: one reverse scan over all T steps with the link weights;
* ``segments``: ⌈T/k⌉ windows, one per segment (its losses only), each
  over its k steps (``gradient_fn(problem, span=k)``), vmapped and summed.

Both give the same gradient (the largest relative difference is printed).
benchmarks/NOTES.md ("Sweeps: skipping zero-weight links") reads the
figures. Run ``python -m benchmarks.profile_segment_windows``; ``--quick``
runs a tiny shape.
"""

from __future__ import annotations

import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import bench_grad
from jbptt import estimators, truncation


def segment_windows(w, m, k: int):
    """``m`` split into one loss vector per segment of ``w`` (⌈T/k⌉ rows)."""
    T = w.shape[0]
    segment = jnp.cumsum((w == 0) & (jnp.arange(T) >= 1))
    return m[None] * (segment[None] == jnp.arange(math.ceil(T / k))[:, None])


def compare(cell_name: str, shape, k: int, repeats: int) -> dict:
    T, B, I, H = shape
    cell, (params, h0, xs, ys) = bench_grad._problem(cell_name, T, B, I, H)
    w, m = truncation.tbptt(T, k), jnp.ones(T, xs.dtype)

    def full(params, h0, xs, ys):
        prob = estimators.Problem(cell, bench_grad.loss_fn, params, h0, xs, ys)
        return estimators.gradient_fn(prob)(w, m)

    def segments(params, h0, xs, ys):
        prob = estimators.Problem(cell, bench_grad.loss_fn, params, h0, xs, ys)
        grad = estimators.gradient_fn(prob, span=k)
        parts = jax.vmap(lambda m_j: grad(w, m_j))(segment_windows(w, m, k))
        return jax.tree_util.tree_map(lambda g: g.sum(0), parts)

    args = (params, h0, xs, ys)
    _, run_full, exe_full = bench_grad.compile_call(full, args)
    _, run_seg, exe_seg = bench_grad.compile_call(segments, args)
    diff = bench_grad.max_rel_diff(exe_full(*args), exe_seg(*args))
    t = bench_grad.interleaved({"full": run_full, "segments": run_seg}, repeats)
    return {
        "cell": cell_name, "shape": list(shape), "k": k,
        "full_ms": 1e3 * t["full"]["median"],
        "segments_ms": 1e3 * t["segments"]["median"],
        "speedup": t["full"]["median"] / t["segments"]["median"],
        "max_rel": diff,
    }  # fmt: skip


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.profile_segment_windows")
    ap.add_argument("--cells", nargs="+", default=list(bench_grad.CELLS))
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 8, 32, 125])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="a tiny shape")
    args = ap.parse_args(argv)
    shape = (1000, 32, 64, 128)
    if args.quick:
        shape, args.ks, args.repeats = (12, 2, 3, 4), [1, 4], 1
    rows = []
    for name in args.cells:
        for k in args.ks:
            r = compare(name, shape, k, args.repeats)
            rows.append(r)
            print(
                f"{name} {tuple(shape)} k={k}: full {r['full_ms']:.3g} ms, "
                f"segments {r['segments_ms']:.3g} ms "
                f"(speed-up {r['speedup']:.2f}, max rel diff {r['max_rel']:.1e})",
                flush=True,
            )
    print(f"median speed-up of the segment windows: "
          f"{np.median([r['speedup'] for r in rows]):.2f}")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
