"""Speed and memory of jbptt's value+grad against its references.

Three parts, all measured in one run so the ratios are comparable:

1. **grad**: jitted value+grad of Elman (tanh), LSTM and GRU at the shapes of
   docs/design.md ("Performance structure") against (a)
   ``jax.value_and_grad`` of the same ``lax.scan`` forward, (b) PyTorch CPU
   ``nn.RNN``/``nn.LSTM``/``nn.GRU`` forward+backward when torch is
   importable, (c) the GEMM-rate limit: the FLOPs of the whole value+grad
   at the rate a jitted matmul of matching shape reaches here.
2. **long**: T = 100 000, H = 256, B = 1 with
   ``adjoint=jbptt.ReverseScan(checkpoint="sqrt")`` against the uncheckpointed run and
   ``jax.checkpoint`` on the reference; peak memory from the compiled memory analysis.
3. **sweep**: a ``vmap`` over K = 8 link-weight vectors against K calls.

Run ``python -m benchmarks.bench_grad --out benchmarks`` (``make bench``);
``--quick`` uses tiny shapes and finishes in seconds. On a GPU
(``benchmarks/gpu.sh``): ``--shapes`` sets GPU-sized shapes, ``--cudnn`` adds
cuDNN's LSTM through ``jax.experimental.rnn`` as a peer of the LSTM rows and
``--torch-device cuda`` times PyTorch on CUDA; a peer that cannot run here is
skipped with the reason printed and recorded.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jbptt
from experiments import _cli  # typed flags shared with the experiments
from jbptt import cells, truncation
from jbptt.runs import run_metadata

SHAPES = [
    (100, 32, 64, 128),
    (1000, 32, 64, 128),
    (1000, 8, 32, 64),
    (200, 64, 128, 512),
]
QUICK_SHAPES = [(20, 4, 3, 8)]
CELLS = {"elman": (cells.elman, 1), "lstm": (cells.lstm, 4), "gru": (cells.gru, 3)}


def loss_fn(params, out_t, y_t):
    """ℓ_t = ½·mean((h_t − y_t)²), the same in every implementation."""
    del params
    return 0.5 * jnp.mean((out_t - y_t) ** 2)


# ----------------------------------------------------------------- timing ---


def _block(tree):
    return jax.tree_util.tree_map(lambda a: a.block_until_ready(), tree)


def max_rel_diff(a, b) -> float:
    """Largest ``max|a − b| / max|a|`` over the leaves of two pytrees."""
    pairs = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    return max(
        float(abs(x - y).max() / max(float(abs(x).max()), 1e-30)) for x, y in pairs
    )


def memory_bytes(compiled) -> dict:
    """Compiled memory analysis: temporaries and the peak (args+out+temp)."""
    m = compiled.memory_analysis()
    if m is None:
        return {"temp": float("nan"), "peak": float("nan")}
    temp = m.temp_size_in_bytes
    peak = m.argument_size_in_bytes + m.output_size_in_bytes + temp
    return {"temp": temp, "peak": peak - m.alias_size_in_bytes}


# ------------------------------------------------------------- references ---


def reference_loss(cell, remat: str | None = None, segment: int | None = None):
    """The same forward as a plain ``lax.scan`` (no link weights).

    ``remat="step"`` wraps each step in ``jax.checkpoint``; ``remat="sqrt"``
    nests an outer scan over segments of ``segment`` steps around a
    checkpointed inner scan (the classic √T remat of the reference).
    """

    def run(params, h0, xs):
        def step(h, x_t):
            return cell.step(params, h, x_t)

        if remat == "step":
            step = jax.checkpoint(step)
        if remat == "sqrt":
            T = xs.shape[0]
            n = T // segment

            @jax.checkpoint
            def seg(h, xs_seg):
                return jax.lax.scan(step, h, xs_seg)

            xs_seg = xs.reshape(n, segment, *xs.shape[1:])
            h_T, outs = jax.lax.scan(seg, h0, xs_seg)
            return h_T, outs.reshape(T, *outs.shape[2:])
        return jax.lax.scan(step, h0, xs)

    def forward(params, h0, xs, ys):
        h_T, outs = run(params, h0, xs)
        return jbptt_sum(params, outs, ys), h_T

    return forward


def jbptt_sum(params, outs, ys):
    return jnp.sum(jax.vmap(loss_fn, in_axes=(None, 0, 0))(params, outs, ys))


def ref_value_and_grad(cell, **kw):
    vg = jax.value_and_grad(reference_loss(cell, **kw), has_aux=True)
    return lambda params, h0, xs, ys: vg(params, h0, xs, ys)


def jbptt_value_and_grad(cell, checkpoint=None):
    kw = {} if checkpoint is None else {"adjoint": jbptt.ReverseScan(checkpoint)}
    vg = jbptt.value_and_grad(cell, loss_fn, **kw)
    return lambda params, h0, xs, ys: vg(params, h0, xs, ys)


def gemm_call(name, T, B, I, H) -> tuple[float, float, Callable[[], object]]:
    """(FLOPs of value+grad, FLOPs of the matmul, a call of the matmul).

    FLOPs: forward 2·T·B·G·H·(I+H); backward 2·T·B·G·H·H for the states and
    2·T·B·G·H·(I+H) for the weight gradients (input gradients are not asked).
    The GEMM limit is these FLOPs at the rate of one jitted matmul
    ``[T·B, I+H] @ [I+H, G·H]``.
    """
    G = CELLS[name][1]
    flops = 2.0 * T * B * G * H * (2 * (I + H) + H)
    key = jax.random.key(0)
    a = jax.random.normal(key, (T * B, I + H), jnp.float32)
    b = jax.random.normal(key, (I + H, G * H), jnp.float32)
    _, call, _ = compile_call(jnp.matmul, (a, b))
    return flops, 2.0 * T * B * (I + H) * G * H, call


def torch_unavailable(device: str = "cpu") -> str | None:
    """Why PyTorch cannot be timed on ``device`` here, or ``None``."""
    try:
        import torch
    except ImportError:
        return "PyTorch skipped: torch is not importable"
    if device == "cuda" and not torch.cuda.is_available():
        return (
            f"PyTorch CUDA skipped: torch.cuda.is_available() is False "
            f"(torch {torch.__version__})"
        )
    return None


def torch_call(name, T, B, I, H, device: str = "cpu") -> Callable[[], object] | None:
    """PyTorch forward+backward on ``device`` as a call, or ``None`` without
    torch (or without CUDA for ``device="cuda"``)."""
    if torch_unavailable(device):
        return None
    import torch

    torch.manual_seed(0)
    module = {"elman": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[name]
    net = module(I, H).to(device)
    xs = torch.randn(T, B, I).to(device)
    ys = torch.randn(T, B, H).to(device)
    # CUDA runs asynchronously: wait for the backward, as _block does for jax.
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None

    def call():
        net.zero_grad()
        outs, _ = net(xs)
        # Σ_t ½·mean_t((h−y)²) = ½·T·mean((h−y)²), same loss as loss_fn.
        loss = 0.5 * ((outs - ys) ** 2).mean(dim=(1, 2)).sum()
        loss.backward()
        sync()

    return call


def cudnn_unavailable() -> str | None:
    """Why cuDNN's LSTM (``jax.experimental.rnn``) cannot run here, or ``None``."""
    try:
        from jax.experimental import rnn  # noqa: F401
    except ImportError as e:
        return f"cuDNN LSTM skipped: jax.experimental.rnn is not importable ({e})"
    if jax.default_backend() != "gpu":
        return (
            f"cuDNN LSTM skipped: the backend is {jax.default_backend()!r}; "
            "jax.experimental.rnn runs on CUDA GPUs only"
        )
    return None


