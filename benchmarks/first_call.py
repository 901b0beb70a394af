"""First-call latency of online training: compile counts and the seconds of
the first calls of a fresh model, TBPTT(k) against ARTBP matched to the same
depth (poly tail), LSTM(H), a stream fed in chunked ``Trainer.run`` calls.

Run each configuration in a fresh process (compiled code is per process):

    python -m benchmarks.first_call --estimator tbptt
    python -m benchmarks.first_call --estimator artbp
    python -m benchmarks.first_call --estimator artbp --max-buckets 2
    python -m benchmarks.first_call --estimator artbp --warmup 0
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import optax

import jbptt
from jbptt import cells, estimators


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--estimator", choices=["tbptt", "artbp"], default="artbp")
    ap.add_argument("--k", type=int, default=32, help="depth")
    ap.add_argument("--T", type=int, default=512, help="steps per call")
    ap.add_argument("--chunks", type=int, default=4, help="calls")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--max-buckets", type=int, default=None)
    ap.add_argument("--ahead", action="store_true", help="Buckets(ahead=True)")
    ap.add_argument(
        "--warmup", type=int, default=None, help="Buckets.warmup (default: its own)"
    )
    ap.add_argument("--quick", action="store_true", help="tiny shapes (seconds)")
    ap.add_argument("--out", default="results", help="output directory")
    args = ap.parse_args(argv)
    if args.quick:
        args.T, args.chunks, args.batch, args.hidden, args.k = 32, 2, 2, 4, 4
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    T, B, H, I = args.T, args.batch, args.hidden, 8
    model = jbptt.readout(cells.lstm(), output_size=I)
    params = model.init(jax.random.key(0), I, H)
    xs = jax.random.normal(jax.random.key(1), (args.chunks * T, B, I))
    ys = jnp.roll(xs, 2, axis=0)
    est = (
        estimators.tbptt(args.k)
        if args.estimator == "tbptt"
        else estimators.artbp_matched(args.k, "poly_tail")
    )
    policy = jbptt.train.Buckets(max_buckets=args.max_buckets, ahead=args.ahead)
    if args.warmup is not None:
        policy = policy._replace(warmup=args.warmup)
    tr = jbptt.train.Trainer(model.cell, model.loss_fn, optax.adam(1e-3), est,
                             buckets=policy)  # fmt: skip
    state, rows = tr.init(params, jax.random.key(3)), []
    for c in range(args.chunks):
        sl = slice(c * T, (c + 1) * T)
        t0 = time.perf_counter()
        state, h = tr.run(state, xs[sl], ys[sl], flush=c == args.chunks - 1)
        jax.block_until_ready(state.params)
        rows.append((time.perf_counter() - t0, h.compiles, h.seconds, h.buckets))
    out = {
        "first_call_s": rows[0][0],
        "all_calls_s": sum(r[0] for r in rows),
        "compiles": sum(r[1] for r in rows),
        "train_s": [r[2] for r in rows],
        "buckets": sorted({b for r in rows for b in r[3]}),
    }
    print(args.estimator, out)
    name = f"first_call_{args.estimator}.json"
    pathlib.Path(args.out).mkdir(parents=True, exist_ok=True)
    (pathlib.Path(args.out) / name).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
