"""Memory against recomputation: budget checkpointing beside "sqrt" and none.

For an Elman cell over a long sequence, value+grad with
``adjoint=Budget(M)`` (the optimal store/recompute schedule over blocks of
``unit`` steps, run by ``checkpointing.budget_loss``'s loop interpreter) for
several budgets M, next to ``jbptt.value_and_grad(...,
adjoint=ReverseScan(checkpoint="sqrt"))`` and the uncheckpointed run. For each: forward
steps the schedule runs (first pass included), recomputed steps, XLA's compiled
temporary memory (``jax.jit(f).lower(...).compile().memory_analysis()``), compile and
run time, and the gradient's agreement with the uncheckpointed one.

It also times the host-side planning of the schedule
(``revolve.program``: the closed form and the flattened action arrays, made
once per static T at trace time) for T in ``--plan-T`` and M in
``--plan-M`` (best of three uncached calls), printed and kept under
``"plan"`` in the JSON and in ``results_plan.csv``; ``--plan-only`` skips
the compiled runs.

Run ``python -m benchmarks.bench_memory --out benchmarks``; ``--quick`` uses
a short sequence and finishes in seconds. Writes ``results_memory.csv``,
``results_memory.json``, ``results_plan.csv`` and ``memory.png`` to
``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import time
from pathlib import Path

import jax
import jax.flatten_util
import jax.numpy as jnp

import jbptt
from jbptt import Budget, cells
from jbptt._src.revolve import program


def loss_fn(params, out_t, y_t):
    del params
    return 0.5 * jnp.mean((out_t - y_t) ** 2)


def budget_value_and_grad(cell, budget: Budget):
    """``(params, h0, xs, ys) -> (L, grads)`` by ``jbptt.value_and_grad(...,
    adjoint=budget)``: the schedule as a program of loops
    (``checkpointing.budget_loss``)."""
    vg = jbptt.value_and_grad(cell, loss_fn, adjoint=budget)

    def fn(params, h0, xs, ys):
        (L, _), g = vg(params, h0, xs, ys)
        return L, g

    return fn


def _measure(fn, args, repeats):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    temp = getattr(mem, "temp_size_in_bytes", None) if mem is not None else None
    out = jax.block_until_ready(compiled(*args))  # warm
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return out, compile_s, min(times), temp


def run(T, H, I, unit, budgets, repeats, log):
    cell = cells.elman("tanh")
    params = cell.init(jax.random.key(0), I, H)
    xs = jax.random.normal(jax.random.key(1), (T, 1, I))
    ys = jax.random.normal(jax.random.key(2), (T, 1, H))
    h0 = cell.initial_state(params, (1,))
    args = (params, h0, xs, ys)
    rows, ref = [], None

    def add(variant, M, fwd_steps, out, compile_s, run_s, temp):
        nonlocal ref
        g = jax.flatten_util.ravel_pytree(out[1])[0]
        if ref is None:
            ref = g
        err = float(jnp.max(jnp.abs(g - ref)) / jnp.max(jnp.abs(ref)))
        row = {
            "variant": variant,
            "max_states": M,
            "forward_steps": fwd_steps,
            "recomputed_steps": fwd_steps - T,
            "temp_MB": None if temp is None else temp / 2**20,
            "compile_s": compile_s,
            "run_ms": 1e3 * run_s,
            "grad_rel_err": err,
        }
        rows.append(row)
        log(
            f"{variant:>24}  M={M!s:>6}  steps={fwd_steps:>8}  "
            f"temp={row['temp_MB'] or float('nan'):8.2f} MB  "
            f"compile={compile_s:6.1f} s  run={row['run_ms']:9.1f} ms  err={err:.1e}"
        )

    def plain(params, h0, xs, ys):
        (L, _), g = jbptt.value_and_grad(cell, loss_fn)(params, h0, xs, ys)
        return L, g

    add("none", T, T, *_measure(plain, args, repeats))

    def sqrt(params, h0, xs, ys):
        vg = jbptt.value_and_grad(
            cell, loss_fn, adjoint=jbptt.ReverseScan(checkpoint="sqrt")
        )
        (L, _), g = vg(params, h0, xs, ys)
        return L, g

    S = math.isqrt(T - 1) + 1
    add("sqrt", T // S + 1, 2 * T, *_measure(sqrt, args, repeats))
    for M in budgets:
        fn = budget_value_and_grad(cell, Budget(M, unit))
        steps = program(T, Budget(M, unit)).steps
        add(f"Budget(M, unit={unit})", M, steps, *_measure(fn, args, repeats))
    return rows


def plan_times(Ts, Ms, log, repeats=3):
    """Host-side planning time of ``Budget(M)`` over T steps: the best of
    ``repeats`` uncached :func:`revolve.program` calls, with its size."""
    rows = []
    for T in Ts:
        for M in Ms:
            best = math.inf
            for _ in range(repeats):
                program.cache_clear()
                t0 = time.perf_counter()
                prog = program(T, Budget(M))
                best = min(best, time.perf_counter() - t0)
            row = {
                "T": T,
                "max_states": M,
                "plan_ms": 1e3 * best,
                "actions": len(prog.spine) + 1 + len(prog.kind),
                "recomputed_steps": prog.steps - T,
            }
            rows.append(row)
            log(
                f"plan  T={T:>7}  M={M:>3}  {row['plan_ms']:9.2f} ms  "
                f"actions={row['actions']:>7}  recomputed={row['recomputed_steps']}"
            )
    return rows


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    b = [r for r in rows if r["variant"].startswith("Budget")]
    for a, key, label in (
        (ax[0], "recomputed_steps", "recomputed forward steps"),
        (ax[1], "temp_MB", "XLA temporaries (MB)"),
    ):
        a.plot(
            [r["max_states"] for r in b],
            [r[key] or 0 for r in b],
            "o-",
            label="Budget(M)",
        )
        for r, style in zip(rows[:2], ("k--", "r:"), strict=True):
            a.axhline(
                r[key] or 0, color=style[0], ls=style[1:], label=f"{r['variant']}"
            )
        a.set_xscale("log", base=2)
        a.set_xlabel("budget M (stored block states)")
        a.set_ylabel(label)
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_memory")
    ap.add_argument("--T", type=int, default=10_000)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--input", type=int, default=32)
    ap.add_argument("--unit", type=int, default=100, help="steps per block")
    ap.add_argument("--budgets", type=int, nargs="+", default=[2, 3, 4, 6, 11, 21, 101])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--plan-T", type=int, nargs="+", default=[1_000, 20_000, 100_000])
    ap.add_argument("--plan-M", type=int, nargs="+", default=[2, 8, 16, 64])
    ap.add_argument("--plan-only", action="store_true", help="time the planning only")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="benchmarks")
    a = ap.parse_args(argv)
    if a.quick:
        a.T, a.hidden, a.input, a.unit, a.repeats = 12, 4, 2, 2, 1
        a.budgets = [2, 7]
        a.plan_T, a.plan_M = [1_000], [2, 8]
    if min(a.budgets) < 2:
        raise ValueError(f"--budgets must all be ≥ 2, got {a.budgets}.")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_times(a.plan_T, a.plan_M, print)
    _write_csv(out / "results_plan.csv", plan)
    if a.plan_only:
        return {"plan": plan}
    rows = run(a.T, a.hidden, a.input, a.unit, a.budgets, a.repeats, print)
    config = {
        "T": a.T,
        "hidden": a.hidden,
        "input": a.input,
        "batch": 1,
        "unit": a.unit,
        "cell": "elman",
        "quick": a.quick,
        "dtype": str(jnp.result_type(float)),
        "backend": jax.default_backend(),
        "machine": platform.platform(),
    }
    _write_csv(out / "results_memory.csv", rows)
    result = {"config": config, "rows": rows, "plan": plan}
    (out / "results_memory.json").write_text(json.dumps(result, indent=1))
    plot(rows, out / "memory.png")
    return result


if __name__ == "__main__":
    main()
