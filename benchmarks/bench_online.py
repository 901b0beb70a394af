"""Tokens per second of online training: jbptt's loop against detach loops.

For each cell (Elman, LSTM, GRU) at (B, H) and each expected depth k, one
stream of T steps is trained online with a linear readout, squared loss and
Adam, by

* jbptt TBPTT(k), ARTBP geometric and ARTBP poly-tail matched to expected
  depth k (:func:`jbptt.estimators.artbp_matched`), all through
  :func:`jbptt.train.train`;
* a plain-JAX detach loop: one jitted ``value_and_grad`` of a ``lax.scan``
  over k steps plus the Adam update, called chunk after chunk with the
  state's gradient stopped in between (what one writes by hand);
* PyTorch's detach loop (``nn.RNN``/``LSTM``/``GRU`` + ``nn.Linear``,
  ``h.detach()`` between chunks), when torch is importable, timed in a
  process of its own.

Every run is timed on its second pass over the same stream (the first pass
compiles: the same key gives the same cuts, so ARTBP's buckets are all
compiled); tokens/s = T·B / seconds. Padding overhead (steps run in buckets
/ real steps) and compilations are reported for jbptt's runs.

Run ``python -m benchmarks.bench_online --out benchmarks`` (``make bench``);
``--quick`` uses tiny shapes and finishes in seconds.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jbptt
from jbptt import cells, estimators, sharding

CELLS = {"elman": cells.elman, "lstm": cells.lstm, "gru": cells.gru}
ESTIMATORS = ("tbptt", "artbp_geometric", "artbp_poly")


def _estimator(name: str, k: int):
    if name == "tbptt":
        return estimators.tbptt(k)
    schedule = "constant" if name == "artbp_geometric" else "poly_tail"
    return estimators.artbp_matched(k, schedule)


def _data(T, B, I, O, seed=0):
    xs = np.asarray(jax.random.normal(jax.random.key(seed), (T, B, I)))
    ys = np.asarray(jax.random.normal(jax.random.key(seed + 1), (T, B, O)))
    return xs, ys


def _top_bucket(text: str) -> int | str | None:
    """``--top-bucket``: an int, ``auto`` or ``none``."""
    if text.lower() in ("auto", "none"):
        return None if text.lower() == "none" else "auto"
    return int(text)


def time_jbptt(
    cell_name, est_name, k, T, B, H, I, O, lr=1e-3, max_buckets=None,
    top_bucket="auto", mesh=None, warmup=0,
):  # fmt: skip
    model = jbptt.readout(CELLS[cell_name](), output_size=O)
    params = model.init(jax.random.key(0), I, H)
    xs, ys = _data(T, B, I, O)
    opt, est, key = optax.adam(lr), _estimator(est_name, k), jax.random.key(1)

    def run():
        return jbptt.train.train(
            model.cell, model.loss_fn, params, xs, ys, opt, est, key=key,
            buckets=jbptt.train.Buckets(
                max_buckets=max_buckets, top=top_bucket, warmup=warmup
            ),
            mesh=mesh,
        )  # fmt: skip

    first = run()  # compiles every bucket these cuts use
    t0 = time.perf_counter()
    hist = run()
    seconds = time.perf_counter() - t0
    return {
        "tokens_per_s": T * B / seconds,
        "seconds": seconds,
        "segments": len(hist.length),
        "mean_length": float(np.mean(hist.length)),
        "padding": hist.padded_steps / float(hist.length.sum()),
        "advanced": hist.advanced_steps / float(hist.length.sum()),
        "buckets": list(hist.buckets),
        "compiles_first": first.compiles,
        "compiles_timed": hist.compiles,
    }


def time_jax_detach(cell_name, k, T, B, H, I, O, lr=1e-3, mesh=None):
    """The hand-written loop: jitted chunk value_and_grad + Adam, the state's
    gradient stopped between chunks; with a ``mesh``, the chunks and the
    state split over its devices along the batch (data parallel)."""
    model = jbptt.readout(CELLS[cell_name](), output_size=O)
    params = model.init(jax.random.key(0), I, H)
    xs, ys = _data(T, B, I, O)
    n = T // k
    xs_c = xs[: n * k].reshape(n, k, B, I)
    ys_c = ys[: n * k].reshape(n, k, B, O)
    if mesh is not None:
        xs_c, ys_c = sharding.split_batch((xs_c, ys_c), mesh, axis=2)
    opt = optax.adam(lr)
    cell = model.cell

    def chunk_loss(p, h, x, y):
        def body(h, xy):
            h, out = cell.step(p, h, xy[0])
            return h, model.loss_fn(p, out, xy[1])

        h, losses = jax.lax.scan(body, jax.lax.stop_gradient(h), (x, y))
        return jnp.sum(losses), h

    @jax.jit
    def step(p, s, h, x, y):
        (loss, h), g = jax.value_and_grad(chunk_loss, has_aux=True)(p, h, x, y)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s, h, loss

    def run():
        p, s = params, opt.init(params)
        h = cell.initial_state(params, (B,))
        if mesh is not None:
            p, s, h = (*sharding.replicate((p, s), mesh), sharding.split_batch(h, mesh))
        for i in range(n):
            p, s, h, _ = step(p, s, h, xs_c[i], ys_c[i])
        return jax.block_until_ready(p)

    run()
    t0 = time.perf_counter()
    run()
    seconds = time.perf_counter() - t0
    return {"tokens_per_s": n * k * B / seconds, "seconds": seconds}


def time_torch_detach(cell_name, k, T, B, H, I, O, lr=1e-3, device="cpu"):
    import torch

    # as many threads as this process may use (not the host's core count)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(0)
    rnn = {"elman": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
    net = rnn[cell_name](I, H).to(device)
    head = torch.nn.Linear(H, O).to(device)
    opt = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=lr)
    xs, ys = _data(T, B, I, O)
    n = T // k
    xs_t = torch.from_numpy(xs[: n * k].astype(np.float32)).reshape(n, k, B, I)
    ys_t = torch.from_numpy(ys[: n * k].astype(np.float32)).reshape(n, k, B, O)
    xs_t, ys_t = xs_t.to(device), ys_t.to(device)

    def run():
        h = None
        for i in range(n):
            out, h = net(xs_t[i], h)
            loss = 0.5 * ((head(out) - ys_t[i]) ** 2).sum(-1).mean(-1).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            h = tuple(a.detach() for a in h) if isinstance(h, tuple) else h.detach()
        if device == "cuda":  # CUDA runs asynchronously: wait for the last step
            torch.cuda.synchronize()

    run()
    t0 = time.perf_counter()
    run()
    seconds = time.perf_counter() - t0
    return {"tokens_per_s": n * k * B / seconds, "seconds": seconds}


def _in_own_process(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a fresh process, so that a peer's timing
    does not share the allocator, thread pools and caches XLA left in this
    one (in-process, PyTorch ran several times slower after the JAX cases)."""
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def _torch_available(device: str = "cpu") -> bool:
    try:
        import torch
    except ImportError:
        return False
    return device == "cpu" or torch.cuda.is_available()


