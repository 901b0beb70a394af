"""Character-level language model on real text: online TBPTT vs ARTBP.

An LSTM (and a GRU) reads ``B`` contiguous streams of a character corpus and
predicts the next character, trained online: the state is carried along the
streams and the params are updated at every truncation point. TBPTT(k) cuts
every k steps; ARTBP (Tallec & Ollivier 2017) cuts at random with the
poly-tail schedule ``c_d = (α−1)/((α−2)L₀ + d)`` of mean length ``L₀ = k``
and reweights the surviving links by ``1/(1 − c)``, so its gradient is
unbiased. Both process every step once forward and once backward and make
about ``T/k`` updates: matched cost. We report validation bits per character
(bpc = mean cross-entropy / ln 2) against training wall-clock (compilation and
evaluation excluded) and against backward steps.

Default corpus: the Python standard library's own ``*.py`` files (no
download; see :func:`jbptt.data.load_corpus`); ``--corpus PATH`` takes any
UTF-8 text file or a directory with the Penn Treebank character files.

The paper (Tallec & Ollivier 2017, PTB characters, LSTM): "ARTBP slightly
outperforms truncated BPTT". Ours: see ``experiments/RESULTS.md``.

Run ``python -m experiments.char_lm --help``.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jbptt
from experiments import _cli
from jbptt import cells, data, estimators, truncation

CELLS = {"lstm": cells.lstm, "gru": cells.gru}


def one_hot(ids, V):
    return np.eye(V, dtype=np.dtype(jnp.result_type(float)))[ids]


def unigram_bpc(train, valid, V) -> float:
    """Bits per character of the best context-free model (train frequencies,
    add-one smoothed) on ``valid``: the bar a recurrent model must clear."""
    p = (np.bincount(train, minlength=V) + 1.0) / (len(train) + V)
    return float(-np.mean(np.log2(p[valid])))


_EVALS: dict = {}


def make_eval(model, V, ids, batch):
    """Jitted validation bpc on ``ids`` (from a zero state, ``batch`` streams)."""
    cache_key = (model.cell, V, len(ids), batch)
    if cache_key in _EVALS:
        return _EVALS[cache_key]
    s = data.streams(ids, batch)
    x, y = data.next_char_pairs(s)
    xs, ys = jnp.asarray(one_hot(x, V)), jnp.asarray(y)
    forward = jax.jit(jbptt.loss(model.cell, model.loss_fn))

    def bpc(params):
        h0 = model.cell.initial_state(params, (batch,))
        L, _ = forward(params, h0, xs, ys)
        return float(L) / len(ys) / math.log(2)

    _EVALS[cache_key] = bpc
    return bpc


def setup(cell_name, V, k, args):
    """Model, per-step loss and optimizer, built once per cell so that all runs
    of that cell share the compiled update."""
    model = jbptt.readout(CELLS[cell_name](), output_size=V, loss="xent")

    def loss_fn(p, out, yt):
        # mean per-step loss over a segment of nominal length k: the same
        # scale for both estimators, so one learning rate and clip fit both
        return model.loss_fn(p, out, yt) / k

    opt = optax.chain(optax.clip_by_global_norm(args.clip), optax.adam(args.lr))
    return model, loss_fn, opt


QUICK_SIZE = 64  # --quick pads segments to ≥ 64 steps: few compilations


class Record(NamedTuple):
    t_end: int  # steps trained after this segment
    length: int  # segment length
    loss: object  # mean per-step loss of the segment (device scalar)
    seconds: float  # training wall-clock so far (no compilation, no callbacks)


def run_one(setup_, est, k, corpus, args, key, quick):
    model, loss_fn, opt = setup_
    V = len(corpus.vocab)
    k_init, k_w = jax.random.split(key)
    params = model.init(k_init, V, args.hidden)
    s = data.streams(corpus.train, args.batch)[: args.steps + 1]
    x, y = data.next_char_pairs(s)
    xs, ys = one_hot(x, V), y
    T = len(ys)
    bpc = make_eval(model, V, corpus.valid[: args.valid_chars], args.eval_batch)
    curve = [{"t": 0, "seconds": 0.0, "updates": 0, "bpc": bpc(params)}]
    recs = []  # one record per segment: where it ended, its loss, the clock

    def record(e):
        recs.append(Record(e.start + e.length, e.length, e.loss, e.seconds))
        if e.start + e.length == T:  # the last segment: a final evaluation
            evaluate(e)

    def evaluate(e):
        if curve[-1]["t"] < e.start + e.length:
            t, p = e.start + e.length, e.state.params
            curve.append({"t": t, "seconds": e.seconds, "updates": e.index + 1,
                          "bpc": bpc(p)})  # fmt: skip

    jbptt.train.train(
        model.cell,
        loss_fn,
        params,
        xs,
        ys,
        opt,
        est,
        key=k_w,
        callbacks=[jbptt.train.every(args.eval_every, evaluate), record],
        min_bucket=QUICK_SIZE if quick else None,
        progress=not quick,
    )
    return curve, recs


def label(cell_name, est, k, alpha):
    if "k" in est.hparams:
        return f"{cell_name.upper()} TBPTT(k={k})"
    return f"{cell_name.upper()} ARTBP(L0={k}, a={alpha:g})"


# --quick sets these defaults only: flags given explicitly are kept.
QUICK = dict(
    max_chars=60_000,
    cells=["lstm"],
    k=8,
    hidden=32,
    batch=8,
    steps=600,
    valid_chars=2000,
    eval_every=200,
    eval_batch=10,
    lr=1e-2,
)


def parse_args(argv=None) -> argparse.Namespace:
    ap = _cli.parser(
        "python -m experiments.char_lm",
        "Character-level LM trained online with TBPTT(k) vs ARTBP at "
        "matched cost; validation bits per character against wall-clock and "
        "backward steps. Writes char_lm.{csv,json,png}.",
    )
    ap.add_argument(
        "--corpus",
        default=None,
        help="UTF-8 text file or PTB char directory (None: the "
        "Python standard library's *.py sources)",
    )
    ap.add_argument(
        "--max-chars",
        type=_cli.positive_int,
        default=2_000_000,
        help="cap on the corpus size in characters",
    )
    ap.add_argument(
        "--cells",
        nargs="+",
        default=["lstm", "gru"],
        choices=list(CELLS),
        help="cells to train",
    )
    ap.add_argument(
        "--k",
        type=_cli.positive_int,
        default=32,
        help="TBPTT truncation and ARTBP mean segment length",
    )
    ap.add_argument(
        "--alpha",
        type=_cli.positive_float,
        default=4.0,
        help="ARTBP poly-tail α (> 1)",
    )
    ap.add_argument("--hidden", type=_cli.positive_int, default=128, help="hidden size")
    ap.add_argument(
        "--batch", type=_cli.positive_int, default=32, help="parallel streams"
    )
    ap.add_argument(
        "--steps", type=_cli.positive_int, default=20_000, help="time steps per stream"
    )
    ap.add_argument(
        "--lr", type=_cli.positive_float, default=3e-3, help="Adam learning rate"
    )
    ap.add_argument(
        "--clip",
        type=_cli.positive_float,
        default=1.0,
        help="global-norm clip (> 0)",
    )
    ap.add_argument(
        "--valid-chars",
        type=_cli.positive_int,
        default=20_000,
        help="validation characters",
    )
    ap.add_argument(
        "--eval-batch",
        type=_cli.positive_int,
        default=50,
        help="validation streams",
    )
    ap.add_argument(
        "--eval-every",
        type=_cli.positive_int,
        default=1000,
        help="time steps between validations",
    )
    ap.add_argument("--seed", type=_cli.nonneg_int, default=0, help="PRNG seed")
    _cli.add_quick(ap, QUICK)
    ap.add_argument("--out", default="results", help="output folder")
    args = _cli.parse(ap, argv, QUICK)
    if args.alpha <= 1:
        ap.error(f"--alpha must be > 1 (finite mean segment length), got {args.alpha}")
    return args


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    corpus = data.load_corpus(args.corpus, max_chars=args.max_chars)
    print(
        f"corpus: {corpus.source}, {corpus.n_chars} chars "
        f"(train {len(corpus.train)}, valid {len(corpus.valid)}), "
        f"vocab {len(corpus.vocab)}"
    )
    ests = [
        estimators.tbptt(args.k),
        estimators.artbp(truncation.poly_tail(float(args.k), args.alpha)),
    ]
    key = jax.random.key(args.seed)
    rows, summary = [], []
    t0 = time.perf_counter()
    for cell_name in args.cells:
        setup_ = setup(cell_name, len(corpus.vocab), args.k, args)
        for est in ests:
            name = label(cell_name, est, args.k, args.alpha)
            curve, recs = run_one(setup_, est, args.k, corpus, args, key, args.quick)
            for c in curve:
                rows.append(
                    {
                        "run": name,
                        "cell": cell_name,
                        "estimator": "tbptt" if "k" in est.hparams else "artbp",
                        "t": c["t"],
                        "backward_steps": c["t"] * args.batch,
                        "updates": c["updates"],
                        "seconds": c["seconds"],
                        "valid_bpc": c["bpc"],
                    }
                )
            summary.append(
                {
                    "run": name,
                    "final_valid_bpc": curve[-1]["bpc"],
                    "best_valid_bpc": min(c["bpc"] for c in curve),
                    "initial_valid_bpc": curve[0]["bpc"],
                    "updates": len(recs),
                    "mean_segment_length": float(np.mean([r.length for r in recs])),
                    "train_seconds": recs[-1].seconds,
                }
            )
            print(
                f"{name:28s} valid bpc {curve[0]['bpc']:.3f} -> "
                f"{curve[-1]['bpc']:.3f}  ({len(recs)} updates, "
                f"{recs[-1].seconds:.1f} s)"
            )
    V = len(corpus.vocab)
    uni = unigram_bpc(corpus.train, corpus.valid[: args.valid_chars], V)
    print(f"unigram baseline: {uni:.3f} bpc")
    meta = {
        "unigram_valid_bpc": uni,
        "corpus": {
            "source": corpus.source,
            "n_chars": corpus.n_chars,
            "train": len(corpus.train),
            "valid": len(corpus.valid),
            "test": len(corpus.test),
            "vocab": len(corpus.vocab),
        },
        "summary": summary,
        "seconds": time.perf_counter() - t0,
    }
    run = _cli.Run()
    run.step("CSV", write_csv, out / "char_lm.csv", rows)
    run.wrote(str(out / "char_lm.csv"))
    if run.step("plot", plot, out / "char_lm.png", rows, summary, meta) is None:
        run.wrote(str(out / "char_lm.png"))
    return run.finish(
        str(out / "char_lm.json"),
        meta,
        config=dict(vars(args)),
        seed=args.seed,
        rows=[
            {
                "run": s["run"],
                "initial bpc": s["initial_valid_bpc"],
                "final bpc": s["final_valid_bpc"],
                "best bpc": s["best_valid_bpc"],
                "updates": s["updates"],
                "seconds": s["train_seconds"],
            }
            for s in summary
        ]
        + [{"run": "unigram baseline", "final bpc": uni}],
    )


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)


def plot(path, rows, summary, meta):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    for s in summary:
        r = [x for x in rows if x["run"] == s["run"]]
        ls = "-" if "TBPTT" in s["run"] else "--"
        a1.plot(
            [x["backward_steps"] for x in r],
            [x["valid_bpc"] for x in r],
            ls,
            marker=".",
            label=f"{s['run']}: {s['updates']} updates",
        )
        a2.plot(
            [x["seconds"] for x in r],
            [x["valid_bpc"] for x in r],
            ls,
            marker=".",
            label=s["run"],
        )
    a1.set_xlabel("backward steps (time steps × streams)")
    a2.set_xlabel("training wall-clock (s)")
    for a in (a1, a2):
        a.axhline(
            meta["unigram_valid_bpc"],
            color="gray",
            ls=":",
            lw=1,
            label="unigram baseline",
        )
    a1.set_ylabel("validation bits per character")
    # one legend, below the panels (runs with their parameter-update counts)
    handles, labels = a1.get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=8
    )
    c = meta["corpus"]
    fig.suptitle(
        f"Char LM, online TBPTT vs ARTBP — {c['source']}, "
        f"{c['n_chars']:,} chars, vocab {c['vocab']}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.08 * (1 + len(summary) // 3), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
