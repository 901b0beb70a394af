"""Gradients equal autodiff on the default backend (the GPU test subset).

For Elman, LSTM, GRU, a two-layer stack (LSTM then GRU), a masked batch
(LSTM, sequences of different lengths) and the diagonal linear recurrences
(the LRU, whose state is complex, and minGRU), jitted
``jbptt.value_and_grad(cell, loss_fn)`` is compared with
``jax.value_and_grad`` of the same forward written as a plain ``lax.scan``
of ``cell.step`` (no jbptt code on the reference side but the step):

.. math::

    h_t = f(\\theta, h_{t-1}, x_t), \\qquad
    L = \\sum_t \\ell(\\theta, h_t, y_t),

and, for the masked batch, sequence ``b`` holds its state after its last
real step and adds no loss there: :math:`L = \\sum_b \\sum_{t < n_b}
\\ell(\\theta, h_{t,b}, y_{t,b})`.

The error of a pytree is ``max |a − b| / max |b|`` over all its leaves
(tests/helpers.py's ``rel_err``), taken for the loss, the final state and
the gradient; a check passes when the largest of the three is within its
tolerance:

- float32, matmul precision ``highest``: 1e-4 (both sides in true float32);
- float32, the backend's default precision: 1e-2 (GPUs may run float32
  matmuls in TF32, with a 10-bit mantissa, and the two sides order their
  products differently; skipped on CPU, where it is the same as highest);
- float64: 1e-10, where the backend has float64 (skipped on TPUs).

Run ``python -m benchmarks.gpu_check --out DIR`` (``benchmarks/gpu.sh``
runs it first); it prints a table, writes ``gpu_check.json`` and
``gpu_check.md`` and exits with status 1 when a check fails (or when no
check ran). ``--quick`` uses tiny shapes; ``--dtypes float64`` runs the
float64 checks only (gpu.sh's step for the diagonal cells).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp

import jbptt
from jbptt import cells

CASES = ("elman", "lstm", "gru", "stack", "masked", "lru", "min_gru")
SHAPE = (100, 8, 16, 32)  # (T, B, I, H)
QUICK_SHAPE = (6, 2, 3, 4)
# (dtype, matmul precision, tolerance on the relative error)
CHECKS = (
    ("float32", "highest", 1e-4),
    ("float32", "default", 1e-2),
    ("float64", "highest", 1e-10),
)
CHECKS_DTYPES = ("float32", "float64")  # what --dtypes chooses from

GradFn = Callable[..., tuple[tuple[jax.Array, object], object]]


def loss_fn(params, out_t, y_t):
    """ℓ_t = ½·mean((h_t − y_t)²): over the batch, or one sequence's step."""
    del params
    return 0.5 * jnp.mean((out_t - y_t) ** 2)


def make_cell(case: str) -> cells.Cell:
    """The cell of a case (``masked`` runs the LSTM on a padded batch;
    ``lru`` and ``min_gru`` are diagonal linear recurrences)."""
    if case not in CASES:
        raise ValueError(f"case must be one of {list(CASES)}, got {case!r}.")
    return {
        "elman": cells.elman,
        "lstm": cells.lstm,
        "gru": cells.gru,
        "stack": lambda: cells.stack([cells.lstm(), cells.gru()]),
        "masked": cells.lstm,
        "lru": cells.lru,
        "min_gru": cells.min_gru,
    }[case]()