def table(rows) -> str:
    head = (
        "| cell | k | TBPTT tok/s | ARTBP geo tok/s (× TBPTT, padding) | "
        "ARTBP poly tok/s (× TBPTT, padding) | plain-JAX detach tok/s "
        "(TBPTT ×) | PyTorch detach tok/s (TBPTT ×) |\n|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        tb = r["tbptt"]["tokens_per_s"]

        def art(name, r=r, tb=tb):
            a = r[name]
            return (
                f"{a['tokens_per_s']:,.0f} ({a['tokens_per_s'] / tb:.2f}×, "
                f"{a['padding']:.2f})"
            )

        jx = r["jax_detach"]["tokens_per_s"]
        th = r.get("torch_detach", {}).get("tokens_per_s")
        torch_cell = f"{th:,.0f} ({tb / th:.2f}×)" if th else "–"
        lines.append(
            f"| {r['cell']} | {r['k']} | {tb:,.0f} | {art('artbp_geometric')} | "
            f"{art('artbp_poly')} | {jx:,.0f} ({tb / jx:.2f}×) | {torch_cell} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_online",
        description="Tokens/s of online training: jbptt TBPTT and ARTBP "
        "(geometric, poly-tail) at matched expected depth against plain-JAX "
        "and PyTorch detach loops. Writes bench_online.{json,md}.",
    )
    ap.add_argument("--T", type=int, default=2048, help="stream length")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--inputs", type=int, default=32)
    ap.add_argument("--outputs", type=int, default=8)
    ap.add_argument("--ks", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    ap.add_argument(
        "--torch-device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where PyTorch's loop runs; cuda is skipped (and said) when "
        "torch.cuda.is_available() is False",
    )
    ap.add_argument(
        "--max-buckets",
        type=int,
        default=None,
        help="static segment lengths ARTBP may compile (train's max_buckets; "
        "default: the estimator's 6)",
    )
    ap.add_argument(
        "--top-bucket",
        type=_top_bucket,
        default="auto",
        help="longest static segment ARTBP compiles, longer ones split "
        "(train's top_bucket: an int, 'none' for the law's 0.99 quantile, or "
        "'auto', the default: on CPU, buckets whose step needs over 32 MiB of "
        "temporaries are dropped)",
    )
    ap.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="train's Buckets.warmup: steps trained in two buckets before the "
        "whole ladder (default 0: the steady state of a long run, which the "
        "timed call measures; the library's default serves short runs)",
    )
    ap.add_argument("--quick", action="store_true", help="tiny shapes (seconds)")
    ap.add_argument("--out", default="results", help="output directory")
    args = ap.parse_args(argv)
    if args.quick:
        args.T, args.batch, args.hidden, args.inputs, args.outputs = 48, 2, 4, 3, 2
        args.ks = [4]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    use_torch = not args.no_torch and _torch_available(args.torch_device)
    skipped = ""
    if not args.no_torch and not use_torch:
        skipped = "PyTorch skipped: " + (
            "torch is not importable"
            if args.torch_device == "cpu"
            else "torch is not importable or torch.cuda.is_available() is False"
        )
        print(skipped, flush=True)
    shape = (args.T, args.batch, args.hidden, args.inputs, args.outputs)
    rows = []
    for cell_name in args.cells:
        for k in args.ks:
            row = {"cell": cell_name, "k": k}
            for name in ESTIMATORS:
                row[name] = time_jbptt(
                    cell_name, name, k, *shape, max_buckets=args.max_buckets,
                    top_bucket=None if name == "tbptt" else args.top_bucket,
                    warmup=args.warmup,
                )  # fmt: skip
            row["jax_detach"] = time_jax_detach(cell_name, k, *shape)
            if use_torch:
                row["torch_detach"] = _in_own_process(
                    time_torch_detach, cell_name, k, *shape, device=args.torch_device
                )
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    md = table(rows) + (f"\n\n{skipped}." if skipped else "")
    result = {
        "config": {**vars(args), "torch": use_torch},
        "machine": {"platform": platform.platform(), "jax": jax.__version__},
        "rows": rows,
    }
    (out / "bench_online.json").write_text(json.dumps(result, indent=1))
    (out / "bench_online.md").write_text(md + "\n")
    print(md)
    return result


if __name__ == "__main__":
    main()
