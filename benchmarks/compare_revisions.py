"""Before/after in one run: bench_grad and bench_online of two source trees,
run alternately on this machine, as ratios of the same case.

Each tree runs its own benchmark code (so each calls its own API) in a fresh
process, in the order base, new, new, base (the second pair only for
bench_grad with ``--abba``), and the table gives new/base for every case:
bench_grad's jbptt time (base_ms / new_ms, above 1 is faster now) and its
speedup over ``jax.value_and_grad``, bench_online's tokens/s (new / base).
bench_online's plain-JAX detach loop is the same program in both trees: its
new/base ratio shows the run's noise.

    python -m benchmarks.compare_revisions --base ../old-checkout --new . \
        --out benchmarks/log

``--quick`` runs tiny shapes (seconds), and only the Elman cell online, for
the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time


def _run(tree: pathlib.Path, module: str, args: list[str], out: pathlib.Path) -> dict:
    """One benchmark run of ``tree``'s own code, its JSON read back."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, "-m", module, *args, "--out", str(out)]
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    name = "results.json" if module.endswith("bench_grad") else "bench_online.json"
    return json.loads((out / name).read_text())


def _grad_rows(result: dict) -> dict:
    return {(r["cell"], r["T"], r["B"], r["I"], r["H"]): r for r in result["grad"]}


def _online_rows(result: dict) -> dict:
    rows = {}
    for r in result["rows"]:
        for est in ("tbptt", "artbp_geometric", "artbp_poly", "jax_detach"):
            if est in r:
                rows[(r["cell"], r["k"], est)] = r[est]["tokens_per_s"]
    return rows


def compare(base, new, grad_args, online_args, abba: bool) -> tuple[list, list]:
    tmp = pathlib.Path(tempfile.mkdtemp())
    order = ["base", "new", "new", "base"] if abba else ["base", "new"]
    trees = {"base": base, "new": new}
    grad = {"base": [], "new": []}
    for i, who in enumerate(order):
        out = tmp / f"grad{i}"
        grad[who].append(
            _grad_rows(_run(trees[who], "benchmarks.bench_grad", grad_args, out))
        )
    online = {}
    for i, who in enumerate(["base", "new"]):
        out = tmp / f"online{i}"
        online[who] = _online_rows(
            _run(trees[who], "benchmarks.bench_online", online_args, out)
        )
    grad_table = []
    for case in grad["base"][0]:
        b = [g[case] for g in grad["base"]]
        n = [g[case] for g in grad["new"]]
        mean = lambda rs, f: sum(r[f] for r in rs) / len(rs)  # noqa: E731
        grad_table.append(
            (case, mean(b, "jbptt_ms") / mean(n, "jbptt_ms"),
             mean(b, "speedup_vs_jax"), mean(n, "speedup_vs_jax"))
        )  # fmt: skip
    online_table = [
        (case, online["base"][case], online["new"][case])
        for case in online["base"]
        if case in online["new"]
    ]
    return grad_table, online_table


def markdown(grad_table, online_table, args) -> str:
    lines = [
        f"# Before/after: {args.base} against {args.new}",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"`python -m benchmarks.compare_revisions {' '.join(sys.argv[1:])}`",
        "",
        "## value_and_grad (bench_grad): jbptt time base/new, speedup over jax",
        "",
        "| cell | T, B, I, H | base/new | vs jax before | vs jax after |",
        "|---|---|---|---|---|",
    ]
    for (cell, *shape), ratio, sb, sn in grad_table:
        dims = ", ".join(map(str, shape))
        lines.append(f"| {cell} | {dims} | {ratio:.2f} | {sb:.2f} | {sn:.2f} |")
    lines += [
        "",
        "## online training (bench_online): tokens/s new/base",
        "",
        "| cell | k | estimator | base tokens/s | new tokens/s | new/base |",
        "|---|---|---|---|---|---|",
    ]
    for (cell, k, est), b, n in online_table:
        lines.append(f"| {cell} | {k} | {est} | {b:,.0f} | {n:,.0f} | {n / b:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the older source tree")
    ap.add_argument("--new", default=".", help="the newer source tree")
    ap.add_argument("--shapes", nargs="+", default=["1000,32,64,128", "1000,8,32,64"])
    ap.add_argument("--T", type=int, default=1024, help="bench_online's stream length")
    ap.add_argument("--abba", action="store_true", help="bench_grad base,new,new,base")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (seconds)")
    ap.add_argument("--out", default="results", help="output directory")
    args = ap.parse_args(argv)
    base, new = pathlib.Path(args.base).resolve(), pathlib.Path(args.new).resolve()
    if args.quick:
        grad_args = ["--quick", "--parts", "grad", "--no-torch"]
        online_args = ["--quick", "--no-torch", "--cells", "elman"]
    else:
        grad_args = [
            "--parts",
            "grad",
            "--no-torch",
            "--repeats",
            "5",
            "--shapes",
            *args.shapes,
        ]
        online_args = ["--no-torch", "--T", str(args.T)]
    grad_table, online_table = compare(base, new, grad_args, online_args, args.abba)
    text = markdown(grad_table, online_table, args)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare_revisions.md").write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
