r"""Shared cuts against each stream's own: what online ARTBP estimates on a batch.

Online training (:func:`jbptt.train.train`) cuts a batch of B streams at
shared points, where it updates. ``stream_cuts=`` also cuts every stream by a
law of its own, drawn independently per stream; a link's weight is the
product of the two laws' weights (zero where either cuts, else both
compensations), so for ARTBP laws both estimators are unbiased.

This experiment measures both on the default task (an LSTM on
``delayed_sum((2, 8, 24))``, ``experiments/tasks.py``), at freshly
initialised params, against the exact gradient of the batch loss: for each
target depth k, geometric (constant-probability) ARTBP laws whose union cuts
every stream with probability 1/k per step, split between a shared part
``c_s = 1/(m k)`` (one update every m·k steps on average) and each stream's
own part ``c_o`` with ``(1 − c_s)(1 − c_o) = 1 − 1/k``. ``m = 1`` is the
shared estimator (no cuts of a stream's own); larger m makes the streams'
truncations more independent and the updates rarer. TBPTT(k) is the
deterministic, biased reference at the same depth.

Reported per configuration, over ``--samples`` draws of the link weights
(``train.link_weights``: exactly what ``train`` uses): relative bias
‖E ĝ − ∇L‖/‖∇L‖ with its standard error (the bias of an unbiased estimator
is within a few standard errors of 0), relative variance
E‖ĝ − E ĝ‖²/‖∇L‖², a stream's mean segment length (T over its number of
segments; the ``depth`` column) and the number of updates (shared segments).

Run ``python -m experiments.stream_cuts --help``.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jbptt
from experiments import _cli, tasks
from jbptt import estimators

QUICK = {"T": 48, "batch": 4, "hidden": 4, "ks": "4", "ms": "1,2", "samples": 16}


def parse_args(argv=None):
    p = _cli.parser("python -m experiments.stream_cuts", __doc__.split("\n\n")[0])
    p.add_argument("--T", type=_cli.positive_int, default=256, help="stream length")
    p.add_argument("--batch", type=_cli.positive_int, default=16, help="streams B")
    p.add_argument("--hidden", type=_cli.positive_int, default=16, help="LSTM units")
    p.add_argument("--ks", default="8,32", help="per-stream depths k")
    p.add_argument(
        "--ms", default="1,2,4,8", help="update interval in units of k (1: shared)"
    )
    p.add_argument("--samples", type=_cli.positive_int, default=256, help="draws")
    p.add_argument("--seed", type=_cli.nonneg_int, default=0, help="PRNG seed")
    p.add_argument("--out", default="results", help="output folder")
    p.add_argument("--replot", action="store_true",
                   help="only redraw OUT/stream_cuts.png from its JSON")  # fmt: skip
    _cli.add_quick(p, QUICK)
    args = _cli.parse(p, argv, QUICK)
    args.ks = [int(k) for k in str(args.ks).split(",")]
    args.ms = [int(m) for m in str(args.ms).split(",")]
    if any(k < 2 or k >= args.T for k in args.ks):
        raise SystemExit(f"--ks must lie in [2, T={args.T}), got {args.ks}.")
    if any(m < 1 for m in args.ms):
        raise SystemExit(f"--ms must be positive, got {args.ms}.")
    return args


def laws(k: int, m: int):
    """Shared and own constant cut probabilities: ``c_s = 1/(m k)`` and
    ``c_o`` with ``(1 − c_s)(1 − c_o) = 1 − 1/k`` (a stream's cuts: 1/k)."""
    c_s = 1.0 / (m * k)
    c_o = 1.0 - (1.0 - 1.0 / k) / (1.0 - c_s)
    return c_s, c_o


def depth_and_updates(W: np.ndarray, shared: np.ndarray):
    """A stream's mean segment length (T over its segments, averaged over
    streams: k for TBPTT(k), about 1/c for ARTBP(c)) and the number of
    shared segments (updates)."""
    T = W.shape[0]
    segments = 1 + np.sum(W[1:] == 0, axis=0)
    return float(np.mean(T / segments)), int(np.sum(shared[1:] == 0)) + 1


def measure(grad, exact, draws):
    """Relative bias (± its standard error) and variance of the draws."""
    g = np.stack([np.asarray(grad(jnp.asarray(W))) for W in draws])
    norm2 = float(exact @ exact)
    mean = g.mean(0)
    bias = float(np.linalg.norm(mean - exact) / np.sqrt(norm2))
    dev2 = np.sum((g - mean) ** 2, axis=1)
    var = float(dev2.sum() / max(len(g) - 1, 1)) / norm2
    se = float(np.sqrt(var / len(g)))  # ‖E ĝ − mean‖ / ‖∇L‖, one sigma
    return bias, se, var


def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        print(f"wrote:\n  {replot(Path(args.out))}")
        return None
    jax.config.update("jax_enable_x64", True)
    t0 = time.time()
    task = tasks.delayed_sum((2, 8, 24))
    model, prob = tasks.make_problem(
        task, "lstm", jax.random.key(args.seed), args.T, args.hidden, args.batch
    )
    B = args.batch
    vg = jbptt.value_and_grad(model.cell, model.loss_fn)

    @jax.jit
    def grad(W):
        _, g = vg(prob.params, prob.h0, prob.xs, prob.ys, W)
        return jnp.concatenate([jnp.ravel(a) for a in jax.tree_util.tree_leaves(g)])

    exact = np.asarray(grad(jnp.ones((args.T, B))))
    rows = []
    for k in args.ks:
        w = np.asarray(estimators.tbptt(k).sample(None, args.T)[0][0])
        W = np.broadcast_to(w[:, None], (args.T, B))
        bias, _, _ = measure(grad, exact, [W])
        depth, updates = depth_and_updates(W, W[:, 0])
        rows.append(
            {"k": k, "estimator": f"TBPTT({k})", "m": 1, "c_shared": None,
             "c_own": 0.0, "updates": updates, "depth": depth,
             "rel_bias": bias, "bias_se": 0.0, "rel_variance": 0.0}
        )  # fmt: skip
        for m in args.ms:
            c_s, c_o = laws(k, m)
            shared_est = estimators.artbp(c_s)
            own = estimators.artbp(c_o) if c_o > 0 else None
            draws, depths, ups = [], [], []
            for s in range(args.samples):
                key = jax.random.fold_in(jax.random.key(args.seed + 1), 1000 * k + s)
                Wd = jbptt.train.link_weights(
                    shared_est, key, args.T, batch_shape=(B,), stream_cuts=own
                )
                Wd = np.broadcast_to(Wd.reshape(args.T, -1), (args.T, B))
                sh = jbptt.train.link_weights(shared_est, key, args.T)
                d, u = depth_and_updates(Wd, sh)
                draws.append(Wd)
                depths.append(d)
                ups.append(u)
            bias, se, var = measure(grad, exact, draws)
            name = "ARTBP shared" if own is None else f"ARTBP shared × own (m={m})"
            rows.append(
                {"k": k, "estimator": name, "m": m, "c_shared": c_s, "c_own": c_o,
                 "updates": float(np.mean(ups)), "depth": float(np.mean(depths)),
                 "rel_bias": bias, "bias_se": se, "rel_variance": var}
            )  # fmt: skip
            print(
                f"k={k:3d} m={m}: {name:28s} bias {bias:.3g} ± {se:.2g}, "
                f"variance {var:.3g}, depth {np.mean(depths):.1f}, "
                f"updates {np.mean(ups):.1f}",
                flush=True,
            )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = _cli.Run()
    png = run.step("plot", plot, out / "stream_cuts.png", rows, args)
    if png is not None:
        run.wrote(str(png))
    summary = {"rows": rows, "seconds": time.time() - t0}
    cols = ["k", "estimator", "updates", "depth", "rel_bias", "bias_se", "rel_variance"]
    run.finish(
        str(out / "stream_cuts.json"), summary, config=vars(args), seed=args.seed,
        rows=rows, columns=cols,
    )  # fmt: skip
    return rows


def plot(path, rows, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4))
    for k in args.ks:
        r = [x for x in rows if x["k"] == k and x["c_shared"] is not None]
        (line,) = ax.plot(
            [x["updates"] for x in r], [x["rel_variance"] for x in r], "o-",
            label=f"ARTBP, stream depth {k} (m = {', '.join(str(x['m']) for x in r)})",
        )  # fmt: skip
        tb = next(x for x in rows if x["k"] == k and x["c_shared"] is None)
        ax.axhline(tb["rel_bias"] ** 2, color=line.get_color(), ls=":",
                   label=f"TBPTT({k}): squared relative bias")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ups = [x["updates"] for x in rows]
    ax.set_xticks([t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500)
                   if min(ups) / 2 <= t <= max(ups) * 2])  # fmt: skip
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    lo = min(x["rel_variance"] for x in rows if x["rel_variance"] > 0)
    ax.set_ylim(bottom=lo / 20)  # room for the legend under the curves
    ax.set_xlabel(f"updates per stream of T = {args.T} (fewer: more own cuts)")
    ax.set_ylabel("relative variance E‖ĝ − Eĝ‖² / ‖∇L‖²")
    ax.set_title(
        f"Online ARTBP, shared vs each stream's own cuts: LSTM({args.hidden}) on "
        f"delayed_sum(2, 8, 24),\nT = {args.T}, batch {args.batch} streams, "
        f"{args.samples} samples of the link weights, seed {args.seed}; "
        "m = updates every m·k steps",
        fontsize=8,
    )
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def replot(out: Path) -> Path:
    """Redraw ``stream_cuts.png`` from ``stream_cuts.json`` (no gradients),
    with the settings the run recorded."""
    import argparse
    import json

    meta = json.loads((out / "stream_cuts.json").read_text())
    return plot(out / "stream_cuts.png", meta["rows"],
                argparse.Namespace(**meta["config"]))  # fmt: skip


if __name__ == "__main__":
    main()
