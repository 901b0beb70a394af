"""Main job: bias and variance of TBPTT(k) against ARTBP at matched cost.

On a task with long-range dependence (:func:`experiments.tasks.delayed_sum`),
for each cell, it trains a model a little with full BPTT and, at several
points along that trajectory, estimates for every estimator the relative bias
‖E ĝ − g‖/‖g‖ (95% interval), the relative variance E‖ĝ − E ĝ‖²/‖g‖² and
cosines with the exact gradient g (:func:`jbptt.sweep.make_sweep`: one jit,
forward shared, reverse scans vmapped). Estimators:

* TBPTT(k), k = 1, 2, 4, …, T (deterministic, biased);
* ARTBP with geometric truncation (constant c) and with a poly-tail schedule
  (α = 4), each solved for expected depth E[min(L, T)] = k, as TBPTT(k)
  (unbiased; k < T only);
* with ``--forward-mode``: RTRL (exact), SnAp-1 (biased) and UORO
  (unbiased), the forward-mode estimators of :mod:`jbptt.forward_mode`,
  which never truncate (shown at depth T); on a diagonal cell RTRL is the
  exact diagonal RTRL, and a complex state (the LRU) has RTRL only.

Cells: ``elman``, ``lstm``, ``gru`` and the diagonal linear recurrences
``lru`` (one variant per ``--r-max``, named ``lru(r_max=…)``), ``min_gru``,
``min_lstm``. For the LRU, whose λ is constant, two more rows per k: the
closed-form TBPTT(k) bias at the point's params (``closed-form``, equal to
the measured one) and its |λ|-only form for a stationary input
(``geometric``).

Writes ``bias_sweep.csv``, ``bias_sweep.json`` (config, seed, versions) and
``bias_sweep.png`` to ``--out``. Run ``python -m experiments.bias_sweep
--help``.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

import jbptt
from experiments import _cli, tasks
from jbptt import estimators as est
from jbptt import plotting, runs, sweep

COLUMNS = (
    "cell",
    "train_step",
    "train_loss",
    "estimator",
    "family",
    "k",
    "expected_depth",
    "windows",
    "n_samples",
    "rel_bias",
    "rel_bias_lo",
    "rel_bias_hi",
    "rel_bias_sq",
    "rel_variance",
    "rel_mse",
    "cos_mean",
    "cos_sample",
    "grad_norm",
)
FAMILIES = ("tbptt", "artbp-geom", "artbp-poly")
FORWARD = ("rtrl", "snap1", "uoro")  # --forward-mode: one estimator each
# LRU rows beside the measured TBPTT(k) bias: the closed form at the point's
# params (jbptt.diagnostics.diagonal_truncation_bias) and its |λ|-only form
# for a stationary input (geometric_truncation_bias, mean over units).
CLOSED = ("closed-form", "geometric")
JSON_FIELDS = ("cell", "train_step", "family", "estimator", "k", "rel_bias")
JSON_FIELDS += ("rel_bias_hi", "rel_variance")
# Marker of each deterministic family in the figure ("": a line only).
DETERMINISTIC = {"tbptt": "o", "rtrl": "o", "snap1": "o", "closed-form": "x"}
DETERMINISTIC["geometric"] = ""
LABELS = {
    "closed-form": "TBPTT closed form (λ, b, ∂ℓ/∂h)",
    "geometric": "TBPTT closed form in |λ| (stationary input)",
}


# --quick sets these defaults only: flags given explicitly are kept.
QUICK = dict(
    T=16,
    hidden=8,
    batch=8,
    samples=128,
    delays=[1, 4, 12],
    train_steps=100,
    points=2,
    cells=["elman"],
)


def parse_args(argv=None) -> argparse.Namespace:
    p = _cli.parser(
        "python -m experiments.bias_sweep",
        "Bias/variance sweep of TBPTT(k) against ARTBP at matched expected "
        "truncation depth, on a delayed-sum regression task.",
    )
    p.add_argument(
        "--cells",
        nargs="+",
        default=["elman", "lstm"],
        choices=sorted(tasks.CELLS),
        help="cells to sweep",
    )
    p.add_argument(
        "--r-max",
        type=_cli.positive_float,
        nargs="+",
        default=[0.9, 0.99, 0.999],
        help="with --cells lru: one LRU per value, its ring initialisation "
        "|λ| ≤ r_max (rows name it lru(r_max=…))",
    )
    p.add_argument(
        "--r-min",
        type=float,
        default=0.0,
        help="with --cells lru: the ring's inner radius, 0 ≤ r_min < every r_max",
    )
    p.add_argument("--T", type=_cli.positive_int, default=64, help="sequence length")
    p.add_argument("--hidden", type=_cli.positive_int, default=32, help="hidden size")
    p.add_argument(
        "--batch", type=_cli.positive_int, default=32, help="sequences per batch"
    )
    p.add_argument(
        "--samples",
        type=_cli.positive_int,
        default=256,
        help="samples per random estimator (≥ 4)",
    )
    p.add_argument(
        "--ks",
        type=_cli.positive_int,
        nargs="+",
        default=None,
        help="TBPTT lengths, each ≤ T (None: powers of 2 up to T; --quick: 1 2 4 T)",
    )
    p.add_argument(
        "--delays",
        type=_cli.positive_int,
        nargs="+",
        default=[2, 8, 24],
        help="delays of the delayed-sum task (each < T)",
    )
    p.add_argument(
        "--train-steps",
        type=_cli.nonneg_int,
        default=400,
        help="Adam steps of full-BPTT training along the trajectory",
    )
    p.add_argument(
        "--points",
        type=_cli.positive_int,
        default=3,
        help="parameter points along the trajectory (evenly spaced, first at "
        "init; distinct points need --train-steps ≥ points - 1)",
    )
    p.add_argument(
        "--lr", type=_cli.positive_float, default=3e-3, help="Adam learning rate"
    )
    p.add_argument(
        "--chunk", type=_cli.positive_int, default=64, help="samples per vmap batch"
    )
    p.add_argument("--seed", type=_cli.nonneg_int, default=0, help="PRNG seed")
    p.add_argument("--x64", action="store_true", help="run in float64")
    p.add_argument(
        "--forward-mode",
        action="store_true",
        help="also sweep the forward-mode estimators RTRL, SnAp-1 and UORO "
        "(jbptt.forward_mode; plotted at depth T)",
    )
    _cli.add_quick(p, QUICK)
    p.add_argument("--out", default="results", help="output folder")
    p.add_argument("--no-progress", action="store_true", help="hide progress bar")
    p.add_argument(
        "--replot",
        action="store_true",
        help="only redraw OUT/bias_sweep.png from OUT/bias_sweep.{csv,json}",
    )
    p.add_argument(
        "--devices",
        type=_cli.positive_int,
        default=None,
        help="split the samples over this many devices (None: one; every "
        "device of every process with --coordinator/--distributed; "
        "on CPU set XLA_FLAGS=--xla_force_host_platform_device_"
        "count=N first)",
    )
    p.add_argument(
        "--on-mismatch",
        default="raise",
        choices=("raise", "new", "overwrite"),
        help="if --out holds rows of another configuration: refuse "
        "(raise), write beside them (new) or start afresh "
        "(overwrite)",
    )
    _cli.add_distributed(p)
    args = _cli.parse(p, argv, QUICK)
    # Several processes: joined before any JAX call; each runs every point,
    # its share of each sweep's samples on its devices, and process 0 writes.
    if _cli.start_distributed(p, args)[1] > 1 and args.devices is None:
        args.devices = jax.device_count()
    if "lru" in args.cells and not all(
        0.0 <= args.r_min < r <= 1.0 for r in args.r_max
    ):
        p.error(
            f"--r-min and --r-max must satisfy 0 ≤ r_min < r_max ≤ 1, got "
            f"--r-min {args.r_min} --r-max {args.r_max}"
        )
    if args.samples < 4:
        p.error(f"--samples must be ≥ 4, got {args.samples}")
    if args.points > 1 and args.train_steps < args.points - 1:
        # train_steps // (points - 1) = 0 steps between points: every point
        # would be the initial parameters again.
        p.error(
            f"--points {args.points} needs --train-steps ≥ {args.points - 1} "
            f"for distinct points along the trajectory, got {args.train_steps}"
        )
    if max(args.delays) >= args.T:
        p.error(f"--delays must be < T = {args.T}, got {args.delays}")
    if args.ks is None:
        if args.quick:
            args.ks = sorted({k for k in (1, 2, 4) if k < args.T} | {args.T})
        else:
            args.ks = [2**i for i in range(args.T.bit_length()) if 2**i <= args.T]
    if max(args.ks) > args.T:
        p.error(f"--ks must be ≤ T = {args.T}, got {args.ks}")
    if len(set(args.ks)) != len(args.ks):
        p.error(f"--ks must be distinct, got {args.ks}")
    if args.devices is not None and not 1 <= args.devices <= jax.device_count():
        p.error(
            f"--devices must be between 1 and the {jax.device_count()} "
            "available device(s)"
        )
    return args


# Arguments that do not change the numbers, left out of the config hash.
NOT_CONFIG = ("out", "no_progress", "devices", "on_mismatch", "replot")


def run_config(args) -> dict:
    """The configuration that identifies the rows (hashed by jbptt.runs).

    The LRU's ring enters only when an LRU is swept, so runs without one keep
    the configuration (and resume) they had before the flags existed."""
    skip = NOT_CONFIG + (() if "lru" in args.cells else ("r_max", "r_min"))
    return {k: v for k, v in vars(args).items() if k not in skip}


def cell_variants(args) -> list[tuple[str, str, object]]:
    """``(row name, base cell, cell)`` per swept cell: one LRU per ``r_max``.

    The base cell picks the seed (:data:`experiments.tasks.CELL_ORDER`), so
    the LRU variants share their draws (B, C, phases, data) and differ only
    in their eigenvalues' moduli."""
    out = []
    for name in args.cells:
        if name != "lru":
            out.append((name, name, tasks.CELLS[name]()))
            continue
        for r in args.r_max:
            cell = jbptt.cells.lru(r_min=args.r_min, r_max=r)
            out.append((f"lru(r_max={r:g})", name, cell))
    return out


