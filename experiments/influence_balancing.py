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
import platform
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jbptt
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


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m experiments.influence_balancing",
        description="Influence balancing: online TBPTT(k) vs ARTBP (Tallec & "
        "Ollivier 2017). Writes influence_balancing.{csv,json,png}.",
    )
    ap.add_argument("--steps", type=int, default=60_000, help="time steps")
    ap.add_argument(
        "--ks",
        type=int,
        nargs="+",
        default=[1, 10, 50, 200],
        help="TBPTT truncation lengths",
    )
    ap.add_argument(
        "--artbp-mean",
        type=float,
        default=16.0,
        help="ARTBP poly-tail mean segment length L0",
    )
    ap.add_argument("--alpha", type=float, default=4.0, help="poly-tail exponent")
    ap.add_argument("--eta0", type=float, default=3e-4, help="η₀ in η₀/√(1+t)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds: 3000 steps, k ∈ {1, 200}, η₀ = 3e-3",
    )
    ap.add_argument("--out", default="results", help="output folder")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.ks, args.eta0 = 3000, [1, 200], 3e-3
    if args.steps <= 0:
        ap.error("--steps must be positive")
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
    return summary


def write_outputs(out, args, rows, summary, seconds):
    with open(out / "influence_balancing.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    meta = {
        "config": {k: v for k, v in vars(args).items()},
        "task": {
            "n": N_UNITS,
            "p": N_POS,
            "theta0": THETA0,
            "theta_star": THETA_STAR,
            "sensitivity": {
                K: truncated_sensitivity(K) for K in (1, 10, 20, 40, 41, 80)
            },
        },
        "seed": args.seed,
        "summary": summary,
        "seconds": seconds,
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "numpy": np.__version__,
            "optax": optax.__version__,
        },
    }
    (out / "influence_balancing.json").write_text(json.dumps(meta, indent=2))
    plot(out / "influence_balancing.png", rows, summary, args)


def plot(path, rows, summary, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for s in summary:
        r = [x for x in rows if x["estimator"] == s["estimator"]]
        t = np.array([x["t"] for x in r])
        a1.plot(t, [x["theta"] for x in r], label=s["estimator"])
        loss = np.array([x["loss"] for x in r])
        # running mean over ~1% of the run, per segment
        win = max(1, len(loss) // 100)
        sm = np.convolve(loss, np.ones(win) / win, mode="valid")
        a2.plot(t[win - 1 :], sm, label=s["estimator"])
    a1.axhline(THETA_STAR, color="k", ls="--", lw=1, label="θ* = −1/6")
    a1.set_xlabel("time step t")
    a1.set_ylabel("θ")
    a1.set_title("learned parameter")
    lim = 3 * max(abs(THETA0), abs(THETA_STAR))
    a1.set_ylim(-lim, lim)
    a1.legend(fontsize=8)
    a2.set_yscale("log")
    a2.set_xlabel("time step t")
    a2.set_ylabel("loss ½(s⁽¹⁾ − 1)² (running mean)")
    a2.set_title(f"online loss, η₀ = {args.eta0:g}")
    a2.legend(fontsize=8)
    fig.suptitle("Influence balancing: TBPTT(k) vs ARTBP")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
