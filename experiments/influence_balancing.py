r"""Influence balancing (Tallec & Ollivier 2017): where truncation gets the sign wrong.

The task. A linear recurrence of ``n = 23`` units driven by one scalar
parameter θ,

.. math::

    s_{t+1} = A s_t + θ v, \qquad A_{ii} = A_{i,i+1} = ½ \ (\text{else } 0),
    \qquad v = (\underbrace{+1, …, +1}_{p = 10}, \underbrace{−1, …, −1}_{n − p}),

with ``s_0 = 1`` (all ones), θ₀ = 0.5 and per-step loss
``ℓ_t = ½ (s_t⁽¹⁾ − 1)²``. Unit 1 sees θ through unit 2 after one step,
unit 3 after two, …: the positive units reach it first, the negative ones
later. In the steady state ``s⁽¹⁾ = −6θ``, so the optimum is θ* = −1/6.

The influence of θ on ``s⁽¹⁾`` through the last K steps is the truncated
sensitivity

.. math::

    S(K) = \sum_{k<K} (A^k v)_1 = +1,\ +10,\ +16.48,\ +0.566,\ −0.219,\ −6.000
    \quad (K = 1, 10, 20, 40, 41, ≥ 80).

TBPTT that looks back fewer than ~41 steps sees the wrong sign. Chunked
TBPTT(k) backpropagates the losses of a chunk 1..k steps, so its average
sensitivity is the mean of S(1..k), positive up to k ≈ 105: at every such k
its update pushes θ away from θ* and the loss grows. ARTBP with short mean
segments reweights the rare long ones so the expected gradient is the true
one, ``−6 (s⁽¹⁾ − 1)``, and converges.

The paper's result (Tallec & Ollivier 2017, §6 and abstract): on this task
"truncated BPTT displays unreliable performance, and in worst case
scenarios, divergence, while ARTBP converges reliably". Ours (see
``experiments/RESULTS.md``): TBPTT(k) with k ∈ {1, 10, 50} drifts away from
θ* with growing loss, TBPTT(200) (mean sensitivity −2.7) converges, and ARTBP
with poly-tail segments of mean length 16 converges, at the backward cost of
TBPTT(16).

Training is online along one stream: one SGD update per segment, step size
η = η₀/√(1 + t) at time step t (the paper's schedule).

Run ``python -m experiments.influence_balancing --help``.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jbptt
from experiments import _cli
from jbptt import cells, estimators, truncation

N_UNITS, N_POS = 23, 10
THETA0, THETA_STAR = 0.5, -1.0 / 6.0


def system(n: int = N_UNITS, p: int = N_POS):
    """``(A, v)``: A has ½ on the diagonal and superdiagonal; v = (+1×p, −1×(n−p))."""
    A = 0.5 * (np.eye(n) + np.eye(n, k=1))
    v = np.r_[np.ones(p), -np.ones(n - p)]
    return A, v


def truncated_sensitivity(K: int, n: int = N_UNITS, p: int = N_POS) -> float:
    """``S(K) = Σ_{k<K} (Aᵏ v)_1``: influence of θ on s⁽¹⁾ over the last K steps."""
    A, v = system(n, p)
    total, x = 0.0, v.copy()
    for _ in range(K):
        total += x[0]
        x = A @ x
    return float(total)


def cell(n: int = N_UNITS, p: int = N_POS):
    """The task as a :func:`jbptt.cells.from_fn` cell; params ``{"theta": θ}``.

    ``step(params, s, x) = (A s + θ v, (A s + θ v)₁)``; ``x`` is ignored.
    """
    A, v = system(n, p)

    def init(key, input_size=1, hidden_size=n):
        return {"theta": jnp.asarray(THETA0, jnp.result_type(float))}

    def initial_state(params, batch_shape=()):
        return jnp.ones(batch_shape + (n,), params["theta"].dtype)

    def step(params, s, x):
        s = s @ jnp.asarray(A, s.dtype).T + params["theta"] * jnp.asarray(v, s.dtype)
        return s, s[..., 0]

    return cells.from_fn(init, step, initial_state, name="influence_balancing")


def loss_fn(params, out_t, y_t):
    """``ℓ_t = ½ (s_t⁽¹⁾ − y_t)²`` with target y_t = 1."""
    return jnp.mean(0.5 * (out_t - y_t) ** 2)


def make_estimators(ks, artbp_mean, alpha):
    ests = [estimators.tbptt(k) for k in ks]
    ests.append(estimators.artbp(truncation.poly_tail(artbp_mean, alpha)))
    return ests


def es_study(T=200, K=10, sigma=0.1, pairs=1, ns=(1, 4, 16, 64), seed=0):
    """Mean of N ES-family gradient estimates at θ₀ against the exact gradient.

    On this task the loss is quadratic in θ and the dynamics are linear, so
    the Gaussian-smoothed gradient equals the exact one: PES and full-unroll
    antithetic ES are unbiased for ∇L and the RMS error of the mean of N
    estimates falls like 1/√N, while truncated ES(K) keeps TBPTT(K)'s bias
    (wrong sign for K ≤ 40). Rows: ``{estimator, N, rms_error, exact}``.
    """
    import jbptt

    c = cell()
    params = c.init(None)
    xs, ys = jnp.zeros((T, 1)), jnp.ones((T,))
    prob = estimators.Problem(c, loss_fn, params, c.initial_state(params), xs, ys)
    exact = float(
        jax.grad(lambda p: jbptt.loss(c, loss_fn)(p, prob.h0, xs, ys)[0])(params)[
            "theta"
        ]
    )
    ests = {
        f"ES(full, pairs={pairs})": estimators.es(sigma, pairs),
        f"PES(K={K})": estimators.pes(sigma, pairs=pairs, K=K),
        f"truncated ES(K={K})": estimators.truncated_es(sigma, pairs, K),
    }
    n_max, reps = max(ns), 16
    rows = []
    for i, (name, est) in enumerate(ests.items()):
        key = jax.random.key(seed + i)
        draws = np.asarray(jax.jit(lambda k, e=est: e.samples(
            prob, k, n_max * reps, chunk=256))(key))[:, 0]  # fmt: skip
        for N in ns:
            means = draws[: N * reps].reshape(reps, N).mean(axis=1)
            rms = float(np.sqrt(np.mean((means - exact) ** 2)))
            rows.append({"estimator": name, "N": N, "rms_error": rms, "exact": exact})
    return rows


def label(est, artbp_mean, alpha):
    if est.name.startswith("tbptt"):
        return f"TBPTT(k={est.hparams['k']})"
    return f"ARTBP(poly-tail L0={artbp_mean:g}, a={alpha:g})"


class Record(NamedTuple):
    t_end: int  # steps trained after this segment
    length: int  # segment length
    loss: float  # mean per-step loss of the segment
    seconds: float  # training wall-clock so far (no compilation, no callbacks)


def run_one(est, steps, eta0, key, mean_len):
    c = cell()
    params = c.init(key)
    # η = η₀/√(1+t) at time step t; one update per segment of mean length L̄,
    # so the u-th update happens near t = L̄·u.
    lr = lambda u: eta0 / jnp.sqrt(1.0 + mean_len * u)
    xs = np.zeros((steps, 1))
    ys = np.ones((steps,))
    recs, thetas = [], []

    def probe(e):  # θ after every update
        recs.append(Record(e.start + e.length, e.length, float(e.loss), e.seconds))
        thetas.append(float(e.state.params["theta"]))

    jbptt.train.train(
        c, loss_fn, params, xs, ys, optax.sgd(lr), est, key=key, callbacks=[probe]
    )
    return recs, thetas


# --quick sets these defaults only: flags given explicitly are kept.
QUICK = dict(steps=3000, ks=[1, 200], eta0=3e-3, es_study=False)


def parse_args(argv=None) -> argparse.Namespace:
    ap = _cli.parser(
        "python -m experiments.influence_balancing",
        "Influence balancing: online TBPTT(k) vs ARTBP (Tallec & "
        "Ollivier 2017). Writes influence_balancing.{csv,json,png}.",
    )
    ap.add_argument(
        "--steps", type=_cli.positive_int, default=60_000, help="time steps"
    )
    ap.add_argument(
        "--ks",
        type=_cli.positive_int,
        nargs="+",
        default=[1, 10, 50, 200],
        help="TBPTT truncation lengths",
    )
    ap.add_argument(
        "--artbp-mean",
        type=_cli.positive_float,
        default=16.0,
        help="ARTBP poly-tail mean segment length L0 (> 1)",
    )
    ap.add_argument(
        "--alpha",
        type=_cli.positive_float,
        default=4.0,
        help="poly-tail exponent (> 1)",
    )
    ap.add_argument(
        "--eta0", type=_cli.positive_float, default=3e-4, help="η₀ in η₀/√(1+t)"
    )
    ap.add_argument(
        "--es-study",
        dest="es_study",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write influence_balancing_es.json: mean of N PES / ES / "
        "truncated ES estimates at θ₀ against the exact gradient",
    )
    ap.add_argument("--seed", type=_cli.nonneg_int, default=0, help="PRNG seed")
    _cli.add_quick(ap, QUICK)
    ap.add_argument("--out", default="results", help="output folder")
    args = _cli.parse(ap, argv, QUICK)
    if args.alpha <= 1:
        ap.error(f"--alpha must be > 1, got {args.alpha}")
    if args.artbp_mean <= 1:
        ap.error(f"--artbp-mean must be > 1, got {args.artbp_mean}")
    if len(set(args.ks)) != len(args.ks):
        ap.error(f"--ks must be distinct, got {args.ks}")
    return args


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    ests = make_estimators(args.ks, args.artbp_mean, args.alpha)
    key = jax.random.key(args.seed)
    rows, summary = [], []
    t0 = time.perf_counter()
    for est in ests:
        name = label(est, args.artbp_mean, args.alpha)
        mean_len = est.expected_depth(args.steps)
        recs, thetas = run_one(est, args.steps, args.eta0, key, mean_len)
        for r, th in zip(recs, thetas, strict=True):
            rows.append(
                {
                    "estimator": name,
                    "t": r.t_end,
                    "theta": th,
                    "loss": r.loss,
                    "segment_length": r.length,
                }
            )
        tail = [r.loss for r in recs if r.t_end > 0.9 * args.steps]
        summary.append(
            {
                "estimator": name,
                "mean_segment_length": float(np.mean([r.length for r in recs])),
                "updates": len(recs),
                "final_theta": thetas[-1],
                "distance_to_optimum": abs(thetas[-1] - THETA_STAR),
                "final_loss": float(np.mean(tail)),
                "seconds": recs[-1].seconds,
            }
        )
        print(
            f"{name:36s} θ_T = {thetas[-1]:+.4f}  |θ_T − θ*| = "
            f"{abs(thetas[-1] - THETA_STAR):.4f}  loss(last 10%) = "
            f"{summary[-1]['final_loss']:.4g}"
        )
    write_outputs(out, args, rows, summary, time.perf_counter() - t0)
    if args.es_study:
        es_rows = es_study(seed=args.seed)
        print(_cli.table(es_rows))
        (out / "influence_balancing_es.json").write_text(
            json.dumps({"rows": es_rows}, indent=1)
        )
    return summary


def write_outputs(out, args, rows, summary, seconds):
    """CSV, PNG and the JSON summary (always written, with any failure)."""
    run = _cli.Run()
    run.step("CSV", write_csv, out / "influence_balancing.csv", rows)
    run.wrote(str(out / "influence_balancing.csv"))
    if (
        run.step(
            "plot",
            plot,
            out / "influence_balancing.png",
            rows,
            summary,
            args,
            run.notes,
        )
        is None
    ):
        run.wrote(str(out / "influence_balancing.png"))
    meta = {
        "task": {
            "n": N_UNITS,
            "p": N_POS,
            "theta0": THETA0,
            "theta_star": THETA_STAR,
            "sensitivity": {
                K: truncated_sensitivity(K) for K in (1, 10, 20, 40, 41, 80)
            },
        },
        "summary": summary,
        "seconds": seconds,
    }
    cols = ("estimator", "updates", "final_theta", "distance_to_optimum", "final_loss")
    return run.finish(
        str(out / "influence_balancing.json"),
        meta,
        config=dict(vars(args)),
        seed=args.seed,
        rows=[{c: s[c] for c in cols} for s in summary],
    )


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)


def plot(path, rows, summary, args, notes=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.8))
    smoothed = []
    for s in summary:
        r = [x for x in rows if x["estimator"] == s["estimator"]]
        t = np.array([x["t"] for x in r])
        a1.plot(t, [x["theta"] for x in r], label=s["estimator"])
        loss = np.array([x["loss"] for x in r])
        # running mean over ~1% of the run, per segment
        win = max(1, len(loss) // 100)
        sm = np.convolve(loss, np.ones(win) / win, mode="valid")
        a2.plot(t[win - 1 :], sm, label=s["estimator"])
        smoothed.extend(sm)
    a1.axhline(THETA_STAR, color="k", ls="--", lw=1, label="θ* = −1/6")
    a1.set_xlabel("time step t")
    a1.set_ylabel("θ")
    a1.set_title("learned parameter")
    lim = 3 * max(abs(THETA0), abs(THETA_STAR))
    a1.set_ylim(-lim, lim)
    note = _cli.set_log_scale(a2, smoothed, label="loss")
    if note and notes is not None:
        notes.append(note)
    a2.set_xlabel("time step t")
    a2.set_ylabel("loss ½(s⁽¹⁾ − 1)² (running mean)")
    a2.set_title(f"online loss, η₀ = {args.eta0:g}")
    # one legend below the panels, never over the curves
    handles, labels = a1.get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=8
    )
    fig.suptitle(
        f"Influence balancing (Tallec & Ollivier 2017): TBPTT(k) vs ARTBP, one "
        f"stream of {args.steps} steps (batch 1), {N_UNITS} units, θ₀ = {THETA0}, "
        f"SGD η₀/√(1 + t), seed {args.seed}",
        fontsize=9,
    )
    rows_ = -(-len(labels) // 3)
    fig.tight_layout(rect=(0, 0.05 * rows_ + 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