def problem(case: str, shape, dtype, seed: int = 0):
    """``(cell, (params, h0, xs, ys), lengths)``; ``lengths`` is ``None``
    except for ``masked``, whose sequences run ``T/B, 2T/B, …, T`` steps.
    ``ys`` has the shape of the cell's output (the LRU's has the input's
    size)."""
    T, B, I, H = shape
    cell = make_cell(case)
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    params = cell.init(k1, I, H, dtype=dtype)
    h0 = cell.initial_state(params, (B,))
    xs = jax.random.normal(k2, (T, B, I), dtype)
    out = jax.eval_shape(cell.step, params, h0, xs[0])[1]
    ys = jax.random.normal(k3, (T, *out.shape), dtype)
    lengths = None
    if case == "masked":
        lengths = jnp.maximum(1, (T * (jnp.arange(B) + 1)) // B)
    return cell, (params, h0, xs, ys), lengths


def reference_value_and_grad(cell) -> GradFn:
    """``jax.value_and_grad`` of the forward as a plain ``lax.scan``."""

    def forward(params, h0, xs, ys, lengths):
        T = xs.shape[0]
        mask = None if lengths is None else jnp.arange(T)[:, None] < lengths

        def step(h, inp):
            x_t, m_t = inp
            h_new, out = cell.step(params, h, x_t)
            if m_t is not None:  # padded steps keep the sequence's last state
                keep = lambda a, b: jnp.where(m_t.reshape(-1, 1), a, b)  # noqa: E731
                h_new = jax.tree_util.tree_map(keep, h_new, h)
            return h_new, out

        h_T, outs = jax.lax.scan(step, h0, (xs, mask))
        if mask is None:
            losses = jax.vmap(loss_fn, in_axes=(None, 0, 0))(params, outs, ys)
            return jnp.sum(losses), h_T
        # [T, B]: one sequence's step at a time, padded steps add nothing
        per_step = jax.vmap(jax.vmap(loss_fn, (None, 0, 0)), (None, 0, 0))
        losses = per_step(params, outs, ys)
        return jnp.sum(jnp.where(mask, losses, 0.0)), h_T

    return jax.value_and_grad(forward, has_aux=True)


def jbptt_value_and_grad(cell) -> GradFn:
    """jbptt's reverse scan, with the same signature as the reference."""
    vg = jbptt.value_and_grad(cell, loss_fn)

    def fn(params, h0, xs, ys, lengths):
        if lengths is None:
            return vg(params, h0, xs, ys)
        return vg(params, h0, xs, ys, lengths=lengths)

    return fn


def rel_err(a, b) -> float:
    """``max |a − b| / max |b|`` over a whole pytree (0 when both are zero)."""
    tm = jax.tree_util.tree_map
    diffs = jax.tree_util.tree_leaves(tm(lambda x, y: jnp.max(jnp.abs(x - y)), a, b))
    scale = jax.tree_util.tree_leaves(tm(lambda y: jnp.max(jnp.abs(y)), b))
    num, den = float(max(diffs)), float(max(scale))
    return num / den if den > 0 else num


def check(
    case: str,
    dtype: str,
    precision: str,
    tol: float,
    shape=SHAPE,
    make_grad: Callable[[cells.Cell], GradFn] = jbptt_value_and_grad,
) -> dict:
    """One comparison; ``make_grad(cell)`` builds the function under test.

    Returns:
      A row: the case, dtype, precision, shape, tolerance, the relative
      errors of the loss, final state and gradient, ``max_err`` and ``ok``.
    """
    cell, args, lengths = problem(case, shape, jnp.dtype(dtype))
    with jax.default_matmul_precision(precision):
        # Fresh jits inside the context: the precision is read at trace time.
        got = jax.jit(make_grad(cell))(*args, lengths)
        want = jax.jit(reference_value_and_grad(cell))(*args, lengths)
    (L, h_T), g = got
    (L_r, h_r), g_r = want
    if jax.tree_util.tree_structure(g) != jax.tree_util.tree_structure(g_r):
        raise ValueError(f"{case}: the gradient's pytree differs from autodiff's.")
    errs = {
        "loss": rel_err(L, L_r),
        "state": rel_err(h_T, h_r),
        "grad": rel_err(g, g_r),
    }
    worst = max(errs.values())
    T, B, I, H = shape
    return dict(
        case=case, dtype=dtype, precision=precision, T=T, B=B, I=I, H=H, tol=tol,
        err_loss=errs["loss"], err_state=errs["state"], err_grad=errs["grad"],
        max_err=worst, ok=bool(worst <= tol),
    )  # fmt: skip


def _error_row(case, dtype, precision, tol, shape, error: Exception) -> dict:
    T, B, I, H = shape
    nan = float("nan")
    return dict(
        case=case, dtype=dtype, precision=precision, T=T, B=B, I=I, H=H, tol=tol,
        err_loss=nan, err_state=nan, err_grad=nan, max_err=nan, ok=False,
        error=f"{type(error).__name__}: {error}".splitlines()[0][:300],
    )  # fmt: skip


def float64_support() -> str | None:
    """``None`` when float64 runs on the default backend, else the reason."""
    if jax.default_backend() == "tpu":
        return "TPUs have no native float64"
    if not jax.config.jax_enable_x64:
        return "jax_enable_x64 is off"
    if jnp.ones(2, jnp.float64).dtype != jnp.float64:
        return "float64 arrays are not float64 on this backend"
    return None


def table(rows: list[dict]) -> str:
    head = (
        "| case | dtype | matmul precision | T | B | I | H | loss err | state err "
        "| grad err | tolerance | result |\n|---|---|---|---|---|---|---|---|---|"
        "---|---|---|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['dtype']} | {r['precision']} | {r['T']} | "
            f"{r['B']} | {r['I']} | {r['H']} | {r['err_loss']:.2e} | "
            f"{r['err_state']:.2e} | {r['err_grad']:.2e} | {r['tol']:.0e} | "
            f"{'pass' if r['ok'] else 'FAIL'} |"
        )
    errors = [
        f"- {r['case']}, {r['dtype']}: {r['error']}" for r in rows if r.get("error")
    ]
    return "\n".join(lines + (["", "Errors:", *errors] if errors else []))


def _shape(text: str) -> tuple[int, int, int, int]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"--shape takes four positive ints T,B,I,H, got {text!r}"
        )
    return shape


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description="jbptt.value_and_grad against jax.value_and_grad of a plain "
        "lax.scan on the default backend: float32 (highest and default matmul "
        "precision) and float64 where supported. Exit status 1 if a check fails.",
    )
    p.add_argument("--quick", action="store_true", help="tiny shapes, seconds")
    p.add_argument("--out", default="results", help="output directory")
    p.add_argument("--shape", type=_shape, default=None, help="T,B,I,H")
    p.add_argument("--cases", default=",".join(CASES), help="comma list of cases")
    p.add_argument("--no-x64", action="store_true", help="skip the float64 checks")
    p.add_argument(
        "--dtypes", default="float32,float64", help="comma list of dtypes to check"
    )
    args = p.parse_args(argv)
    cases = args.cases.split(",")
    if set(cases) - set(CASES):
        raise ValueError(f"--cases takes {list(CASES)}; got {cases}.")
    dtypes = args.dtypes.split(",")
    if not dtypes or set(dtypes) - {"float32", "float64"}:
        raise ValueError(f"--dtypes takes float32, float64; got {dtypes}.")
    shape = args.shape or (QUICK_SHAPE if args.quick else SHAPE)
    if not args.no_x64:
        jax.config.update("jax_enable_x64", True)
    no64 = "--no-x64" if args.no_x64 else float64_support()
    skipped = [f"float64: {no64}"] if no64 and "float64" in dtypes else []
    skipped += [
        f"{d}: not asked for (--dtypes)" for d in CHECKS_DTYPES if d not in dtypes
    ]
    cpu = jax.default_backend() == "cpu"
    if cpu and "float32" in dtypes:
        skipped.append("float32 at the default matmul precision: the same as "
                       "highest on CPU")  # fmt: skip
    t0 = time.perf_counter()
    rows = []
    for dtype, precision, tol in CHECKS:
        if (dtype == "float64" and no64) or (cpu and precision == "default"):
            continue
        if dtype not in dtypes:
            continue
        for case in cases:
            try:
                rows.append(check(case, dtype, precision, tol, shape))
            except Exception as e:  # one broken case must not hide the others
                rows.append(_error_row(case, dtype, precision, tol, shape, e))
            print(
                table(rows[-1:]).splitlines()[2], rows[-1].get("error", ""), flush=True
            )
    devices = [f"{d} ({d.device_kind})" for d in jax.devices()]
    result = {
        "backend": jax.default_backend(),
        "devices": devices,
        "jax": jax.__version__,
        "shape": list(shape),
        "skipped": skipped,
        "seconds": time.perf_counter() - t0,
        "ok": bool(rows) and all(r["ok"] for r in rows),  # none run: no pass
        "rows": rows,
    }
    md = [
        f"Backend `{result['backend']}`, devices: {', '.join(devices)}; "
        f"(T, B, I, H) = {tuple(shape)}. Errors are max |jbptt − autodiff| / "
        "max |autodiff| over each pytree.",
        "",
        table(rows),
        "",
    ]
    md += [f"Skipped: {s}." for s in skipped]
    md.append(f"All checks pass: {'yes' if result['ok'] else 'NO'}.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    (out / "gpu_check.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