def cudnn_weights(params) -> jax.Array:
    """jbptt LSTM params as the flat weights of ``jax.experimental.rnn.lstm``.

    cuDNN's layout for one unidirectional layer is (W_ih, W_hh, b_ih, b_hh),
    each with gates i, f, g, o on the leading axis: PyTorch's order, which is
    also jbptt's, so the params convert by concatenation.
    """
    keys = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    return jnp.concatenate([params[k].ravel() for k in keys])


def cudnn_value_and_grad(params, T, B, I, H, lstm=None):
    """value+grad of the same loss with cuDNN's LSTM, in jbptt's params.

    Batch-major, zero initial state; the gradient is taken with respect to
    the flat weights. ``lstm`` defaults to ``jax.experimental.rnn.lstm``
    (tests pass one with its signature that runs on CPU). Returns ``(fn,
    weights)``, ``fn(weights, xs, ys)`` with time-major ``xs``, ``ys`` like
    the other variants.
    """
    if lstm is None:
        from jax.experimental.rnn import lstm
    weights = cudnn_weights(params)
    zeros = jnp.zeros((1, B, H), weights.dtype)
    seq_lengths = jnp.full((B,), T, jnp.int32)

    def loss(w, xs, ys):
        y, _, _ = lstm(
            jnp.swapaxes(xs, 0, 1), zeros, zeros, w, seq_lengths,
            input_size=I, hidden_size=H, num_layers=1, dropout=0.0,
            bidirectional=False,
        )  # fmt: skip
        # [B, T, H]: Σ_t ½·mean_{b,h}((h−y)²), the same loss as loss_fn
        return 0.5 * jnp.sum(jnp.mean((y - jnp.swapaxes(ys, 0, 1)) ** 2, (0, 2)))

    return jax.value_and_grad(loss), weights


