"""The cost of collectives across processes: two ``jax.distributed`` CPU
processes (gloo) against one process with two host devices.

The same work, split over two CPU devices either way; only where the devices
live changes. In one process XLA's collectives are memory copies; across two
processes they go through gloo over the loopback. Timed, each a median of
``--repeats`` calls after a warm-up call:

* ``all-reduce``: the sum of a ``[2, D]`` array split over the two devices
  (one per device), replicated: what a data-parallel gradient pays, for D
  parameters;
* ``value+grad``: ``jbptt.value_and_grad`` of an LSTM with the batch split
  (``sharding.split_batch``): the per-device scans and one all-reduce;
* ``sweep``: ``sweep.make_sweep`` with the rows split over the mesh: the
  reverse scans, then an all-gather of every row's gradient;
* ``online``: ``jbptt.train.train(mesh=...)``, TBPTT(k): one all-reduce per
  segment (tokens per second, higher is better).

Run ``python -m benchmarks.bench_multiprocess`` (``--quick``: tiny shapes);
it starts the processes itself and prints a Markdown table (``--out FILE``
also writes it, with the raw numbers as JSON beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(quick: bool, repeats: int) -> dict:
    """The timings on this process's view of two devices (both set up)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import jbptt
    from jbptt import estimators, sharding, sweep

    mesh = sharding.make_mesh()
    out = {}

    def timed(fn, *args):
        jax.block_until_ready(fn(*args))  # compile and warm up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    replicated = NamedSharding(mesh, P())
    for D in (1_000, 100_000) if quick else (1_000, 100_000, 1_000_000):
        x = sharding.split_batch(jnp.ones((2, D), jnp.float32), mesh)
        fn = jax.jit(lambda a: jnp.sum(a, axis=0), out_shardings=replicated)
        out[f"all-reduce D={D:,}"] = timed(fn, x) * 1e3
    T, B, I, H = (20, 8, 8, 16) if quick else (100, 32, 64, 128)
    model = jbptt.readout(jbptt.cells.lstm(), output_size=I)
    p = model.init(jax.random.key(0), I, H)
    xs = jax.random.normal(jax.random.key(1), (T, B, I), jnp.float32)
    ys = jax.random.normal(jax.random.key(2), (T, B, I), jnp.float32)
    h0 = model.cell.initial_state(p, (B,))
    grad = jax.jit(jbptt.value_and_grad(model.cell, model.loss_fn))
    split = (
        sharding.replicate(p, mesh),
        sharding.split_batch(h0, mesh),
        sharding.split_batch(xs, mesh, axis=1),
        sharding.split_batch(ys, mesh, axis=1),
    )
    out[f"value+grad LSTM T={T} B={B} H={H}"] = timed(grad, *split) * 1e3
    es = [estimators.full(), estimators.tbptt(4), estimators.artbp(0.3)]
    n = 16 if quick else 64
    run = sweep.make_sweep(model.cell, model.loss_fn, es, n, chunk=n // 2, mesh=mesh)
    key = jax.random.key(3)
    label = f"sweep LSTM T={T} B={B} H={H}, {n} samples"
    out[label] = timed(lambda: run(p, h0, xs, ys, key)) * 1e3
    k, T_on = 8, (64 if quick else 1024)
    xs_on = jax.random.normal(jax.random.key(4), (T_on, B, I), jnp.float32)
    ys_on = jax.random.normal(jax.random.key(5), (T_on, B, I), jnp.float32)

    # One optimizer and estimator for every call: a new optax.adam per call
    # compiled the segment program again each time (1.1 s in one process,
    # 3.6 s in two: most of what this row measured before 2026-12-07 15:50).
    opt, est = optax.adam(1e-3), estimators.tbptt(k)

    def online():
        return jbptt.train.train(
            model.cell, model.loss_fn, p, xs_on, ys_on, opt, est, mesh=mesh
        ).params

    seconds = timed(online)
    out[f"online TBPTT({k}) LSTM B={B} H={H}, tokens/s"] = T_on * B / seconds
    return out


def _worker(args) -> None:
    import jax

    if args.process_id is not None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            f"127.0.0.1:{args.port}", num_processes=2, process_id=args.process_id
        )
    else:
        jax.config.update("jax_num_cpu_devices", 2)
    result = measure(args.quick, args.repeats)
    if jax.process_index() == 0:
        print(json.dumps(result), flush=True)
    if jax.process_count() > 1:
        jax.distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(extra: list[list[str]], base: list[str], timeout: int) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [
        subprocess.Popen(
            base + e, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True
        )  # fmt: skip
        for e in extra
    ]
    outs = [proc.communicate(timeout=timeout)[0] for proc in procs]
    for proc in procs:
        if proc.returncode:
            raise SystemExit(f"a worker failed ({proc.args[-4:]}); see its stderr")
    return json.loads(outs[0].strip().splitlines()[-1])


def main(argv=None) -> str:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_multiprocess",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="tiny shapes (seconds)")
    p.add_argument("--repeats", type=int, default=7, help="timed calls per row")
    p.add_argument("--out", default=None, help="write the table to this file")
    p.add_argument("--timeout", type=int, default=600, help="seconds per run")
    p.add_argument("--process-id", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be ≥ 1, got {args.repeats}")
    if args.worker:
        _worker(args)
        return ""
    base = [sys.executable, "-m", "benchmarks.bench_multiprocess", "--worker"]
    base += ["--repeats", str(args.repeats)] + (["--quick"] if args.quick else [])
    one = _run([[]], base, args.timeout)
    port = str(_free_port())
    two = _run(
        [["--process-id", str(i), "--port", port] for i in (0, 1)], base, args.timeout
    )
    lines = [
        "| what | one process, 2 host devices | 2 processes (gloo) | ratio |",
        "|---|---:|---:|---:|",
    ]
    for name in one:
        unit = "" if "tokens/s" in name else " ms"
        lines.append(
            f"| {name} | {one[name]:.4g}{unit} | {two[name]:.4g}{unit} | "
            f"{two[name] / one[name]:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
        with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
            json.dump({"one_process": one, "two_processes": two}, f, indent=1)
    return table


if __name__ == "__main__":
    main()
