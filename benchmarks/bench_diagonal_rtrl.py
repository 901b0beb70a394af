"""Exact diagonal RTRL's online step against a forward step of the same cell.

For the LRU and minGRU at H = I = 256, B = 8, float32 (the defaults), two
jitted ``lax.scan`` loops over the same T steps are timed (best of
``--repeats`` after a compiling call):

* **forward**: the cell's step, its output and the squared loss (an
  inference pass that also reads the loss);
* **rtrl, window w**: ``rtrl(window=w).estimate`` on the same inputs.
  ``w = 1`` is the online step proper (state update, the diagonal
  influence update, the gradient read out and summed, every step); ``w > 1``
  is what an update every ``w`` steps runs (BPTT inside the window, the
  influence read and advanced once per window; the same sums).

The ratio rtrl/forward per step is the figure of merit (target ≤ 3×): the
loops are timed in alternation, and the table gives the ratio of the
best times and the median of the per-round ratios. The
carried memory printed by ``rtrl().cost(problem).state_bytes`` is checked
against the formula ``B·Σ per-unit leaf sizes + B·H·Σ shared leaf sizes``
(times the influence's item size: complex64 for the LRU), written out here
from the cells' params, not from jbptt's layout.

``--layers 2`` times a stack of two such cells (``cells.stack``) and
``forward_mode.layerwise_rtrl``, each layer's exact influence with spatial
backprop between the layers, against the stack's forward step; its formula
is the layers' sum.

Run ``python -m benchmarks.bench_diagonal_rtrl --out benchmarks``;
``--quick`` uses tiny shapes and finishes in seconds. Writes
``bench_diagonal_rtrl.{json,csv,md}``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jbptt import cells, estimators, forward_mode

CELLS = {"lru": lambda: cells.lru(r_min=0.9, r_max=0.999), "min_gru": cells.min_gru}
# the gates' per-unit params (each row feeds its own unit), from the papers
UNIT_PARAMS = {
    "lru": ("nu_log", "theta_log", "gamma_log", "B_re", "B_im"),
    "min_gru": ("W_z", "b_z", "W_h", "b_h"),
}


def _mse(params, out, y):
    return jnp.mean((out - y) ** 2)


def _layers(name, layers: int):
    """The cells of a ``layers``-deep stack (one cell: ``[cell]``)."""
    return [CELLS[name]() for _ in range(layers)]


def _problem(name, T, B, H, I, dtype, layers=1):
    parts = _layers(name, layers)
    cell = parts[0] if layers == 1 else cells.stack(parts)
    params = cell.init(jax.random.key(0), I, H, dtype=dtype)
    h0 = cell.initial_state(params, (B,))
    xs = jax.random.normal(jax.random.key(1), (T, B, I), dtype)
    out = jax.eval_shape(cell.step, params, h0, xs[0])[1]
    ys = jax.random.normal(jax.random.key(2), (T,) + out.shape, dtype)
    return estimators.Problem(cell, _mse, params, h0, xs, ys)


def _paired(fns, args, repeats):
    """Best seconds of each function, timed in alternation (so a loaded
    machine slows all alike), and per function after the first the median
    of the per-round ratios ``fns[i] / fns[0]``."""
    for fn in fns:
        jax.block_until_ready(fn(*args))  # compiles
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            ts.append(time.perf_counter() - t0)
    medians = [
        float(np.median([b / a for a, b in zip(times[0], ts, strict=True)]))
        for ts in times[1:]
    ]
    return [min(ts) for ts in times], medians


def _forward_fn(cell):
    @jax.jit
    def forward(params, h0, xs, ys):
        def body(h, inp):
            x, y = inp
            h, out = cell.step(params, h, x)
            return h, _mse(params, out, y)

        h, losses = jax.lax.scan(body, h0, (xs, ys))
        return jnp.sum(losses), h

    return forward


def formula_bytes(name, problem) -> int:
    """``B·Σ per-unit leaf sizes`` (no shared leaves in these cells) times
    the influence's item size (the state's dtype), summed over a stack's
    layers."""
    B = int(np.prod(problem.xs.shape[1:-1]))
    stacked = isinstance(problem.params, (tuple, list))
    layers = problem.params if stacked else [problem.params]
    states = problem.h0 if stacked else [problem.h0]
    return sum(
        B * sum(p[k].size for k in UNIT_PARAMS[name]) * np.dtype(h.dtype).itemsize
        for p, h in zip(layers, states, strict=True)
    )


def _estimate_fn(est, cell):
    return jax.jit(
        lambda p, h, x, y: est.estimate(jax.random.key(0), cell, _mse, p, h, x, y)
    )


def _estimator(name, layers: int, window: int):
    """``rtrl`` on one cell, ``layerwise_rtrl`` on a stack."""
    if layers == 1:
        return forward_mode.rtrl(window=window)
    return forward_mode.layerwise_rtrl(_layers(name, layers), window=window)


def measure(name, T, B, H, I, dtype, repeats, windows=(1, 64), layers=1) -> list[dict]:
    """One row per window size, all timed in one alternation with the
    forward loop."""
    problem = _problem(name, T, B, H, I, dtype, layers)
    ests = [_estimator(name, layers, w) for w in windows]
    cell, params, h0, xs, ys = (problem[i] for i in (0, 2, 3, 4, 5))
    fns = [_forward_fn(cell)] + [_estimate_fn(est, cell) for est in ests]
    (t_fwd, *t_rtrl), medians = _paired(fns, (params, h0, xs, ys), repeats)
    return [
        {
            "cell": name if layers == 1 else f"{layers}×{name}", "window": w,
            "T": T, "B": B, "H": H, "I": I, "dtype": str(np.dtype(dtype)),
            "forward_us_per_step": 1e6 * t_fwd / T,
            "rtrl_us_per_step": 1e6 * t / T,
            "ratio": t / t_fwd,
            "ratio_median": median,
            "carried_bytes": int(est.cost(problem).state_bytes),
            "formula_bytes": int(formula_bytes(name, problem)),
            "report": est.cost_report(problem),
        }
        for w, est, t, median in zip(windows, ests, t_rtrl, medians, strict=True)
    ]  # fmt: skip


def table(rows) -> str:
    lines = [
        "| cell | window | T | B | H | I | forward (µs/step) | "
        "exact RTRL (µs/step) | ratio (best) | ratio (median) | carried bytes "
        "| formula |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['cell']} | {r['window']} | {r['T']} | {r['B']} | {r['H']} | "
            f"{r['I']} | "
            f"{r['forward_us_per_step']:.1f} | {r['rtrl_us_per_step']:.1f} | "
            f"{r['ratio']:.2f}× | {r['ratio_median']:.2f}× | "
            f"{r['carried_bytes']:,} | {r['formula_bytes']:,} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_diagonal_rtrl",
        description="Exact diagonal RTRL's online step against a forward step "
        "of the same cell (LRU, minGRU), or layer-wise RTRL's on a stack of "
        "them, and the carried memory against the formula. Writes "
        "bench_diagonal_rtrl.{json,csv,md}.",
    )
    ap.add_argument("--T", type=int, default=256, help="steps per timed loop")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--inputs", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=15, help="timed rounds")
    ap.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    ap.add_argument(
        "--windows", type=int, nargs="+", default=[1, 64],
        help="rtrl(window=w) sizes: 1 is the step-by-step online step",
    )  # fmt: skip
    ap.add_argument("--layers", type=int, default=1,
                    help="1: rtrl on one cell; L > 1: layerwise_rtrl on a "
                    "cells.stack of L of them")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="tiny shapes (seconds)")
    ap.add_argument("--out", default="results", help="output directory")
    args = ap.parse_args(argv)
    if args.layers < 1:
        ap.error(f"--layers must be an int ≥ 1, got {args.layers}")
    if args.quick:
        args.T, args.batch, args.hidden, args.inputs, args.repeats = 8, 2, 4, 3, 1
        args.windows = [1, 3]
        if args.layers > 1:  # each layer reads the one below, H wide
            args.inputs = args.hidden
    if args.layers > 1 and args.inputs != args.hidden:
        ap.error(
            f"--layers {args.layers} needs --inputs equal to --hidden (each "
            f"layer of the stack reads the one below), got {args.inputs} and "
            f"{args.hidden}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shape = (args.T, args.batch, args.hidden, args.inputs, jnp.float32)
    rows = []
    for name in args.cells:
        new = measure(name, *shape, args.repeats, tuple(args.windows), args.layers)
        rows += new
        print("\n".join(table(new).splitlines()[2:]), flush=True)
    md = table(rows)
    device = jax.devices()[0]
    result = {
        "config": vars(args),
        "machine": {
            "platform": platform.platform(),
            "jax": jax.__version__,
            "device": f"{device.platform}: {device.device_kind}",
        },
        "rows": rows,
    }
    (out / "bench_diagonal_rtrl.json").write_text(json.dumps(result, indent=1))
    with open(out / "bench_diagonal_rtrl.csv", "w", newline="") as f:
        fields = [k for k in rows[0] if k != "report"]
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (out / "bench_diagonal_rtrl.md").write_text(md + "\n")
    print(md)
    for r in rows:
        print(r["report"])
    return result


if __name__ == "__main__":
    main()
