"""Which segmenting makes ``jbptt.value_and_grad`` fastest, shape by shape.

For each cell and (T, B, I, H), one process times value+grad with every
``adjoint=jbptt.ReverseScan(checkpoint=...)`` setting (all steps stored, segments of S
steps, ⌈√T⌉, and the default) round-robin against each other and ``jax.value_and_grad``
of the same forward, and reads XLA's temporaries from the compiled program. Segmenting
recomputes the forward (about a third more work) but keeps the per-call temporaries
small; on a CPU whose fresh pages fault at a few µs each (benchmarks/NOTES.md,
"Temporaries are fresh pages") that can be the faster trade. The figures behind the
default (docs/design.md, "Performance structure": every step stored, the fastest
measured on every shape) come from this script; rerun it on a new machine before
changing the default.

Run ``python -m benchmarks.bench_segments --out benchmarks``; ``--quick``
runs one tiny shape in seconds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jbptt
from benchmarks.bench_grad import (
    CELLS,
    QUICK_SHAPES,
    SHAPES,
    _problem,
    _shape_arg,
    compile_call,
    environment,
    interleaved,
    loss_fn,
    memory_bytes,
    ref_value_and_grad,
)
from experiments import _cli

SEGMENTS = (None, 16, 32, 64, 128, 256, "sqrt")


def _value_and_grad(cell, **adjoint):
    vg = jbptt.value_and_grad(cell, loss_fn, **adjoint)
    return lambda params, h0, xs, ys: vg(params, h0, xs, ys)


def _label(checkpoint) -> str:
    return "all steps" if checkpoint is None else f"S={checkpoint}"


def case(name, T, B, I, H, repeats: int, segments=SEGMENTS) -> dict:
    """One cell and shape: ms and temporaries of every variant."""
    cell, args = _problem(name, T, B, I, H)
    variants = {"default": _value_and_grad(cell)}
    for s in segments:
        if s is None or s == "sqrt" or s < T:
            variants[_label(s)] = _value_and_grad(
                cell, adjoint=jbptt.ReverseScan(checkpoint=s)
            )
    variants["jax"] = ref_value_and_grad(cell)
    calls, temp = {}, {}
    for k, fn in variants.items():
        _, call, compiled = compile_call(fn, args)
        calls[k], temp[k] = call, memory_bytes(compiled)["temp"] / 2**20
    t = interleaved(calls, repeats)
    base = t["all steps"]["median"]
    return {
        "cell": name, "T": T, "B": B, "I": I, "H": H,
        "variants": {
            k: {
                "ms": 1e3 * t[k]["median"],
                "cpu_ms": 1e3 * t[k]["cpu"],
                "temp_mib": temp[k],
                "speedup_vs_all_steps": base / t[k]["median"],
            }
            for k in calls
        },
    }  # fmt: skip


def markdown(rows, env) -> str:
    present = {k for r in rows for k in r["variants"]}
    order = ["default", *map(_label, SEGMENTS), "jax"]
    keys = [k for k in order if k in present]
    device = env.get("device_kind", env["machine"])
    out = [
        f"Segmenting of `jbptt.value_and_grad`, {device}, {env['date_utc']} "
        "UTC: ms per call (median, one process, all variants of a row "
        "round-robin) and, in brackets, the speed-up over storing all steps "
        "(> 1: faster). `default` is the library default, the same program "
        "as `all steps` today: the spread between those two columns is the "
        "timing noise. `jax`: `jax.value_and_grad` of the same forward. "
        "XLA's temporaries (MiB) in the last columns; — : S ≥ T.",
        "",
        "| cell | T, B, I, H | " + " | ".join(keys)
        + " | temp all steps | temp S=sqrt |",
        "|---|---|" + "---:|" * len(keys) + "---:|---:|",
    ]  # fmt: skip
    for r in rows:
        v = r["variants"]
        cells = [
            f"{v[k]['ms']:.1f} ({v[k]['speedup_vs_all_steps']:.2f}×)" if k in v
            else "—"
            for k in keys
        ]  # fmt: skip
        out.append(
            f"| {r['cell']} | {r['T']}, {r['B']}, {r['I']}, {r['H']} | "
            + " | ".join(cells)
            + f" | {v['all steps']['temp_mib']:.1f} | {v['S=sqrt']['temp_mib']:.1f} |"
        )
    return "\n".join(out) + "\n"


def main(argv=None) -> dict:
    p = _cli.parser(
        "python -m benchmarks.bench_segments",
        "Times jbptt.value_and_grad under every ReverseScan(checkpoint=) segmenting "
        "and the default, against jax.value_and_grad. Writes bench_segments.{json,md}.",
    )
    p.add_argument("--cells", default="elman,lstm,gru", help="comma list of cells")
    p.add_argument(
        "--shapes", nargs="+", type=_shape_arg, default=None, metavar="T,B,I,H",
        help="shapes (None: the CPU set of benchmarks/RESULTS.md)",
    )  # fmt: skip
    p.add_argument("--repeats", type=_cli.positive_int, default=7)
    p.add_argument("--quick", action="store_true", help="one tiny shape, seconds")
    p.add_argument("--out", default="results", help="output directory")
    args = p.parse_args(argv)
    shapes = args.shapes or (QUICK_SHAPES if args.quick else SHAPES)
    repeats = 2 if args.quick else args.repeats
    names = [c for c in args.cells.split(",") if c]
    unknown = sorted(set(names) - set(CELLS))
    if unknown:
        p.error(f"--cells: unknown {unknown}; choose from {sorted(CELLS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env, rows, t0 = environment(), [], time.perf_counter()
    for shape in shapes:
        for name in names:
            print(f"segments {name} T,B,I,H={shape}", flush=True)
            rows.append(case(name, *shape, repeats))
    result = {
        "environment": env,
        "config": {**vars(args), "shapes": [list(s) for s in shapes]},
        "rows": rows,
        "seconds": time.perf_counter() - t0,
    }
    (out / "bench_segments.json").write_text(json.dumps(result, indent=1))
    (out / "bench_segments.md").write_text(markdown(rows, env))
    print(markdown(rows, env))
    print(f"wrote:\n  {out / 'bench_segments.json'}\n  {out / 'bench_segments.md'}")
    return result


if __name__ == "__main__":
    main()
