r"""Adaptive truncation (Aicher, Foti & Fox 2019) on the default bias-sweep task.

An Elman network (tanh) learns ``delayed_sum((2, 8, 24))``
(``experiments/tasks.py``) online along one stream with adaptive TBPTT
(:func:`jbptt.estimators.adaptive_tbptt`): every ``--every`` updates,
:func:`jbptt.adaptive.train_adaptive` measures the per-lag parameter norms on
the stream ahead, fits their geometric decay and picks the smallest k whose
bound on TBPTT(k)'s relative bias is ≤ δ. At each re-estimation we record
the chosen k and the *exact* relative bias of TBPTT(k) there
(:func:`jbptt.sweep.sweep` against full BPTT on the same window), to check
it against δ.

Run ``python -m experiments.adaptive_truncation --help``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import optax

from experiments import _cli, tasks
from jbptt import estimators, sweep
from jbptt._src.adaptive import train_adaptive  # until train.Trainer re-chooses k

QUICK = {"steps": 96, "hidden": 8, "batch": 4, "max_lag": 16, "every": 2}


def parse_args(argv=None):
    p = _cli.parser("adaptive_truncation", __doc__.split("\n\n")[0])
    p.add_argument("--steps", type=_cli.positive_int, default=2000, help="stream")
    p.add_argument("--hidden", type=_cli.positive_int, default=32, help="units")
    p.add_argument("--batch", type=_cli.positive_int, default=32, help="streams")
    p.add_argument("--delta", type=_cli.positive_float, default=0.1, help="δ")
    p.add_argument("--max-lag", dest="max_lag", type=_cli.positive_int,
                   default=64, help="lags measured")  # fmt: skip
    p.add_argument("--every", type=_cli.positive_int, default=10,
                   help="updates between re-estimations")  # fmt: skip
    p.add_argument("--lr", type=_cli.positive_float, default=3e-3, help="Adam lr")
    p.add_argument("--seed", type=_cli.nonneg_int, default=0, help="PRNG seed")
    p.add_argument("--out", default="results", help="output folder")
    p.add_argument(
        "--replot",
        action="store_true",
        help="only redraw OUT/adaptive_truncation.png from its JSON",
    )
    _cli.add_quick(p, QUICK)
    return _cli.parse(p, argv, QUICK)


def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        print(f"wrote:\n  {replot(Path(args.out))}")
        return None
    jax.config.update("jax_enable_x64", True)
    t0 = time.time()
    task = tasks.delayed_sum((2, 8, 24))
    model, prob = tasks.make_problem(
        task, "elman", jax.random.key(args.seed), args.steps, args.hidden, args.batch
    )
    est = estimators.adaptive_tbptt(
        args.delta, max_lag=min(args.max_lag, args.steps), every=args.every
    )
    hists, ks = train_adaptive(
        model.cell, model.loss_fn, prob.params, prob.xs, prob.ys,
        optax.adam(args.lr), est, key=jax.random.key(1), h0=prob.h0,
    )  # fmt: skip
    rows, start, params, h = [], 0, prob.params, prob.h0
    for hist, k in zip(hists, ks, strict=True):
        n = int(sum(hist.length))
        span = min(args.steps - start, max(est.max_lag, args.every * k))
        win = slice(start, start + span)
        p = estimators.Problem(model.cell, model.loss_fn, params, h,
                          prob.xs[win], prob.ys[win])  # fmt: skip
        r = sweep.sweep(p, [estimators.tbptt(k)], jax.random.key(0), 4)
        rows.append({"step": start, "k": k, "exact_rel_bias": float(r.rel_bias[0]),
                     "delta": args.delta, "loss": float(hist.loss.mean())})  # fmt: skip
        params, h, start = hist.params, hist.h, start + n
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(_cli.table(rows))
    (out / "adaptive_truncation.json").write_text(
        json.dumps(
            {"config": vars(args), "rows": rows, "seconds": time.time() - t0}, indent=1
        )  # fmt: skip
    )
    plot(out / "adaptive_truncation.png", rows, args)
    print(f"wrote {out / 'adaptive_truncation.json'} and .png")
    return rows


def plot(path, rows, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.step(steps, [r["k"] for r in rows], where="post")
    a.set_xlabel("stream step")
    a.set_ylabel("chosen k")
    a.set_title("truncation length k chosen by the bias bound")
    b.plot(steps, [r["exact_rel_bias"] for r in rows], "o", label="exact relative "
           "bias of TBPTT(k) at the chosen k")  # fmt: skip
    b.axhline(args.delta, color="r", ls="--", label=f"target δ = {args.delta}")
    b.set_xlabel("stream step")
    b.set_ylabel("relative bias ‖E ĝ − g‖ / ‖g‖")
    b.set_title("the bias it gets, against full BPTT")
    b.legend()
    fig.suptitle(
        f"Adaptive TBPTT on delayed_sum(2, 8, 24): Elman({args.hidden}), one stream "
        f"of {args.steps} steps, batch {args.batch}, max lag {args.max_lag}, "
        f"k re-chosen every {args.every} updates, seed {args.seed}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def replot(out: Path) -> Path:
    """Redraw ``adaptive_truncation.png`` from ``adaptive_truncation.json``
    (no training), with the settings the run recorded."""
    import argparse

    meta = json.loads((out / "adaptive_truncation.json").read_text())
    path = out / "adaptive_truncation.png"
    plot(path, meta["rows"], argparse.Namespace(**meta["config"]))
    return path


if __name__ == "__main__":
    main()