# ------------------------------------------------------------ estimators ---


def poly_tail_for_depth(k: float, T: int, alpha: float = 4.0):
    """Poly-tail ARTBP whose expected depth E[min(L, T)] is ``k``, or None
    when no schedule has that depth (k ≤ 1 or k ≥ T)."""
    if not 1 < k < T:
        return None
    e = est.artbp_matched(float(k), "poly_tail", alpha, T=T)
    hp = {"L0": e.hparams["L0"], "alpha": alpha}
    return e._replace(name=f"artbp-poly(k={k:g})", hparams=hp)


def geometric_for_depth(k: float, T: int):
    """Constant-c ARTBP whose expected depth E[min(L, T)] is ``k``, or None
    when 1 < k < T fails (depth T would need c = 0: full BPTT)."""
    if not 1 < k < T:
        return None
    c = est.artbp_matched(float(k), T=T).hparams["c"]
    return est.artbp(c)._replace(name=f"artbp-geom(k={k:g})", hparams={"c": c})


def make_estimators(ks, T, forward_mode=False, forward=FORWARD):
    """Full BPTT, then TBPTT(k), ARTBP geometric and poly-tail per k, then
    (``forward_mode``) RTRL, SnAp-1 and UORO, which never truncate.

    Both ARTBP families are matched to TBPTT(k) on the same convention,
    ``expected_depth(T) = E[min(L, T)] = k``; for k ≥ T only TBPTT (= full
    BPTT) is run."""
    out = [("full", float(T), est.full())]
    if forward_mode:
        out += [
            (name, float(T), getattr(jbptt.forward_mode, name)()) for name in forward
        ]
    for k in ks:
        out.append(("tbptt", k, est.tbptt(k)))
    for family, make in (
        ("artbp-geom", geometric_for_depth),
        ("artbp-poly", poly_tail_for_depth),
    ):
        for k in ks:
            e = make(float(k), T)
            if e is not None:
                out.append((family, k, e))
    return out