def compile_call(fn: Callable, args) -> tuple[float, Callable[[], object], object]:
    """(compile seconds, a blocking call, the compiled executable)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    return compile_s, lambda: _block(compiled(*args)), compiled


def interleaved(
    calls: dict[str, Callable[[], object]], repeats: int, warm_each: bool = False
) -> dict:
    """Wall-clock median/min and CPU-time min of each call, timed round-robin.

    One warm-up call each, then ``repeats`` rounds that run every call once:
    all variants see the same background load (the machine is shared), so
    the ratios between them are steadier than separately timed medians. The
    CPU time (``time.process_time``, all threads of this process) is hardly
    affected by other processes; it counts threads that spin while waiting.
    ``warm_each``: an untimed call of the same program before each timed one,
    so that no call pays for the memory its predecessor in the round left
    (on XLA:CPU a call after one with large temporaries measured up to 30 %
    slower than after itself: benchmarks/log/2026-12-07-diagonal-rtrl-windows.md,
    section 8); a training loop runs one program over and over.
    """
    for call in calls.values():
        call()
    wall = {k: [] for k in calls}
    cpu = {k: [] for k in calls}
    for _ in range(repeats):
        for k, call in calls.items():
            if warm_each:
                call()
            c0, t0 = time.process_time(), time.perf_counter()
            call()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return {
        k: {
            "median": statistics.median(wall[k]),
            "min": min(wall[k]),
            "cpu": min(cpu[k]),
        }
        for k in calls
    }


# ------------------------------------------------------------------ parts ---


def _problem(name, T, B, I, H, dtype=jnp.float32, seed=0):
    cell = CELLS[name][0]()
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    params = cell.init(k1, I, H, dtype=dtype)
    batch = (B,) if B else ()
    h0 = cell.initial_state(params, batch)
    xs = jax.random.normal(k2, (T, *batch, I), dtype)
    ys = jax.random.normal(k3, (T, *batch, H), dtype)
    return cell, (params, h0, xs, ys)


def bench_grad(
    shapes,
    names,
    repeats,
    use_torch,
    progress,
    processes: int = 1,
    cudnn: bool = False,
    torch_device: str = "cpu",
) -> list[dict]:
    """Rows of the grad part; with ``processes > 1`` each case is timed in that
    many fresh processes and every figure is the median over them.

    The XLA CPU runtime's speed differs between processes of the same
    program (thread placement, allocation), by up to ~1.5x for the
    reference here, while round-robin ratios within one process are steady:
    the median over processes of the within-process figures is what is
    reported, with the range of the `vs jax` ratio across processes.
    """
    rows = []
    for T, B, I, H in shapes:
        for name in names:
            progress(f"grad {name} T={T} B={B} I={I} H={H}")
            peers = {"cudnn": cudnn, "torch_device": torch_device}
            if processes <= 1:
                rows.append(grad_case(name, T, B, I, H, repeats, use_torch, **peers))
                continue
            runs = [
                _case_in_subprocess(name, (T, B, I, H), repeats, use_torch, **peers)
                for _ in range(processes)
            ]
            rows.append(_median_row(runs))
    return rows


def _case_in_subprocess(
    name, shape, repeats, use_torch, cudnn=False, torch_device="cpu"
) -> dict:
    case = f"{name}:{','.join(map(str, shape))}"
    cmd = [sys.executable, "-m", "benchmarks.bench_grad", "--case", case,
           "--repeats", str(repeats)]  # fmt: skip
    if not use_torch:
        cmd.append("--no-torch")
    if cudnn:
        cmd.append("--cudnn")
    if torch_device != "cpu":
        cmd += ["--torch-device", torch_device]
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    if done.returncode:
        raise RuntimeError(f"benchmark case {name} {shape} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median_row(runs: list[dict]) -> dict:
    row = {}
    for k, v in runs[0].items():
        vals = [r[k] for r in runs]
        num = isinstance(v, float) and not any(math.isnan(x) for x in vals)
        row[k] = statistics.median(vals) if num else v
    ratios = [r["speedup_vs_jax"] for r in runs]
    row["processes"] = len(runs)
    row["speedup_vs_jax_range"] = f"{min(ratios):.2f}–{max(ratios):.2f}"
    return row


def grad_case(
    name, T, B, I, H, repeats, use_torch, cudnn=False, torch_device="cpu"
) -> dict:
    """One case of the grad part, timed round-robin in this process.

    With ``cudnn``, the row also has ``cudnn_ms``, ``speedup_vs_cudnn`` and
    ``cudnn_loss_rel_diff`` (|L_cuDNN − L_jbptt| / |L_jbptt|, which shows the
    weights were converted right); NaN where cuDNN cannot run or the cell is
    not an LSTM.
    """
    cell, args = _problem(name, T, B, I, H)
    c_j, jb, jb_exe = compile_call(jbptt_value_and_grad(cell), args)
    c_r, ref, _ = compile_call(ref_value_and_grad(cell), args)
    flops, mm_flops, mm = gemm_call(name, T, B, I, H)
    calls = {"jbptt": jb, "jax": ref, "gemm": mm}
    nan = {"median": math.nan, "min": math.nan, "cpu": math.nan}
    extra = {}
    if cudnn and name == "lstm" and cudnn_unavailable() is None:
        try:
            fn, weights = cudnn_value_and_grad(args[0], T, B, I, H)
            cu_args = (weights, args[2], args[3])
            _, cu_call, cu_exe = compile_call(fn, cu_args)
            L_cu = float(cu_exe(*cu_args)[0])
        except Exception as e:  # a peer's failure must not lose jbptt's row
            print(f"cuDNN LSTM failed at {(T, B, I, H)}: {type(e).__name__}: {e}")
        else:
            calls["cudnn"] = cu_call
            L_jb = float(jb_exe(*args)[0][0])
            extra["cudnn_loss_rel_diff"] = abs(L_cu - L_jb) / abs(L_jb)
    t = interleaved(calls, repeats)
    if cudnn:
        t_c = t.get("cudnn", nan)
        extra = {
            "cudnn_ms": 1e3 * t_c["median"],
            "speedup_vs_cudnn": t_c["median"] / t["jbptt"]["median"],
            "cudnn_loss_rel_diff": extra.get("cudnn_loss_rel_diff", math.nan),
        }
    # PyTorch last and on its own: its OpenMP threads spin for a while after
    # each call and would steal the second core from whatever ran next.
    tc = torch_call(name, T, B, I, H, torch_device) if use_torch else None
    try:
        t_t = interleaved({"torch": tc}, repeats)["torch"] if tc else nan
    except RuntimeError as e:  # CUDA errors (e.g. out of memory) on the GPU
        if torch_device == "cpu":
            raise
        print(f"PyTorch CUDA failed at {(T, B, I, H)}: {e}")
        t_t = nan
    rate = mm_flops / t["gemm"]["min"]  # the best matmul rate seen
    t_g = flops / rate
    t_g_cpu = flops * t["gemm"]["cpu"] / mm_flops  # same, in CPU time
    t_j, t_r = t["jbptt"], t["jax"]
    return dict(
        cell=name, T=T, B=B, I=I, H=H,
        jbptt_ms=1e3 * t_j["median"], jax_ms=1e3 * t_r["median"],
        torch_ms=1e3 * t_t["median"], gemm_limit_ms=1e3 * t_g,
        gemm_gflops=rate / 1e9,
        jbptt_compile_s=c_j, jax_compile_s=c_r,
        speedup_vs_jax=t_r["median"] / t_j["median"],
        speedup_vs_torch=t_t["median"] / t_j["median"],
        over_gemm_limit=t_j["median"] / t_g,
        jbptt_min_ms=1e3 * t_j["min"], jax_min_ms=1e3 * t_r["min"],
        torch_min_ms=1e3 * t_t["min"],
        speedup_vs_jax_min=t_r["min"] / t_j["min"],
        speedup_vs_torch_min=t_t["min"] / t_j["min"],
        over_gemm_limit_min=t_j["min"] / t_g,
        jbptt_cpu_ms=1e3 * t_j["cpu"], jax_cpu_ms=1e3 * t_r["cpu"],
        torch_cpu_ms=1e3 * t_t["cpu"], gemm_limit_cpu_ms=1e3 * t_g_cpu,
        speedup_vs_jax_cpu=t_r["cpu"] / t_j["cpu"],
        speedup_vs_torch_cpu=t_t["cpu"] / t_j["cpu"],
        over_gemm_limit_cpu=t_j["cpu"] / t_g_cpu,
        **extra,
    )  # fmt: skip


# --long-variants keys of the long part's variants, in their order.
LONG_VARIANTS = ("jbptt", "jbptt-sqrt", "jax", "jax-step", "jax-sqrt")


def bench_long(
    T, H, B, I, repeats, progress, cell_names=("elman", "lstm"), variants=None
) -> list[dict]:
    """Rows of the long part; ``variants`` is a subset of :data:`LONG_VARIANTS`
    (default all)."""
    keep = LONG_VARIANTS if variants is None else tuple(variants)
    rows = []
    seg = int(round(math.sqrt(T)))
    T_ref = (T // seg) * seg  # the reference's √T remat needs whole segments
    for name in cell_names:
        cell, args = _problem(name, T, B, I, H)
        all_variants = [
            ("jbptt", jbptt_value_and_grad(cell), args),
            ("jbptt checkpoint='sqrt'", jbptt_value_and_grad(cell, "sqrt"), args),
            ("jax.value_and_grad", ref_value_and_grad(cell), args),
            ("jax + checkpoint per step", ref_value_and_grad(cell, remat="step"), args),
            (
                "jax + checkpoint √T segments",
                ref_value_and_grad(cell, remat="sqrt", segment=seg),
                _problem(name, T_ref, B, I, H)[1] if "jax-sqrt" in keep else args,
            ),
        ]
        variants_ = [
            v for k, v in zip(LONG_VARIANTS, all_variants, strict=True) if k in keep
        ]
        calls, compiled = {}, {}
        for label, fn, a in variants_:
            progress(f"long {name} {label} (compile)")
            c, call, exe = compile_call(fn, a)
            calls[label] = call
            compiled[label] = (c, exe, a[2].shape[0])
        progress(f"long {name} (run)")
        t = interleaved(calls, repeats)
        for label, (c, exe, T_run) in compiled.items():
            mem = memory_bytes(exe)
            rows.append(
                dict(
                    cell=name, variant=label, T=T_run, B=B, I=I, H=H,
                    temp_MB=mem["temp"] / 2**20, peak_MB=mem["peak"] / 2**20,
                    run_s=t[label]["median"], run_min_s=t[label]["min"],
                    run_cpu_s=t[label]["cpu"],
                    compile_s=c,
                )
            )  # fmt: skip
    return rows


def bench_sweep(shapes, names, K, repeats, progress) -> list[dict]:
    rows = []
    for T, B, I, H in shapes:
        for name in names:
            progress(f"sweep {name} T={T} B={B} H={H} K={K}")
            cell, (params, h0, xs, ys) = _problem(name, T, B, I, H)
            ws = jnp.stack(
                [truncation.tbptt(T, 1 + k * max(1, T // K)) for k in range(K)]
            )
            one = jbptt.value_and_grad(cell, loss_fn)
            vmapped = jax.vmap(one, in_axes=(None, None, None, None, 0))
            multi = functools.partial(jbptt.grads_for_weights, cell, loss_fn)
            t = interleaved(
                {
                    "one": compile_call(one, (params, h0, xs, ys, ws[0]))[1],
                    "vmap": compile_call(vmapped, (params, h0, xs, ys, ws))[1],
                    "multi": compile_call(multi, (params, h0, xs, ys, ws))[1],
                },
                repeats,
            )
            t_one, t_vmap, t_multi = (t[k]["median"] for k in ("one", "vmap", "multi"))
            c_one, c_vmap, c_multi = (t[k]["cpu"] for k in ("one", "vmap", "multi"))
            rows.append(
                dict(
                    cell=name, T=T, B=B, I=I, H=H, K=K,
                    one_ms=1e3 * t_one, vmap_ms=1e3 * t_vmap,
                    multi_ms=1e3 * t_multi, separate_ms=1e3 * K * t_one,
                    vmap_over_one=t_vmap / t_one, multi_over_one=t_multi / t_one,
                    vmap_over_one_cpu=c_vmap / c_one,
                    multi_over_one_cpu=c_multi / c_one,
                )
            )  # fmt: skip
    return rows


# ---------------------------------------------------------------- writing ---


def environment() -> dict:
    try:
        import torch

        torch_version = torch.__version__
        torch_threads = torch.get_num_threads()
    except ImportError:
        torch_version, torch_threads = None, None
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [
                ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")
            ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    accelerator = {}
    if jax.default_backend() != "cpu":  # e.g. "NVIDIA H200"
        accelerator["device_kind"] = jax.devices()[0].device_kind
    return {
        **accelerator,
        "machine": f"{cpu}, {os.cpu_count()} logical cores",
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
        "jbptt": jbptt.__version__,
        "numpy": np.__version__,
        "torch": torch_version,
        "torch_threads": torch_threads,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }


def _table(rows, cols, fmt) -> str:
    head = "| " + " | ".join(c for c, _ in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    body = [
        "| "
        + " | ".join(fmt(r[k]) if callable(fmt) else str(r[k]) for _, k in cols)
        + " |"
        for r in rows
    ]
    return "\n".join([head, sep, *body])


def _f(x) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, int):
        return str(x)
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _processes_note(config) -> str:
    n = config.get("processes", 1)
    if n <= 1:
        return ""
    return f"; each grad case in {n} fresh processes, figures are medians over them"


def write_markdown(path: Path, env, config, grad, long, sweep, notes: str) -> None:
    lines = ["# jbptt benchmark results", ""]
    device = env.get("device_kind")  # set off CPU only
    torch_name = "PyTorch CUDA" if config.get("torch_device") == "cuda" else None
    lines += [
        f"Regenerated by `{config['command']}` on {env['date_utc']} UTC.", "",
        f"- machine: {env['machine']}; backend `{env['backend']}`"
        + (f"; device {device}" if device else ""),
        f"- python {env['python']}, jax {env['jax']}, numpy {env['numpy']}, "
        f"torch {env['torch']} ({env['torch_threads']} threads), jbptt {env['jbptt']}",
        f"- float32; median of {config['repeats']} runs after one warm-up call, "
        "jbptt, jax and the matmul of a case timed round-robin (same background "
        "load), PyTorch after them on its own; "
        "compile time measured separately" + _processes_note(config), "",
    ]  # fmt: skip
    lines += [f"- {reason}" for reason in config.get("skipped", [])]
    if config.get("skipped"):
        lines.append("")
    cudnn = bool(grad) and "cudnn_ms" in grad[0]
    if grad:
        peers = "PyTorch CPU" if torch_name is None else torch_name
        peers = "cuDNN LSTM, " + peers if cudnn else peers
        lines += [
            f"## value+grad: jbptt against jax.value_and_grad, {peers}, GEMM limit",
            "",
            "Times in ms. `vs jax` and `vs torch` are speed-ups of jbptt "
            "(their time / jbptt's time, > 1 is faster); `/ GEMM limit` is jbptt's "
            "time over the time the same FLOPs take at the rate of one big jitted "
            "matmul (1 is the hardware limit).",
            "",
        ]
        if cudnn:
            lines += [
                "`cuDNN`: the LSTM through `jax.experimental.rnn` (value+grad "
                "of the flat weights, same loss); `cuDNN loss diff` is "
                "|L_cuDNN − L_jbptt| / |L_jbptt| for the same weights.",
                "",
            ]
        lines += [
            _table(
                grad,
                [
                    ("cell", "cell"),
                    ("T", "T"),
                    ("B", "B"),
                    ("I", "I"),
                    ("H", "H"),
                    ("jbptt", "jbptt_ms"),
                    ("jax", "jax_ms"),
                    ("torch", "torch_ms"),
                    ("GEMM limit", "gemm_limit_ms"),
                    ("vs jax", "speedup_vs_jax"),
                    ("vs torch", "speedup_vs_torch"),
                    ("/ GEMM limit", "over_gemm_limit"),
                    ("compile jbptt (s)", "jbptt_compile_s"),
                    ("compile jax (s)", "jax_compile_s"),
                ]
                + (
                    [
                        ("cuDNN", "cudnn_ms"),
                        ("vs cuDNN", "speedup_vs_cudnn"),
                        ("cuDNN loss diff", "cudnn_loss_rel_diff"),
                    ]
                    if cudnn
                    else []
                )
                + (
                    [("vs jax, range over processes", "speedup_vs_jax_range")]
                    if "speedup_vs_jax_range" in grad[0]
                    else []
                ),
                _f,
            ),  # fmt: skip
            "",
        ]
        lines += [
            "The same ratios in CPU time (fastest repeat; `time.process_time`, "
            "all threads of the process), hardly affected by other processes on "
            "a shared machine; the GEMM limit is the matmul's CPU time scaled "
            "to the FLOPs:",
            "",
            _table(
                grad,
                [
                    ("cell", "cell"),
                    ("T", "T"),
                    ("B", "B"),
                    ("I", "I"),
                    ("H", "H"),
                    ("jbptt cpu", "jbptt_cpu_ms"),
                    ("jax cpu", "jax_cpu_ms"),
                    ("torch cpu", "torch_cpu_ms"),
                    ("GEMM limit cpu", "gemm_limit_cpu_ms"),
                    ("vs jax", "speedup_vs_jax_cpu"),
                    ("vs torch", "speedup_vs_torch_cpu"),
                    ("/ GEMM limit", "over_gemm_limit_cpu"),
                ],
                _f,
            ),  # fmt: skip
            "",
        ]
    if long:
        lines += [
            "## Long sequences: checkpoint='sqrt'",
            "",
            "Peak = arguments + outputs + temporaries of the compiled value+grad "
            "(XLA memory analysis), in MiB; run time in seconds.",
            "",
            _table(
                long,
                [
                    ("cell", "cell"),
                    ("variant", "variant"),
                    ("T", "T"),
                    ("H", "H"),
                    ("B", "B"),
                    ("temp MiB", "temp_MB"),
                    ("peak MiB", "peak_MB"),
                    ("run s", "run_s"),
                    ("run cpu s", "run_cpu_s"),
                    ("compile s", "compile_s"),
                ],
                _f,
            ),  # fmt: skip
            "",
        ]
    if sweep:
        lines += [
            f"## Sweep: K = {sweep[0]['K']} link-weight vectors",
            "",
            "`vmap`: `jax.vmap` of `jbptt.value_and_grad` over `w`; `multi`: "
            "`jbptt.grads_for_weights` (one forward, K reverse scans batched); "
            "times in ms and as a multiple of one call (target ≤ 3).",
            "",
            _table(
                sweep,
                [
                    ("cell", "cell"),
                    ("T", "T"),
                    ("B", "B"),
                    ("H", "H"),
                    ("one call", "one_ms"),
                    ("K calls", "separate_ms"),
                    ("vmap", "vmap_ms"),
                    ("multi", "multi_ms"),
                    ("vmap / one", "vmap_over_one"),
                    ("vmap / one (cpu)", "vmap_over_one_cpu"),
                    ("multi / one (cpu)", "multi_over_one_cpu"),
                    ("multi / one", "multi_over_one"),
                ],
                _f,
            ),  # fmt: skip
            "",
        ]
    if notes:
        lines += [notes.strip(), ""]
    path.write_text("\n".join(lines))


def plot(path: Path, grad: list[dict], device: str = "CPU") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['cell']}\n{r['T']},{r['B']},{r['I']},{r['H']}" for r in grad]
    x = np.arange(len(grad))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(grad)), 4))
    width = 0.27
    ax.bar(
        x - width,
        [r["speedup_vs_jax"] for r in grad],
        width,
        label="vs jax.value_and_grad",
    )
    ax.bar(x, [r["speedup_vs_torch"] for r in grad], width, label="vs PyTorch CPU")
    ax.bar(
        x + width,
        [1 / r["over_gemm_limit"] for r in grad],
        width,
        label="fraction of GEMM limit",
    )
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("speed-up of jbptt (× faster)")
    ax.set_xlabel("cell and (T, B, I, H)")
    ax.set_title(f"jbptt value+grad, float32 {device}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------- main ---


def _default_notes() -> str:
    """A pointer to the analysis: RESULTS.md holds the generated tables only."""
    return (
        "What these numbers mean and why: docs/performance.md. The dated runs "
        "behind it: benchmarks/log/ (index: benchmarks/NOTES.md)."
    )


def _shape_arg(text: str) -> tuple[int, int, int, int]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"--shapes takes four positive ints T,B,I,H per shape, got {text!r}"
        )
    return shape


def _case_arg(text: str) -> tuple[str, tuple[int, int, int, int]]:
    """``NAME:T,B,I,H`` (a cell of ``CELLS``, four ints ≥ 1) for ``--case``."""
    name, colon, shape = text.partition(":")
    try:
        dims = tuple(int(v) for v in shape.split(","))
    except ValueError:
        dims = ()
    if not colon or name not in CELLS or len(dims) != 4 or min(dims) < 1:
        raise argparse.ArgumentTypeError(
            f"expected NAME:T,B,I,H with NAME one of {sorted(CELLS)} and four "
            f"ints ≥ 1 (e.g. elman:16,4,3,8), got {text!r}"
        )
    return name, dims


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_grad",
        description="Benchmark jbptt value+grad against jax.grad, PyTorch CPU and "
        "the GEMM limit; checkpointed long sequences; vmapped sweeps.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="tiny shapes, seconds")
    p.add_argument("--out", default="results", help="output directory")
    p.add_argument(
        "--repeats",
        type=_cli.positive_int,
        default=None,
        help="timed runs per case (None: 7; 2 with --quick)",
    )
    p.add_argument("--parts", default="grad,long,sweep", help="comma list of parts")
    p.add_argument("--cells", default="elman,lstm,gru", help="comma list of cells")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    p.add_argument(
        "--shapes",
        nargs="+",
        type=_shape_arg,
        default=None,
        metavar="T,B,I,H",
        help="shapes of the grad and sweep parts (None: the CPU set of "
        "docs/design.md; a tiny one with --quick)",
    )
    p.add_argument(
        "--cudnn",
        action="store_true",
        help="add cuDNN's LSTM (jax.experimental.rnn) as a peer of the LSTM "
        "rows; skipped with the reason off CUDA GPUs",
    )
    p.add_argument(
        "--torch-device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where PyTorch runs; cuda is skipped with the reason when "
        "torch.cuda.is_available() is False",
    )
    p.add_argument(
        "--long-variants",
        default=",".join(LONG_VARIANTS),
        help="comma list of the long part's variants",
    )
    p.add_argument(
        "--long-T",
        type=_cli.positive_int,
        default=None,
        help="T of the long part (None: 100000; 64 with --quick)",
    )
    p.add_argument(
        "--from-json", default=None, help="rewrite RESULTS.md from a results.json"
    )
    p.add_argument("--notes", default=None, help="markdown file appended to RESULTS.md")
    p.add_argument(
        "--processes",
        type=_cli.positive_int,
        default=None,
        help="fresh processes per grad case, figures are medians over them "
        "(None: 3; 1 with --quick)",
    )
    p.add_argument(
        "--case",
        type=_case_arg,
        default=None,
        metavar="NAME:T,B,I,H",
        help="time one grad case NAME:T,B,I,H, print JSON",
    )
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        r = json.loads(Path(args.from_json).read_text())
        notes = Path(args.notes).read_text() if args.notes else _default_notes()
        write_markdown(
            out / "RESULTS.md", r["environment"], r["config"], r["grad"],
            r["long"], r["sweep"], notes,
        )  # fmt: skip
        return r
    if args.case:
        name, (T, B, I, H) = args.case
        row = grad_case(
            name, T, B, I, H, args.repeats or 7, not args.no_torch,
            cudnn=args.cudnn, torch_device=args.torch_device,
        )  # fmt: skip
        print(json.dumps(row))
        return row
    parts = set(args.parts.split(","))
    unknown = parts - {"grad", "long", "sweep"}
    if unknown:
        raise ValueError(f"--parts takes grad, long, sweep; got {sorted(unknown)}.")
    names = args.cells.split(",")
    if set(names) - set(CELLS):
        raise ValueError(f"--cells takes {sorted(CELLS)}; got {names}.")
    long_variants = args.long_variants.split(",")
    if set(long_variants) - set(LONG_VARIANTS):
        raise ValueError(
            f"--long-variants takes {list(LONG_VARIANTS)}; got {long_variants}."
        )
    repeats = args.repeats or (2 if args.quick else 7)
    processes = args.processes or (1 if args.quick else 3)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.shapes:
        shapes = [tuple(s) for s in args.shapes]
    # Peers asked for that cannot run here: said now and recorded.
    skipped = []
    if "grad" in parts and not args.no_torch and args.torch_device != "cpu":
        skipped.append(torch_unavailable(args.torch_device))
    if "grad" in parts and args.cudnn and "lstm" in names:
        skipped.append(cudnn_unavailable())
    skipped = [reason for reason in skipped if reason]
    for reason in skipped:
        print(reason, flush=True)
    long_T = args.long_T or (64 if args.quick else 100_000)
    long_H = 8 if args.quick else 256
    try:
        from tqdm import tqdm

        bar = tqdm(total=None, disable=args.quick, unit="case")
        progress = lambda s: (bar.set_description(s), bar.update(1))  # noqa: E731
    except ImportError:
        progress = lambda s: None  # noqa: E731

    grad = (
        bench_grad(
            shapes,
            names,
            repeats,
            not args.no_torch,
            progress,
            processes=processes,
            cudnn=args.cudnn,
            torch_device=args.torch_device,
        )  # fmt: skip
        if "grad" in parts
        else []
    )
    long = (
        bench_long(
            long_T,
            long_H,
            1,
            4 if args.quick else 32,
            repeats,
            progress,
            [n for n in names if n in ("elman", "lstm")],
            long_variants,
        )
        if "long" in parts
        else []
    )
    sweep_shapes = shapes[:1] if args.quick else [SHAPES[1], SHAPES[3]]
    if args.shapes:
        sweep_shapes = shapes
    sweep = (
        bench_sweep(sweep_shapes, names, 8, repeats, progress)
        if "sweep" in parts
        else []
    )

    env = environment()
    command = "python -m benchmarks.bench_grad " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    config = {"command": command.strip(), "repeats": repeats, "quick": args.quick,
              "shapes": shapes, "long": [long_T, long_H], "seed": 0,
              "processes": processes}  # fmt: skip
    # Only when asked for, so that CPU runs write what they always wrote.
    if args.cudnn or args.torch_device != "cpu" or skipped:
        config.update(torch_device=args.torch_device, cudnn=args.cudnn,
                      skipped=skipped)  # fmt: skip
    result = {
        "config": config,
        "metadata": run_metadata(config, seed=0),
        "environment": env,
        "grad": grad,
        "long": long,
        "sweep": sweep,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2))
    write_csv(out / "results_grad.csv", grad)
    write_csv(out / "results_long.csv", long)
    write_csv(out / "results_sweep.csv", sweep)
    notes = Path(args.notes).read_text() if args.notes else ""
    if not notes and not args.quick:
        notes = _default_notes()
    write_markdown(out / "RESULTS.md", env, config, grad, long, sweep, notes)
    written = ["results.json", "results_grad.csv", "results_long.csv"]
    written += ["results_sweep.csv", "RESULTS.md"]
    if grad:
        plot(out / "speedups.png", grad, env.get("device_kind", "CPU"))
        written.append("speedups.png")
    print("wrote:")
    for name in written:
        print(f"  {out / name}")
    return result


if __name__ == "__main__":
    main()
