"""A stacked built-in cell against its layers run one by one.

For a 2-layer stack of Elman, LSTM, GRU, minGRU or minLSTM, times the jitted
value+grad of
``Σ_t ½·mean((out_t − y_t)²)`` (with random link weights) through
``jbptt.rnn_scan`` of ``cells.stack([layer, layer])`` against two
``rnn_scan`` calls, layer 0 over ``xs`` and layer 1 over its outputs. Both
run jbptt's hand-derived reverse scans; the ratio stacked / one-by-one is the
cost of composing the layers' rules inside one step. A stack of diagonal
cells (minGRU, minLSTM) runs layer by layer itself (``cell.diagonal_layers``);
its ``generic_ms`` column times the same stack on the per-step vjp path it
took before (``diagonal_layers=None``).

Run ``python -m benchmarks.bench_stack --out benchmarks``; ``--quick`` uses
tiny shapes and finishes in seconds.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import jbptt
from jbptt import cells, truncation

SHAPES = [(200, 32, 64, 128)]  # (T, B, I, H)
QUICK_SHAPES = [(12, 2, 3, 4)]
CELLS = {
    "elman": cells.elman,
    "lstm": cells.lstm,
    "gru": cells.gru,
    "min_gru": cells.min_gru,
    "min_lstm": cells.min_lstm,
}


def _loss(outs, ys):
    return jnp.sum(0.5 * jnp.mean((outs - ys) ** 2, axis=(1, 2)))


def _timed(fn, args, repeats: int) -> float:
    """Median wall time (ms) of ``fn(*args)`` after one compiling call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def bench_case(kind: str, shape, repeats: int) -> dict:
    T, B, I, H = shape
    layers = [CELLS[kind](), CELLS[kind]()]
    cell = cells.stack(layers)
    params = cell.init(jax.random.key(0), I, H)
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    ys = jax.random.normal(jax.random.key(2), (T, B, H))
    h0 = cell.initial_state(params, (B,))
    w = truncation.artbp(jax.random.key(3), T, 0.1)

    def stacked(p, h0, w):
        _, outs = jbptt.rnn_scan(cell, p, h0, xs, w)
        return _loss(outs, ys)

    def one_by_one(p, h0, w):
        z = xs
        for layer, p_l, h_l in zip(layers, p, h0, strict=True):
            _, z = jbptt.rnn_scan(layer, p_l, h_l, z, w)
        return _loss(z, ys)

    args = (params, h0, w)
    f_stack = jax.jit(jax.value_and_grad(stacked))
    f_layers = jax.jit(jax.value_and_grad(one_by_one))
    # Same model and link weights: the gradients agree (see tests/test_stack.py).
    (_, g1), (_, g2) = f_stack(*args), f_layers(*args)
    diff = max(
        float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
        for a, b in zip(
            jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2), strict=True
        )
    )
    ms_stack = _timed(f_stack, args, repeats)
    ms_layers = _timed(f_layers, args, repeats)
    ms_generic = None
    if cell.diagonal_layers is not None:  # the path a diagonal stack took before
        generic = cell._replace(diagonal_layers=None)

        def per_step(p, h0, w):
            _, outs = jbptt.rnn_scan(generic, p, h0, xs, w)
            return _loss(outs, ys)

        ms_generic = _timed(jax.jit(jax.value_and_grad(per_step)), args, repeats)
    return {
        "cell": kind,
        "T": T,
        "B": B,
        "I": I,
        "H": H,
        "stacked_ms": ms_stack,
        "one_by_one_ms": ms_layers,
        "ratio": ms_stack / ms_layers,
        "generic_ms": ms_generic,
        "grad_rel_diff": diff,
        "rules": cell.rules is not None,
        "layer_by_layer": cell.diagonal_layers is not None,
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes")
    parser.add_argument("--out", default=None, help="folder for CSV and JSON")
    parser.add_argument("--cells", nargs="+", default=sorted(CELLS), choices=CELLS)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    repeats = args.repeats or (2 if args.quick else 20)
    rows = [bench_case(k, s, repeats) for k in args.cells for s in shapes]
    for r in rows:
        print(
            f"{r['cell']:6s} T={r['T']} B={r['B']} I={r['I']} H={r['H']}: stacked "
            f"{r['stacked_ms']:.2f} ms, one by one {r['one_by_one_ms']:.2f} ms, "
            f"ratio {r['ratio']:.2f} (rules: {r['rules']})"
            + (
                f"; per-step vjp path {r['generic_ms']:.2f} ms"
                if r["generic_ms"] is not None
                else ""
            )
        )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "results_stack.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        config = {
            "quick": args.quick,
            "repeats": repeats,
            "backend": jax.default_backend(),
        }
        (out / "results_stack.json").write_text(
            json.dumps({"config": config, "rows": rows}, indent=2)
        )
    return rows


if __name__ == "__main__":
    main()
