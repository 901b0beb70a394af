r"""Diagonal linear recurrences: jbptt's value+grad against autodiff and the floor.

The cells of ``jbptt.cells`` whose update is ``h_t = a_t ⊙ h_{t−1} + b_t``
with ``(a_t, b_t) = gates(θ, x_t)`` (LRU, minGRU, minLSTM), float32, a
per-step MSE on the cell's output, ``L = Σ_t ½·mean((out_t − y_t)²)``. One
process times every column of a row round-robin (one warm-up call each,
median of the repeats, every result blocked on; each timed call follows an
untimed call of the same program, so none pays for its predecessor's
temporaries), so the ratios are measured in one run:

- ``scan``: ``jax.value_and_grad`` of a ``lax.scan`` of ``cell.step``;
- ``assoc``: autodiff through ``jax.lax.associative_scan`` of the pairs
  ``(a_t, b_t)`` (the state is the second component of the running
  composition ``(a, b) ∘ (a', b') = (a a', a' b + b')``, with ``a_1 h_0``
  folded into ``b_1``);
- ``jbptt``: ``jbptt.value_and_grad(cell, loss_fn)``, the library default;
- ``diag_<method>``: ``jbptt.value_and_grad`` with
  ``adjoint=jbptt.DiagonalScan(method=...)`` for each method, where jbptt has
  that strategy;
- ``floor``: the same gates over all steps, readout and loss with the
  recurrence left out (``h_t = b_t``), forward and backward: what any
  exact value+grad of these cells must at least do.

Every column's gradient is compared with ``scan``'s (``*_grad_err``, max
relative difference). Temporaries: XLA's compiled memory analysis
(``temp_size_in_bytes``) of every column and of jbptt's forward alone
(``jbptt.loss``). Sweep: ``jbptt.grads_for_weights`` with K = 8 link-weight
vectors (TBPTT of eight lengths) against one ``value_and_grad`` call with
one of them.

Targets (docs and benchmarks/log/2026-12-07-diagonal.md): on CPU
``jbptt / floor ≤ 1.25``, ``multi / one ≤ 3`` and jbptt's temporaries ≤ 2×
the forward's; on GPU at T ≥ 16 384 the parallel path ≥ 5× ``scan``.

Run ``python -m benchmarks.bench_diagonal --out DIR``; ``--quick`` uses tiny
shapes and finishes in seconds; ``--gpu`` uses the long GPU shapes
(``benchmarks/gpu.sh`` runs it). Writes ``bench_diagonal.json`` (rows,
environment, seeds), ``bench_diagonal_grad.csv``,
``bench_diagonal_sweep.csv`` and ``bench_diagonal.md``, rewritten after
every case so that a run cut short keeps what it measured.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp

import jbptt
from benchmarks.bench_grad import (
    _f,
    _shape_arg,
    _table,
    compile_call,
    environment,
    interleaved,
    jbptt_sum,
    loss_fn,
    max_rel_diff,
    memory_bytes,
    ref_value_and_grad,
)
from experiments import _cli
from jbptt import cells, truncation
from jbptt.runs import run_metadata

SHAPES = [
    (4096, 8, 64, 64),
    (16384, 1, 16, 16),
    (16384, 4, 256, 256),
    (4096, 32, 1, 32),
]
# T >= 16 384, where the parallel path is to beat the sequential scan on GPU.
GPU_SHAPES = [(16384, 1, 16, 16), (16384, 8, 256, 256)]
QUICK_SHAPES = [(32, 2, 3, 4)]
CELLS = {"lru": cells.lru, "min_gru": cells.min_gru, "min_lstm": cells.min_lstm}
METHODS = ("auto", "sequential", "associative", "blocked")
K = 8
SEED = 0
PARTS = ("grad", "sweep")
# The sweep's default shapes leave out (16384, 4, 256, 256): one value+grad
# there takes seconds on a 2-core CPU and K = 8 of them more (--sweep-shapes).
SWEEP_SHAPES = [s for s in SHAPES if s != (16384, 4, 256, 256)]


def problem(name: str, T: int, B: int, I: int, H: int, seed: int = SEED):
    """``(cell, (params, h0, xs, ys))`` in float32; ``ys`` has the output's
    shape (the LRU's output has the input's size, the others the state's)."""
    cell = CELLS[name]()
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    params = cell.init(k1, I, H, dtype=jnp.float32)
    h0 = cell.initial_state(params, (B,))
    xs = jax.random.normal(k2, (T, B, I), jnp.float32)
    out = jax.eval_shape(cell.step, params, h0, xs[0])[1]
    ys = jax.random.normal(k3, (T, *out.shape), jnp.float32)
    return cell, (params, h0, xs, ys)


# ------------------------------------------------------------- variants ---


def _combine(earlier, later):
    """Composition of two steps h ↦ a h + b: first ``earlier``, then ``later``."""
    a1, b1 = earlier
    a2, b2 = later
    return a1 * a2, a2 * b1 + b2


def associative_loss(cell):
    """The forward with the recurrence as ``jax.lax.associative_scan``."""
    gates, readout = cell.diagonal

    def forward(params, h0, xs, ys):
        a, b = gates(params, xs)
        shape = jnp.broadcast_shapes(a.shape, b.shape, xs.shape[:1] + h0.shape)
        a, b = jnp.broadcast_to(a, shape), jnp.broadcast_to(b, shape)
        b = b.at[0].add(a[0] * h0)  # h_1 = a_1 h_0 + b_1
        _, hs = jax.lax.associative_scan(_combine, (a, b))
        outs = readout(params, hs, xs)
        return jbptt_sum(params, outs, ys), hs[-1]

    return forward


def floor_loss(cell):
    """Gates, readout and loss over all steps with ``h_t = b_t``: no recurrence."""
    gates, readout = cell.diagonal

    def forward(params, h0, xs, ys):
        _, b = gates(params, xs)
        hs = jnp.broadcast_to(b, jnp.broadcast_shapes(b.shape, h0.shape))
        outs = readout(params, hs, xs)
        return jbptt_sum(params, outs, ys), hs[-1]

    return forward


def _jbptt(cell, **kw):
    vg = jbptt.value_and_grad(cell, loss_fn, **kw)
    return lambda params, h0, xs, ys: vg(params, h0, xs, ys)


def diagonal_scan_variants(cell) -> dict[str, Callable]:
    """``diag_<method>`` columns, one per ``jbptt.DiagonalScan`` method.

    The rows appear when jbptt has the strategy (``jbptt.DiagonalScan``, the
    fast diagonal reverse pass); without it the table has the other columns.
    """
    if not hasattr(jbptt, "DiagonalScan"):
        return {}
    return {f"diag_{m}": _diagonal_scan(cell, m) for m in METHODS}


def _diagonal_scan(cell, method):
    """value+grad with ``DiagonalScan(method)``; a method refused here (say on
    this backend) raises when compiled, so its column is left out with why."""
    try:
        return _jbptt(cell, adjoint=jbptt.DiagonalScan(method=method))
    except (TypeError, ValueError) as e:
        error = e

        def refused(*args):
            raise error

        return refused


def variants(cell) -> dict[str, Callable]:
    """Every timed column: value+grad functions of ``(params, h0, xs, ys)``."""
    return {
        "scan": ref_value_and_grad(cell),
        "assoc": jax.value_and_grad(associative_loss(cell), has_aux=True),
        "jbptt": _jbptt(cell),
        **diagonal_scan_variants(cell),
        "floor": jax.value_and_grad(floor_loss(cell), has_aux=True),
    }


# ----------------------------------------------------------------- grad ---


def _compile_all(fns, args, notes):
    """Compiles each column; one that fails is left out, its reason noted."""
    compiled = {}
    for k, fn in fns.items():
        try:
            compiled[k] = compile_call(fn, args)
        except Exception as e:  # a strategy refusing a shape must not lose the row
            notes.append(f"{k} skipped: {type(e).__name__}: {e}".splitlines()[0])
    return compiled


def _errors(compiled, args) -> dict:
    """Loss and gradient of each column against ``scan``'s (max relative)."""
    (L_ref, _), g_ref = compiled["scan"][2](*args)
    errs = {}
    for k, (_, _, exe) in compiled.items():
        if k in ("scan", "floor"):
            continue
        (L, _), g = exe(*args)
        errs[f"{k}_loss_err"] = abs(float(L) - float(L_ref)) / abs(float(L_ref))
        errs[f"{k}_grad_err"] = max_rel_diff(g_ref, g)
    return errs


def _forward_temp(cell, args) -> float:
    """Temporaries (MiB) of jbptt's forward alone, ``jbptt.loss``."""
    forward = jbptt.loss(cell, loss_fn)
    _, _, exe = compile_call(lambda p, h, x, y: forward(p, h, x, y), args)
    return memory_bytes(exe)["temp"] / 2**20


def grad_case(name, T, B, I, H, repeats: int) -> dict:
    """One cell and shape: ms, ratios, gradient errors and temporaries."""
    cell, args = problem(name, T, B, I, H)
    notes: list[str] = []
    compiled = _compile_all(variants(cell), args, notes)
    t = interleaved({k: c[1] for k, c in compiled.items()}, repeats, warm_each=True)
    row = dict(cell=name, T=T, B=B, I=I, H=H, repeats=repeats)
    floor, scan = t["floor"]["median"], t["scan"]["median"]
    floor_cpu, scan_cpu = t["floor"]["cpu"], t["scan"]["cpu"]
    for k, c in compiled.items():
        row[f"{k}_ms"] = 1e3 * t[k]["median"]
        row[f"{k}_cpu_ms"] = 1e3 * t[k]["cpu"]
        row[f"{k}_over_floor"] = t[k]["median"] / floor
        row[f"{k}_vs_scan"] = scan / t[k]["median"]  # speed-up over (a)
        # the same in CPU time (fastest repeat), steadier on a loaded machine
        row[f"{k}_cpu_over_floor"] = t[k]["cpu"] / floor_cpu
        row[f"{k}_cpu_vs_scan"] = scan_cpu / t[k]["cpu"]
        row[f"{k}_compile_s"] = c[0]
        row[f"{k}_temp_mib"] = memory_bytes(c[2])["temp"] / 2**20
    row["forward_temp_mib"] = _forward_temp(cell, args)
    row["jbptt_temp_over_forward"] = row["jbptt_temp_mib"] / row["forward_temp_mib"]
    row.update(_errors(compiled, args))
    row["notes"] = "; ".join(notes)
    return row


# ---------------------------------------------------------------- sweep ---


def sweep_weights(T: int, k: int = K) -> jax.Array:
    """``[k, T]`` TBPTT link weights of ``k`` lengths from 1 to about T."""
    return jnp.stack([truncation.tbptt(T, 1 + i * max(1, T // k)) for i in range(k)])


def sweep_case(name, T, B, I, H, repeats: int) -> dict:
    """``grads_for_weights`` with K weight vectors against one call."""
    cell, (params, h0, xs, ys) = problem(name, T, B, I, H)
    ws = sweep_weights(T).astype(jnp.float32)
    one = jbptt.value_and_grad(cell, loss_fn)

    def multi(params, h0, xs, ys, ws):
        return jbptt.grads_for_weights(cell, loss_fn, params, h0, xs, ys, ws)

    c_one = compile_call(one, (params, h0, xs, ys, ws[0]))
    c_multi = compile_call(multi, (params, h0, xs, ys, ws))
    t = interleaved({"one": c_one[1], "multi": c_multi[1]}, repeats, warm_each=True)
    return dict(
        cell=name, T=T, B=B, I=I, H=H, K=K,
        one_ms=1e3 * t["one"]["median"], multi_ms=1e3 * t["multi"]["median"],
        multi_over_one=t["multi"]["median"] / t["one"]["median"],
        multi_over_one_cpu=t["multi"]["cpu"] / t["one"]["cpu"],
        one_temp_mib=memory_bytes(c_one[2])["temp"] / 2**20,
        multi_temp_mib=memory_bytes(c_multi[2])["temp"] / 2**20,
    )  # fmt: skip


# -------------------------------------------------------------- writing ---


def _columns(rows) -> list[str]:
    """The timed columns present, in the table's order."""
    order = ["scan", "assoc", "jbptt", *(f"diag_{m}" for m in METHODS), "floor"]
    return [k for k in order if any(f"{k}_ms" in r for r in rows)]


def _shape_cols():
    return [("cell", "cell"), ("T", "T"), ("B", "B"), ("I", "I"), ("H", "H")]


def _header(env, config) -> list[str]:
    have = "present" if config["diagonal_scan"] else "not in this jbptt"
    return [
        "# Diagonal recurrences: value+grad, sweep, temporaries",
        "",
        f"`{config['command']}` on {env['date_utc']} UTC; backend "
        f"`{env['backend']}`, device {env['device_name']}; {env['machine']}; "
        f"jax {env['jax']}, jbptt {env['jbptt']}. float32, seed {SEED}; median "
        f"of {config['repeats']} runs after one warm-up call, the columns of a "
        "row timed round-robin in one process, each timed call right after an "
        "untimed call of the same program. `jbptt.DiagonalScan`: "
        f"{have}.",
        "",
    ]


def _grad_tables(rows) -> list[str]:
    cols = _columns(rows)
    ms = _table(rows, _shape_cols() + [(k, f"{k}_ms") for k in cols], _f)
    ratio_cols = [
        ("jbptt / floor", "jbptt_over_floor"),
        ("scan / jbptt", "jbptt_vs_scan"),
        ("jbptt / floor (cpu)", "jbptt_cpu_over_floor"),
        ("scan / jbptt (cpu)", "jbptt_cpu_vs_scan"),
    ]
    ratio_cols += [
        (f"{k} / floor", f"{k}_over_floor") for k in cols if k not in ("jbptt", "floor")
    ]
    ratio_cols += [(f"scan / {k}", f"{k}_vs_scan") for k in cols if k[0] in "ad"]
    err_cols = [
        (f"{k} grad err", f"{k}_grad_err") for k in cols if k not in ("scan", "floor")
    ]
    mem_cols = [(f"{k} temp", f"{k}_temp_mib") for k in cols]
    mem_cols += [
        ("forward temp", "forward_temp_mib"),
        ("jbptt / forward", "jbptt_temp_over_forward"),
    ]
    return [
        "## value+grad (ms)", "",
        "`scan`: jax.value_and_grad of a lax.scan of cell.step; `assoc`: autodiff "
        "through jax.lax.associative_scan; `jbptt`: jbptt.value_and_grad (default); "
        "`diag_<method>`: adjoint=jbptt.DiagonalScan(method); `floor`: gates, "
        "readout and loss with h_t = b_t.", "",
        ms, "",
        "## Ratios", "",
        "`/ floor`: time over the floor's (target for jbptt ≤ 1.25 on CPU); "
        "`scan / x`: speed-up of x over autodiff of a lax.scan (> 1 faster; "
        "target for the parallel path ≥ 5 on GPU at T ≥ 16 384). `(cpu)`: the "
        "same ratio in CPU time (fastest repeat, all threads of the process), "
        "hardly moved by other processes on a shared machine.", "",
        _table(rows, _shape_cols() + ratio_cols, _f), "",
        "## Gradients against `scan` (max relative difference, float32)", "",
        _table(rows, _shape_cols() + err_cols, _f), "",
        "## Temporaries (MiB, XLA memory analysis)", "",
        "`forward`: jbptt.loss alone; target jbptt / forward ≤ 2.", "",
        _table(rows, _shape_cols() + mem_cols, _f), "",
    ]  # fmt: skip


def _sweep_table(rows) -> list[str]:
    cols = _shape_cols() + [
        ("one call", "one_ms"), ("K = 8 multi", "multi_ms"),
        ("multi / one", "multi_over_one"), ("multi / one (cpu)", "multi_over_one_cpu"),
        ("one temp MiB", "one_temp_mib"), ("multi temp MiB", "multi_temp_mib"),
    ]  # fmt: skip
    return [
        f"## Sweep: K = {K} link-weight vectors", "",
        "`multi`: jbptt.grads_for_weights with K TBPTT weight vectors (one "
        "forward, K reverse passes) against one jbptt.value_and_grad call; "
        "target ≤ 3×.", "",
        _table(rows, cols, _f), "",
    ]  # fmt: skip


def markdown(result) -> str:
    env, config = result["environment"], result["config"]
    lines = _header(env, config)
    if result["grad"]:
        lines += _grad_tables(_filled(result["grad"]))
        notes = [f"- {r['cell']} {r['T']}: {r['notes']}" for r in result["grad"]]
        lines += [n for n in notes if not n.endswith(": ")]
    if result["sweep"]:
        lines += _sweep_table(result["sweep"])
    return "\n".join(lines) + "\n"


def _filled(rows) -> list[dict]:
    """Rows with every key of any row (NaN where a column was left out)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return [{k: r.get(k, math.nan) for k in keys} for r in rows]


def _write_csv(path: Path, rows) -> None:
    if not rows:
        return
    rows = _filled(rows)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def write(out: Path, result) -> list[Path]:
    """Writes the JSON, the CSVs and the markdown table; returns the paths."""
    paths = [
        out / f"bench_diagonal{s}" for s in (".json", "_grad.csv", "_sweep.csv", ".md")
    ]
    paths[0].write_text(json.dumps(result, indent=1))
    _write_csv(paths[1], result["grad"])
    _write_csv(paths[2], result["sweep"])
    paths[3].write_text(markdown(result))
    return [p for p in paths if p.exists()]


# ----------------------------------------------------------------- main ---


def parse_args(argv=None):
    p = _cli.parser(
        "python -m benchmarks.bench_diagonal",
        "Times value+grad of the diagonal cells (LRU, minGRU, minLSTM): "
        "autodiff of lax.scan and of associative_scan, jbptt's default and "
        "DiagonalScan strategies, against the floor; the K = 8 sweep; "
        "temporaries. Writes bench_diagonal.{json,md} and two CSVs.",
    )
    p.add_argument("--quick", action="store_true", help="tiny shapes, seconds")
    p.add_argument("--gpu", action="store_true", help="the long GPU shapes")
    p.add_argument("--out", default="results", help="output directory")
    p.add_argument("--cells", default=None,
                   help="comma list (None: lru,min_gru,min_lstm; lru,min_gru "
                   "with --quick or --gpu)")  # fmt: skip
    p.add_argument("--shapes", nargs="+", type=_shape_arg, default=None,
                   metavar="T,B,I,H", help="shapes (None: the CPU set; tiny "
                   "with --quick; T >= 16384 with --gpu)")  # fmt: skip
    p.add_argument("--sweep-shapes", nargs="+", type=_shape_arg, default=None,
                   metavar="T,B,I,H",
                   help="shapes of the sweep (None: --shapes, or the CPU set "
                   "without its largest shape)")  # fmt: skip
    p.add_argument("--repeats", type=_cli.positive_int, default=None,
                   help="timed runs per column (None: 5; 2 with --quick)")  # fmt: skip
    p.add_argument("--parts", default=",".join(PARTS), help="comma list of parts")
    return p.parse_args(argv)


def _settings(args) -> dict:
    parts = [s for s in args.parts.split(",") if s]
    if set(parts) - set(PARTS):
        raise ValueError(f"--parts takes {list(PARTS)}; got {parts}.")
    small = args.quick or args.gpu
    names = (args.cells or ("lru,min_gru" if small else ",".join(CELLS))).split(",")
    if set(names) - set(CELLS):
        raise ValueError(f"--cells takes {sorted(CELLS)}; got {names}.")
    default = QUICK_SHAPES if args.quick else GPU_SHAPES if args.gpu else SHAPES
    shapes = [tuple(s) for s in (args.shapes or default)]
    sweep = args.sweep_shapes or args.shapes
    sweep = [tuple(s) for s in sweep or (shapes if small else SWEEP_SHAPES)]
    repeats = args.repeats or (2 if args.quick else 5)
    return dict(parts=parts, cells=names, shapes=shapes, sweep_shapes=sweep,
                repeats=repeats, quick=args.quick, gpu=args.gpu)  # fmt: skip


def _cheap_first(shapes):
    """Shapes by T·B·max(I, H): a run cut short has measured the small ones."""
    return sorted(shapes, key=lambda s: s[0] * s[1] * max(s[2], s[3]))


def main(argv=None) -> dict:
    args = parse_args(argv)
    settings = _settings(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    env["device_name"] = jax.devices()[0].device_kind
    argv = sys.argv[1:] if argv is None else argv
    command = "python -m benchmarks.bench_diagonal " + " ".join(argv)
    config = {**settings, "command": command.strip(), "seed": SEED, "K": K,
              "diagonal_scan": hasattr(jbptt, "DiagonalScan")}  # fmt: skip
    result = {"config": config, "metadata": run_metadata(config, seed=SEED),
              "environment": env, "grad": [], "sweep": []}  # fmt: skip
    t0, written = time.perf_counter(), write(out, result)
    cases = [("grad", grad_case, s) for s in _cheap_first(settings["shapes"])]
    cases += [("sweep", sweep_case, s) for s in _cheap_first(settings["sweep_shapes"])]
    for part, case, shape in cases:
        if part not in settings["parts"]:
            continue
        for name in settings["cells"]:
            print(f"{part} {name} T,B,I,H={shape}", flush=True)
            result[part].append(case(name, *shape, settings["repeats"]))
            result["seconds"] = time.perf_counter() - t0
            written = write(out, result)  # after each case: a cut run keeps it
    print(markdown(result))
    print("wrote:\n" + "\n".join(f"  {p}" for p in written))
    return result


if __name__ == "__main__":
    main()
