r"""The PES paper's variance study, redone with exact gradients.

An LSTM with 5 hidden units reads the built-in character corpus
(:func:`jbptt.data.load_corpus`) and predicts the next character over
T steps. At one parameter point, :func:`jbptt.sweep.sweep` measures the
relative bias ‖E ĝ − ∇L‖/‖∇L‖ and variance E‖ĝ − E ĝ‖²/‖∇L‖² of TBPTT(K),
ARTBP matched to depth K, truncated ES(K), PES(K) and UORO against the exact
gradient ∇L, for each truncation length K. ES-family estimators estimate the
gradient of the Gaussian-smoothed loss; their bias here is against ∇L, so it
includes the smoothing's O(σ²).

Run ``python -m experiments.pes_variance --help``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jbptt
from experiments import _cli
from jbptt import estimators, forward_mode, sweep

QUICK = {"T": 16, "ks": "4,16", "samples": 4, "pairs": 1, "max_chars": 20000}


def parse_args(argv=None):
    p = _cli.parser("pes_variance", __doc__.split("\n\n")[0])
    p.add_argument("--T", type=_cli.positive_int, default=1000, help="steps")
    p.add_argument(
        "--ks", default="1,2,5,10,20,50,100,200,500,1000", help="truncation lengths"
    )
    p.add_argument("--hidden", type=_cli.positive_int, default=5, help="LSTM units")
    p.add_argument("--samples", type=_cli.positive_int, default=64, help="draws")
    p.add_argument("--pairs", type=_cli.positive_int, default=4, help="ES pairs")
    p.add_argument("--sigma", type=_cli.positive_float, default=0.01, help="ES σ")
    p.add_argument("--max-chars", dest="max_chars", type=_cli.positive_int,
                   default=200000, help="corpus characters read")  # fmt: skip
    p.add_argument("--seed", type=_cli.nonneg_int, default=0, help="PRNG seed")
    p.add_argument("--out", default="results", help="output folder")
    p.add_argument("--replot", action="store_true",
                   help="only redraw OUT/pes_variance.png from its JSON")  # fmt: skip
    _cli.add_quick(p, QUICK)
    args = _cli.parse(p, argv, QUICK)
    args.ks = [int(k) for k in str(args.ks).split(",")]
    if any(k < 1 or k > args.T for k in args.ks):
        raise SystemExit(f"--ks must lie in [1, T={args.T}], got {args.ks}.")
    return args


def make_problem(args):
    corpus = jbptt.data.load_corpus(max_chars=args.max_chars)
    V = len(corpus.vocab)
    model = jbptt.readout(jbptt.cells.lstm(), V, "xent", vocab_size=V)
    key = jax.random.key(args.seed)
    params = model.init(key, args.hidden, args.hidden)
    text = corpus.train[: args.T + 1]
    xs_i, ys = text[:-1], text[1:]  # next-character pairs
    xs = model.encode(jnp.asarray(xs_i)[:, None], jnp.float64)
    ys = jnp.asarray(ys)[:, None]
    h0 = model.cell.initial_state(params, (1,))
    return estimators.Problem(model.cell, model.loss_fn, params, h0, xs, ys)


def make_estimators(K, args):
    """(family, estimator) at K; ARTBP of mean depth 1 is TBPTT(1): skipped."""
    out = [("TBPTT", estimators.tbptt(K))]
    if K > 1:
        out.append(("ARTBP", estimators.artbp_matched(K)))
    out.append(("truncated ES", estimators.truncated_es(args.sigma, args.pairs, K)))
    out.append(("PES", estimators.pes(args.sigma, pairs=args.pairs, K=K)))
    return out


FAMILIES = ("TBPTT", "ARTBP", "truncated ES", "PES")


def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        print(f"wrote:\n  {replot(Path(args.out))}")
        return None
    jax.config.update("jax_enable_x64", True)
    t0 = time.time()
    prob = make_problem(args)
    rows = []
    for K in args.ks:
        fams, ests = zip(*make_estimators(K, args), strict=True)
        res = sweep.sweep(prob, ests, jax.random.key(args.seed + K), args.samples)
        for i, fam in enumerate(fams):
            rows.append({"estimator": fam, "K": K,
                         "rel_bias": float(res.rel_bias[i]),
                         "rel_variance": float(res.rel_variance[i])})  # fmt: skip
    res = sweep.sweep(prob, [forward_mode.uoro()], jax.random.key(1), args.samples)
    uoro = {"estimator": "UORO", "K": args.T, "rel_bias": float(res.rel_bias[0]),
            "rel_variance": float(res.rel_variance[0])}  # fmt: skip
    rows.append(uoro)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(_cli.table(rows))
    (out / "pes_variance.json").write_text(
        json.dumps(
            {"config": vars(args), "rows": rows, "seconds": time.time() - t0}, indent=1
        )  # fmt: skip
    )
    plot(out / "pes_variance.png", rows, args)
    print(f"wrote {out / 'pes_variance.json'} and {out / 'pes_variance.png'}")
    return rows


def plot(path, rows, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, field in zip(axes, ("rel_bias", "rel_variance"), strict=True):
        for fam in FAMILIES:
            r = [x for x in rows if x["estimator"] == fam]
            # Zeros (exact, or a debiased bias below resolution) are not
            # drawn on the log axis: they leave gaps.
            y = np.array([x[field] for x in r], float)
            y[y <= 0] = np.nan
            ax.plot([x["K"] for x in r], y, "o-", label=fam)
        u = rows[-1]
        if u[field] > 0:
            ax.axhline(u[field], color="k", ls="--", label="UORO")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("truncation length K (ARTBP: expected depth)")
        ax.set_title(field.replace("_", " ") + " vs exact ∇L (zeros not drawn)")
    axes[0].set_ylabel("relative bias ‖E ĝ − ∇L‖ / ‖∇L‖")
    axes[1].set_ylabel("relative variance E‖ĝ − E ĝ‖² / ‖∇L‖²")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"LSTM({args.hidden}) next-character loss on one sequence of T = {args.T} "
        f"characters (batch 1), {args.samples} samples per estimator, ES σ = "
        f"{args.sigma:g} with {args.pairs} antithetic pairs, seed {args.seed}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def replot(out: Path) -> Path:
    """Redraw ``pes_variance.png`` from ``pes_variance.json`` (no sweep),
    with the settings the run recorded."""
    import argparse

    meta = json.loads((out / "pes_variance.json").read_text())
    path = out / "pes_variance.png"
    plot(path, meta["rows"], argparse.Namespace(**meta["config"]))
    return path


if __name__ == "__main__":
    main()