# ------------------------------------------------------------ trajectory ---


def trajectory(model, task, params, h0, args, key, dtype):
    """Params at ``args.points`` evenly spaced steps of Adam on full BPTT."""
    grad_fn = jbptt.value_and_grad(model.cell, model.loss_fn)
    opt = optax.adam(args.lr)
    n_seg = max(args.points - 1, 1)
    seg = args.train_steps // n_seg if args.points > 1 else 0

    @jax.jit
    def train(params, state, key):
        def step(carry, k):
            params, state = carry
            xs, ys = task.sample(k, args.T, args.batch)
            xs, ys = xs.astype(dtype), ys.astype(dtype)
            (L, _), g = grad_fn(params, h0, xs, ys)
            upd, state = opt.update(g, state, params)
            return (optax.apply_updates(params, upd), state), L / args.T

        (params, state), losses = jax.lax.scan(
            step, (params, state), jax.random.split(key, seg)
        )
        return params, state, jnp.mean(losses[-max(seg // 10, 1) :])

    state = opt.init(params)
    yield 0, params, float("nan")
    for i in range(1, args.points):
        params, state, loss = train(params, state, jax.random.fold_in(key, i))
        yield i * seg, params, float(loss)


# ----------------------------------------------------------- closed form ---


def _closed_row(cell_name, step, loss, family, k, rel, g_norm):
    nan = float("nan")
    r = dict.fromkeys(COLUMNS, nan)
    r.update(cell=cell_name, train_step=step, train_loss=loss, family=family, k=k)
    r.update(estimator=f"{family}(k={k:g})", expected_depth=float(k), windows=nan)
    r.update(n_samples=1, rel_bias=rel, rel_bias_sq=rel**2, rel_variance=0.0)
    r.update(rel_mse=rel**2, grad_norm=g_norm)
    return r


def closed_form_rows(model, problem, params, g, ks, meta) -> list[dict]:
    """The LRU's closed-form TBPTT(k) bias per k, relative to ‖g‖ (flat
    exact gradient): exact, and |λ|-only (the mean over units of the
    stationary form, for k < T: it assumes T ≫ k); ``meta``: (cell, step,
    loss)."""
    g_norm = float(jnp.linalg.norm(g))
    lam, _ = model.cell.diagonal.gates(params, problem.xs[:1])  # λ: [H]
    modulus = jnp.abs(lam)
    rows = []
    for k in ks:
        bias = _bias_fn(model, k)(params, problem.h0, problem.xs, problem.ys)
        rel = float(jnp.linalg.norm(ravel_pytree(bias)[0])) / g_norm
        rows.append(_closed_row(*meta, "closed-form", k, rel, g_norm))
        if k < problem.xs.shape[0]:  # one chunk (k ≥ T) drops nothing
            f = jbptt.diagnostics.geometric_truncation_bias(modulus, k)
            rows.append(_closed_row(*meta, "geometric", k, float(jnp.mean(f)), g_norm))
    return rows


def _bias_fn(model, k):
    def bias(params, h0, xs, ys):
        return jbptt.diagnostics.diagonal_truncation_bias(
            model.cell, model.loss_fn, params, h0, xs, ys, k
        )

    return jax.jit(bias)


# ------------------------------------------------------------------ run ---


def run(args, results: runs.ResultFile | None = None) -> list[dict]:
    """All rows; with ``results``, each point's rows are appended as soon as
    they are done and points already there are skipped (resume)."""
    from tqdm.auto import tqdm

    task = tasks.delayed_sum(tuple(args.delays))
    rows = []
    variants = cell_variants(args)
    bar = tqdm(
        total=len(variants) * args.points,
        disable=args.no_progress,
        desc="bias sweep",
        unit="point",
    )
    key = jax.random.key(args.seed)
    for cell_name, base, cell in variants:
        cell_key = jax.random.fold_in(key, tasks.CELL_ORDER.index(base))
        k_prob, k_train, k_sweep = jax.random.split(cell_key, 3)
        model, problem = tasks.make_problem(
            task, cell, k_prob, args.T, args.hidden, args.batch
        )
        jbptt.checks.check_finite(xs=problem.xs, ys=problem.ys)
        # A complex state (the LRU) has exact diagonal RTRL only.
        forward = ("rtrl",) if jnp.iscomplexobj(problem.h0) else FORWARD
        specs = make_estimators(args.ks, args.T, args.forward_mode, forward)
        estimators = [e for _, _, e in specs]
        run_sweep = sweep.make_sweep(
            model.cell,
            model.loss_fn,
            estimators,
            args.samples,
            chunk=args.chunk,
            mesh=args.devices,
        )
        points = trajectory(
            model, task, problem.params, problem.h0, args, k_train, problem.xs.dtype
        )
        for step, params, loss in points:
            if results is not None and all(
                results.done((cell_name, step, e.name)) for e in estimators
            ):
                bar.update(1)
                continue
            bar.set_postfix(cell=cell_name, step=step)
            k_point = jax.random.fold_in(k_sweep, step)  # independent per point
            g, stats = run_sweep(params, problem.h0, problem.xs, problem.ys, k_point)
            res = sweep.to_result(estimators, stats, g, args.T, args.samples)
            point_rows = []
            for (family, k, _), r in zip(specs, res.rows(), strict=True):
                r.update(
                    cell=cell_name, train_step=step, train_loss=loss, family=family, k=k
                )
                r["rel_mse"] = r["rel_bias_sq"] + r["rel_variance"]
                point_rows.append({c: r[c] for c in COLUMNS})
            if base == "lru":
                meta = (cell_name, step, loss)
                point_rows += closed_form_rows(model, problem, params, g, args.ks, meta)
            if results is not None:
                results.extend(point_rows)
            rows.extend(point_rows)
            bar.update(1)
    bar.close()
    return rows if results is None else results.rows()


# ---------------------------------------------------------------- output ---


def figure_title(args) -> str:
    """The run in one line: task, T, batch, samples, seed (figure and summary)."""
    task = tasks.delayed_sum(tuple(args.delays)).name
    return (
        f"{task}, T = {args.T}, batch {args.batch}, hidden {args.hidden}, "
        f"{args.samples} samples per random estimator, seed {args.seed}; "
        f"{args.points} points along {args.train_steps} Adam steps of full BPTT"
    )


def print_summary(title, headline, last, wall, base, file=None):
    """The one summary ``main`` prints: each cell's headline table and where
    the files are (every estimator at every point is in the CSV and JSON)."""
    file = file or sys.stdout
    print(f"\nbias sweep: {title} ({wall:.0f} s)", file=file)
    print(
        f"summary (train step {last}; bias and variance relative to ‖g‖, "
        "ARTBP with its 95% CI):",
        file=file,
    )
    for cell, table in headline.items():
        print(f"\n{cell}\n{table}", file=file)
    print(
        f"\nevery estimator at every point: {base}.csv (all columns), "
        f"{base}.json (config, versions, bias rows)",
        file=file,
    )


def headline_table(rows) -> str:
    """Markdown, one line per k: TBPTT(k) beside ARTBP at the same depth.

    ``rows`` are those of one cell at one trajectory point.
    """

    def cell(fam, k):
        r = next((r for r in rows if r["family"] == fam and r["k"] == k), None)
        if r is None:
            return "–"
        if fam == "tbptt":
            return f"{r['rel_bias']:.3f}"
        return (
            f"{r['rel_bias']:.3f} [{r['rel_bias_lo']:.3f}, "
            f"{r['rel_bias_hi']:.3f}] / {r['rel_variance']:.3g}"
        )

    ks = sorted({r["k"] for r in rows if r["family"] == "tbptt"})
    lines = [
        "| k | TBPTT(k) bias | ARTBP geometric: bias [95% CI] / variance "
        "| ARTBP poly-tail: bias [95% CI] / variance |",
        "|---:|---:|---|---|",
    ]
    for k in ks:
        lines.append(
            f"| {k:g} | {cell('tbptt', k)} | {cell('artbp-geom', k)} | "
            f"{cell('artbp-poly', k)} |"
        )
    return "\n".join(lines)


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)


def plot(rows, path, cells, notes=None, title=None):
    """Bias (top) and one sample's error (bottom) against expected depth, per
    cell (:func:`jbptt.plotting.bias_variance`).

    Colour: estimator family; line style: point along the trajectory. The
    lower panel shows the variance of random estimators (filled) and the
    squared bias of deterministic ones (open; their variance is 0), so one
    sample's error E‖ĝ − g‖² = bias² + variance can be compared. ``title``:
    the run (task, T, batch, samples, seed) above the panels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    present = {r["family"] for r in rows}
    families = FAMILIES + tuple(f for f in FORWARD + CLOSED if f in present)
    style = {
        f: {"marker": m, "label": LABELS.get(f, f)} for f, m in DETERMINISTIC.items()
    }
    style["closed-form"]["color"] = "tab:brown"
    style["geometric"]["color"] = "tab:gray"
    styles = [":", "--", "-", "-."]
    steps = sorted({r["train_step"] for r in rows})
    fig, axes = plt.subplots(
        2,
        len(cells),
        figsize=(max(5.4 * len(cells), 8.0), 9.0),
        squeeze=False,
        constrained_layout=True,
    )
    handles = {}
    for j, cell in enumerate(cells):
        ax_b, ax_v = axes[0, j], axes[1, j]
        v_all, exact = [], 0
        for s_i, step in enumerate(steps):
            ls = styles[s_i % len(styles)] if len(steps) > 1 else "-"
            point = [
                r
                for fam in families
                for r in rows
                if r["cell"] == cell and r["train_step"] == step and r["family"] == fam
            ]
            for h in plotting.bias_variance(
                point, (ax_b, ax_v), ls=ls, style=style, legend=False
            ):
                handles.setdefault(h.get_label(), h)
            for r in point:
                if r["family"] in DETERMINISTIC:
                    big = r["rel_bias"] > 1e-3  # k = T: exact up to round-off
                    exact += not big
                    v_all += [r["rel_bias"] ** 2] if big else []
                else:
                    v_all.append(r["rel_variance"])
        ax_b.set_title(f"{cell}: bias")
        ax_b.set_ylim(-0.02, 1.05)
        note = _cli.set_log_scale(ax_v, v_all, label=f"{cell} lower panel")
        if note and notes is not None:
            notes.append(note)
        if exact:
            ax_v.text(
                0.98,
                0.02,
                "deterministic estimators at k = T: exact (bias² ≈ 0, not drawn)",
                transform=ax_v.transAxes,
                ha="right",
                fontsize=7,
                color="gray",
            )
        ax_v.set_ylabel(
            "one sample's error ‖ĝ − g‖² / ‖g‖², by part:\n"
            "variance (filled) or squared bias (open)"
        )
        ax_v.set_title(f"{cell}: variance vs squared bias")
    legend = list(handles.values())
    if len(steps) > 1:
        legend += [
            Line2D(
                [],
                [],
                color="gray",
                ls=styles[i % len(styles)],
                label=f"train step {st}",
            )
            for i, st in enumerate(steps)
        ]
    if title:
        run, _, points = title.partition("; ")
        fig.suptitle(
            f"Bias and variance of gradient estimators against the exact gradient\n"
            f"{run}\n{points}",
            fontsize=9,
        )
    # One legend below the panels, never over the data.
    fig.legend(
        handles=legend,
        loc="outside lower center",
        ncol=min(len(legend), max(2, round(fig.get_figwidth() / 3.2))),
        fontsize=8,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.replot:
        print(f"wrote:\n  {replot(args.out)}")
        return None
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    if jax.process_index() == 0:  # the only process that writes
        os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, "bias_sweep")
    # Finished rows go to bias_sweep.jsonl as they are done; rerunning the
    # same command after an interruption skips them (jbptt.runs).
    try:
        results = runs.ResultFile(
            base + ".jsonl",
            run_config(args),
            key=("cell", "train_step", "estimator"),
            on_mismatch=args.on_mismatch,
        )
    except ValueError as err:  # another configuration's rows: exit 1, say why
        raise SystemExit(
            f"error: {err}\nOn the command line: --out DIR, or --on-mismatch "
            "new|overwrite."
        ) from err
    base = os.path.splitext(results.path)[0]  # differs under --on-mismatch new
    if results.resumed:
        print(f"resuming: {results.resumed} rows already in {results.path}")
    t0 = time.perf_counter()
    rows = run(args, results)
    if jax.process_index() != 0:  # process 0 writes the files
        return rows
    wall = time.perf_counter() - t0
    out = _cli.Run()
    out.step("CSV", write_csv, rows, base + ".csv")
    out.wrote(base + ".csv")
    names = [name for name, _, _ in cell_variants(args)]
    title = figure_title(args)
    if out.step("plot", plot, rows, base + ".png", names, out.notes, title) is None:
        out.wrote(base + ".png")
    last = max(r["train_step"] for r in rows)
    headline = {
        c: headline_table(
            [r for r in rows if r["cell"] == c and r["train_step"] == last]
        )
        for c in names
    }
    print_summary(title, headline, last, wall, base)
    out.finish(
        base + ".json",
        {
            "task": tasks.delayed_sum(tuple(args.delays)).name,
            "bias_ci": "95% normal interval of the unbiased U-statistic for "
            "‖E ĝ − g‖², Hoeffding variance (jbptt.sweep docstring)",
            "wall_time_s": wall,
            "headline": headline,
            # every row's bias and variance, at every point
            "bias_rows": [{c: r[c] for c in JSON_FIELDS} for r in rows],
        },
        # every flag, less the LRU's ring when no LRU is swept (as run_config)
        config={
            k: v
            for k, v in vars(args).items()
            if k in NOT_CONFIG or k in run_config(args)
        },
        seed=args.seed,
    )
    return rows


def replot(out: str) -> str:
    """Redraw ``bias_sweep.png`` from ``bias_sweep.csv`` (every row, with the
    expected depths the JSON leaves out) and the settings in
    ``bias_sweep.json`` (no sweep)."""
    import json

    base = os.path.join(out, "bias_sweep")
    with open(base + ".json") as f:
        args = argparse.Namespace(**json.load(f)["config"])

    def value(k, v):  # the CSV's text back to the row's types
        if k in ("cell", "estimator", "family"):
            return v
        return int(v) if k == "train_step" else float(v)

    with open(base + ".csv") as f:
        rows = [{k: value(k, v) for k, v in r.items()} for r in csv.DictReader(f)]
    names = list(dict.fromkeys(r["cell"] for r in rows))  # the run's cell order
    plot(rows, base + ".png", names, title=figure_title(args))
    return base + ".png"


if __name__ == "__main__":
    main()
