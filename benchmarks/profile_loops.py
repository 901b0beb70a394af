"""What one compiled value+grad is made of: XLA loop bodies and temporaries.

For jbptt's value+grad and the ``jax.value_and_grad`` reference of one cell
and shape, prints

- the ops ("thunks") of every while-loop body in the compiled program, in
  program order (forward scan first). XLA:CPU runs a body of more than 8
  thunks on its concurrent executor, which costs microseconds per step when
  the ops are small; a body of at most 8 runs inline;
- the temporaries XLA allocates for one call and the minor page faults one
  call takes: the temporaries are a fresh mapping on every call, so each
  4 KiB page faults once on first touch.

Run ``python -m benchmarks.profile_loops --cell lstm --shape 1000,8,32,64``.
benchmarks/NOTES.md reads these figures.
"""

from __future__ import annotations

import argparse
import collections
import mmap
import re
import resource
import time

import numpy as np

from benchmarks import bench_grad

# HLO ops that are not kernels of their own at run time.
_FREE = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast"}


def loop_bodies(hlo_text: str) -> list[list[str]]:
    """Op kinds of each while-loop body, in the order the loops appear."""
    comps, name = {}, None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{$", line)
        if header:
            name = header.group(1)
            comps[name] = []
        elif name and re.match(r"^\s+(ROOT )?%", line):
            op = re.search(r"= \S+ ([\w\-]+)\(", line)
            if op and op.group(1) not in _FREE:
                comps[name].append(op.group(1))
    bodies = re.findall(r" while\(.*?body=%([\w.\-]+)", hlo_text)
    return [comps.get(b, []) for b in bodies]


def minor_faults_per_call(call, calls: int = 5) -> float:
    call()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        call()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def page_fault_us(mib: int = 64) -> float:
    """Microseconds per first touch of a fresh 4 KiB page on this machine."""
    best = float("inf")
    for _ in range(3):
        with mmap.mmap(-1, mib * 2**20) as m:
            pages = np.frombuffer(m, dtype=np.uint8)[::4096]
            t0 = time.perf_counter()
            pages[:] = 1  # one write per page: one minor fault each
            best = min(best, time.perf_counter() - t0)
            del pages
    return 1e6 * best / (mib * 256)


def profile(cell_name: str, shape, checkpoint=None) -> dict:
    """Loop bodies, temporaries and page faults of jbptt and the reference."""
    cell, args = bench_grad._problem(cell_name, *shape)
    out = {}
    for label, fn in (
        ("jbptt", bench_grad.jbptt_value_and_grad(cell, checkpoint)),
        ("jax.value_and_grad", bench_grad.ref_value_and_grad(cell)),
    ):
        _, call, exe = bench_grad.compile_call(fn, args)
        out[label] = {
            "loop_bodies": loop_bodies(exe.as_text()),
            "temp_MiB": bench_grad.memory_bytes(exe)["temp"] / 2**20,
            "minor_faults": minor_faults_per_call(call),
        }
    return out


def report(cell_name, shape, result) -> str:
    lines = [f"{cell_name} (T, B, I, H) = {tuple(shape)}"]
    if "page_fault_us" in result:
        lines.append(
            f"  a fresh 4 KiB page costs {result['page_fault_us']:.2f} µs here"
        )
    for label in ("jbptt", "jax.value_and_grad"):
        r = result[label]
        lines.append(
            f"  {label}: temporaries {r['temp_MiB']:.1f} MiB, "
            f"{r['minor_faults']:.0f} minor page faults per call"
        )
        for k, ops in enumerate(r["loop_bodies"]):
            kinds = ", ".join(f"{n} {op}" for op, n in collections.Counter(ops).items())
            lines.append(f"    loop {k + 1}: {len(ops)} thunks ({kinds})")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_loops")
    p.add_argument("--cell", default="lstm", choices=sorted(bench_grad.CELLS))
    p.add_argument("--shape", default="1000,8,32,64", help="T,B,I,H")
    p.add_argument("--checkpoint", default=None, help="'sqrt' or a segment length")
    args = p.parse_args(argv)
    shape = tuple(int(s) for s in args.shape.split(","))
    if len(shape) != 4:
        p.error(f"--shape takes T,B,I,H; got {args.shape!r}")
    ckpt = args.checkpoint
    if ckpt is not None and ckpt != "sqrt":
        ckpt = int(ckpt)
    result = profile(args.cell, shape, ckpt)
    result["page_fault_us"] = page_fault_us()
    print(report(args.cell, shape, result))
    return result


if __name__ == "__main__":
    main()
