"""Data parallel on host devices: one device against the batch split over n.

XLA:CPU runs each per-step product of a scan on one core (benchmarks/NOTES.md,
"Batch over host devices"), so on a CPU a small model leaves cores idle. With
n host devices (``jax.config.update("jax_num_cpu_devices", n)`` before jax
starts) the batch can be split over them (:func:`jbptt.sharding.split_batch`,
``jbptt.train.train(mesh=n)``): each device runs the scans of ``B / n``
streams and XLA sums the gradients. This script times, in one process,

* ``jbptt.value_and_grad`` (jitted) on one device against the same call with
  ``h0``, ``xs`` and ``ys`` split over n devices, round-robin, for each cell
  and shape of the value+grad benchmark; the largest relative difference of
  the results is reported too;
* online TBPTT(k) tokens/s of ``jbptt.train.train`` with ``mesh=None``
  against ``mesh=n``, and the plain-JAX detach loop of
  ``benchmarks.bench_online`` on one device and split the same way.

Run ``python -m benchmarks.bench_devices --out benchmarks`` (2 host devices
by default, ``--devices n``); ``--quick`` runs tiny shapes in seconds. The
device count is set when the script starts, so run it as its own process.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import jax

import jbptt
from benchmarks import bench_grad, bench_online
from jbptt import sharding


def grad_rows(shapes, names, mesh, repeats, progress) -> list[dict]:
    """value+grad on one device against the batch split over ``mesh``."""
    rows = []
    for T, B, I, H in shapes:
        for name in names:
            progress(f"value+grad {name} {(T, B, I, H)}")
            cell, (params, h0, xs, ys) = bench_grad._problem(name, T, B, I, H)
            fn = jbptt.value_and_grad(cell, bench_grad.loss_fn)
            split = (
                sharding.replicate(params, mesh),
                sharding.split_batch(h0, mesh),
                sharding.split_batch(xs, mesh, axis=1),
                sharding.split_batch(ys, mesh, axis=1),
            )
            _, one, exe1 = bench_grad.compile_call(fn, (params, h0, xs, ys))
            _, many, _ = bench_grad.compile_call(fn, split)
            diff = bench_grad.max_rel_diff(exe1(params, h0, xs, ys), many())
            t = bench_grad.interleaved({"one": one, "split": many}, repeats)
            t1, tn = t["one"]["median"], t["split"]["median"]
            rows.append(
                dict(
                    cell=name, T=T, B=B, I=I, H=H, one_ms=1e3 * t1,
                    split_ms=1e3 * tn, speedup=t1 / tn,
                    cpu_ratio=t["one"]["cpu"] / t["split"]["cpu"], max_rel=diff,
                )
            )  # fmt: skip
    return rows


def online_rows(shape, names, ks, mesh, progress) -> list[dict]:
    """TBPTT(k) tokens/s: jbptt's loop and the plain-JAX loop, 1 vs n devices."""
    rows = []
    for name in names:
        for k in ks:
            progress(f"online {name} k={k}")
            row = {"cell": name, "k": k}
            for label, m in (("one", None), ("split", mesh)):
                jb = bench_online.time_jbptt(name, "tbptt", k, *shape, mesh=m)
                jx = bench_online.time_jax_detach(name, k, *shape, mesh=m)
                row[f"jbptt_{label}"] = jb["tokens_per_s"]
                row[f"jax_{label}"] = jx["tokens_per_s"]
            rows.append(row)
    return rows


def table(grad, online, n) -> str:
    lines = [
        f"value+grad, ms: one device against the batch split over {n} "
        "(speed-up > 1: split is faster; CPU-time ratio and the largest "
        "relative difference of the results beside it)",
        "",
        "| cell | T | B | I | H | one device | split | speed-up | CPU one / split "
        "| max rel. diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in grad:
        lines.append(
            f"| {r['cell']} | {r['T']} | {r['B']} | {r['I']} | {r['H']} | "
            f"{r['one_ms']:.3g} | {r['split_ms']:.3g} | {r['speedup']:.2f} | "
            f"{r['cpu_ratio']:.2f} | {r['max_rel']:.1e} |"
        )
    lines += [
        "",
        f"Online TBPTT(k), tokens/s: one device against the batch split over {n}",
        "",
        "| cell | k | jbptt one | jbptt split (×) | plain-JAX one | "
        "plain-JAX split (×) |",
        "|---|---|---|---|---|---|",
    ]
    for r in online:
        lines.append(
            f"| {r['cell']} | {r['k']} | {r['jbptt_one']:,.0f} | "
            f"{r['jbptt_split']:,.0f} ({r['jbptt_split'] / r['jbptt_one']:.2f}×) | "
            f"{r['jax_one']:,.0f} | "
            f"{r['jax_split']:,.0f} ({r['jax_split'] / r['jax_one']:.2f}×) |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_devices",
        description="value+grad and online TBPTT on one host device against "
        "the batch split over n. Writes bench_devices.{json,md}.",
    )
    ap.add_argument("--devices", type=int, default=2, help="host devices n")
    ap.add_argument("--cells", nargs="+", default=list(bench_grad.CELLS))
    ap.add_argument("--ks", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="tiny shapes (seconds)")
    ap.add_argument("--out", default="results", help="output directory")
    args = ap.parse_args(argv)
    jax.config.update("jax_num_cpu_devices", args.devices)
    mesh = sharding.make_mesh(args.devices, name="--devices")
    if args.quick:
        shapes, args.repeats, args.ks = [(20, 4, 3, 8)], 2, [4]
        online_shape = (48, 4, 4, 3, 2)  # T, B, H, I, O
    else:
        shapes = bench_grad.SHAPES
        online_shape = (2048, 32, 128, 32, 8)

    def progress(msg):
        print(msg, flush=True)

    grad = grad_rows(shapes, args.cells, mesh, args.repeats, progress)
    online = online_rows(online_shape, args.cells, args.ks, mesh, progress)
    md = table(grad, online, args.devices)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "config": vars(args),
        "machine": {"platform": platform.platform(), "jax": jax.__version__},
        "grad": grad,
        "online": online,
    }
    (out / "bench_devices.json").write_text(json.dumps(result, indent=1))
    (out / "bench_devices.md").write_text(md + "\n")
    print(md)
    return result


if __name__ == "__main__":
    main()
