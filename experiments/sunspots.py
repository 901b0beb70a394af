"""Sunspots: one-step-ahead forecasting with an RNN trained online by TBPTT and
ARTBP, against naive and linear autoregressive baselines.

Data: yearly mean sunspot numbers 1700–2008 shipped with ``statsmodels``
(``pip install jbptt[experiments]``), normalised with the training part's
mean and standard deviation; the last ``--test-size`` years are held out.

Models, each predicting ``y_{t+1}`` from the past up to ``y_t``:

* naive: ``ŷ_{t+1} = y_t``;
* AR(p): ``ŷ_{t+1} = a_0 + Σ_{i<p} a_{i+1} y_{t−i}``, least squares on the
  training part;
* GRU (``--hidden`` units, linear readout, ½(ŷ − y)² per step) trained online
  along the training part for ``--epochs`` passes (the state carried, one
  Adam update per truncation point) with TBPTT(k) or ARTBP (poly-tail,
  mean segment length k: matched cost). For the test tail the trained RNN
  reads the whole series and its one-step predictions on the tail are scored.

Reported: RMSE on the held-out tail in sunspot units, mean over ``--seeds``.

Run ``python -m experiments.sunspots --help``.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jbptt
from experiments import _cli
from jbptt import cells, data, estimators, truncation

SIZE = 32  # segments padded to ≥ 32 steps (tiny model): few compilations


def naive_forecast(series: np.ndarray, n_train: int) -> np.ndarray:
    """ŷ_{t+1} = y_t for the points after ``n_train``."""
    return series[n_train - 1 : -1]


def ar_forecast(series: np.ndarray, n_train: int, p: int) -> np.ndarray:
    """AR(p) by least squares on the first ``n_train`` points, one step ahead."""

    def design(idx):  # rows [1, y_{t-1}, ..., y_{t-p}] for targets y_t
        lags = [series[idx - i] for i in range(1, p + 1)]
        return np.stack([np.ones(len(idx))] + lags, 1)

    t_train = np.arange(p, n_train)
    coef, *_ = np.linalg.lstsq(design(t_train), series[t_train], rcond=None)
    return design(np.arange(n_train, len(series))) @ coef


def rmse(pred, target, scale) -> float:
    return float(np.sqrt(np.mean((pred - target) ** 2)) * scale)


def setup(hidden, lr):
    model = jbptt.readout(cells.gru(), output_size=1, loss="mse")
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))
    return model, model.loss_fn, opt


def rnn_forecast(setup_, est, series: np.ndarray, n_train: int, args, key):
    """Train online on the training part, then predict the tail one step ahead."""
    model, loss_fn, opt = setup_
    k_init, k_w = jax.random.split(key)
    params = model.init(k_init, 1, args.hidden)
    x_tr = series[: n_train - 1, None]
    y_tr = series[1:n_train, None]
    xs = np.tile(x_tr, (args.epochs, 1))  # epochs back to back along one stream
    ys = np.tile(y_tr, (args.epochs, 1))
    hist = jbptt.train.train(
        model.cell,
        loss_fn,
        params,
        xs,
        ys,
        opt,
        est,
        key=k_w,
        buckets=jbptt.train.Buckets(min_bucket=SIZE),
    )
    params = hist.params
    # read the whole series from a zero state: outs[t] predicts series[t+1]
    x_all = jnp.asarray(series[:-1, None])
    h0 = model.cell.initial_state(params)
    _, outs = jbptt.rnn_scan(model.cell, params, h0, x_all)
    pred = np.asarray(model.predict(params, outs))[:, 0]
    train_loss = float(np.mean(hist.loss[-max(1, len(hist.loss) // 20) :]))
    return pred[n_train - 1 :], pred[: n_train - 1], train_loss, len(hist.loss)


# --quick sets these defaults only: flags given explicitly are kept.
QUICK = dict(epochs=40, seeds=1)


def parse_args(argv=None) -> argparse.Namespace:
    ap = _cli.parser(
        "python -m experiments.sunspots",
        "Sunspots one-step-ahead forecasting: GRU trained online by "
        "TBPTT(k) and ARTBP vs naive and AR(p) baselines (RMSE on the held-out "
        "tail). Writes sunspots.{csv,json,png}.",
    )
    ap.add_argument(
        "--test-size", type=_cli.positive_int, default=60, help="held-out final years"
    )
    ap.add_argument(
        "--k",
        type=_cli.positive_int,
        default=8,
        help=f"TBPTT truncation and ARTBP mean segment length (≤ {SIZE})",
    )
    ap.add_argument(
        "--alpha",
        type=_cli.positive_float,
        default=4.0,
        help="ARTBP poly-tail α (> 1)",
    )
    ap.add_argument("--hidden", type=_cli.positive_int, default=16, help="hidden size")
    ap.add_argument(
        "--epochs",
        type=_cli.positive_int,
        default=150,
        help="passes over the training part",
    )
    ap.add_argument(
        "--lr", type=_cli.positive_float, default=5e-3, help="Adam learning rate"
    )
    ap.add_argument(
        "--ar-order",
        type=_cli.positive_int,
        default=9,
        help="p of the AR(p) baseline",
    )
    ap.add_argument(
        "--seeds", type=_cli.positive_int, default=3, help="seeds per RNN model"
    )
    ap.add_argument("--seed", type=_cli.nonneg_int, default=0, help="first seed")
    _cli.add_quick(ap, QUICK)
    ap.add_argument("--out", default="results", help="output folder")
    args = _cli.parse(ap, argv, QUICK)
    if args.k > SIZE:
        ap.error(f"--k must be at most {SIZE}, got {args.k}")
    if args.alpha <= 1:
        ap.error(f"--alpha must be > 1, got {args.alpha}")
    return args


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    s = data.load_sunspots(args.test_size)
    y, n = s.values, s.n_train
    target = y[n:]
    preds = {
        "naive": naive_forecast(y, n),
        f"AR({args.ar_order})": ar_forecast(y, n, args.ar_order),
    }
    summary = [
        {"model": m, "test_rmse": rmse(p, target, s.std), "seed": None}
        for m, p in preds.items()
    ]
    ests = {
        f"GRU TBPTT(k={args.k})": estimators.tbptt(args.k),
        f"GRU ARTBP(L0={args.k}, a={args.alpha:g})": estimators.artbp(
            truncation.poly_tail(float(args.k), args.alpha)
        ),
    }
    setup_ = setup(args.hidden, args.lr)
    t0 = time.perf_counter()
    for name, est in ests.items():
        runs = []
        for seed in range(args.seed, args.seed + args.seeds):
            pred, _, train_loss, updates = rnn_forecast(
                setup_, est, y, n, args, jax.random.key(seed)
            )
            runs.append(pred)
            summary.append(
                {
                    "model": name,
                    "test_rmse": rmse(pred, target, s.std),
                    "seed": seed,
                    "train_loss": train_loss,
                    "updates": updates,
                }
            )
        preds[name] = np.mean(runs, axis=0)
    table = {}
    for r in summary:
        table.setdefault(r["model"], []).append(r["test_rmse"])
    for m, v in table.items():
        print(
            f"{m:28s} test RMSE {np.mean(v):7.2f}"
            + (f" ± {np.std(v):.2f} ({len(v)} seeds)" if len(v) > 1 else "")
        )

    meta = {
        "data": {
            "source": "statsmodels.datasets.sunspots",
            "years": [int(s.years[0]), int(s.years[-1])],
            "n_train": n,
            "n_test": len(target),
            "train_mean": s.mean,
            "train_std": s.std,
        },
        "test_rmse": {m: float(np.mean(v)) for m, v in table.items()},
        "test_rmse_std": {m: float(np.std(v)) for m, v in table.items()},
        "rows": summary,
        "seconds": time.perf_counter() - t0,
    }
    run = _cli.Run()
    run.step("CSV", write_csv, out / "sunspots.csv", summary)
    run.wrote(str(out / "sunspots.csv"))
    if run.step("plot", plot, out / "sunspots.png", s, preds, meta, args) is None:
        run.wrote(str(out / "sunspots.png"))
    return run.finish(
        str(out / "sunspots.json"),
        meta,
        config=dict(vars(args)),
        seed=args.seed,
        rows=[
            {
                "model": m,
                "test RMSE": meta["test_rmse"][m],
                "± (std over seeds)": meta["test_rmse_std"][m],
                "runs": len(v),
            }
            for m, v in table.items()
        ],
    )


def write_csv(path, summary):
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(
            f, fieldnames=["model", "seed", "test_rmse", "train_loss", "updates"]
        )
        wr.writeheader()
        wr.writerows(summary)


def plot(path, s, preds, meta, args=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = s.n_train
    raw = s.values * s.std + s.mean
    fig, ax = plt.subplots(figsize=(12, 4))
    ax.plot(s.years[n - 20 :], raw[n - 20 :], "k-", lw=2, label="observed")
    for m, p in preds.items():
        ax.plot(
            s.years[n:],
            p * s.std + s.mean,
            marker=".",
            ms=3,
            label=f"{m} (RMSE {meta['test_rmse'][m]:.1f})",
        )
    ax.axvline(s.years[n] - 0.5, color="gray", ls=":", lw=1)
    ax.set_xlabel("year")
    ax.set_ylabel("yearly sunspot number")
    title = "Sunspots: one-step-ahead forecasts on the held-out tail"
    if args is not None:
        seeds = f"seed {args.seed}" if args.seeds == 1 else (
            f"mean over seeds {args.seed}–{args.seed + args.seeds - 1}")  # fmt: skip
        title += (
            f" (last {args.test_size} years; trained on {n} years)\nGRU({args.hidden}) "
            f"trained online over {args.epochs} epochs along one stream (batch 1), "
            f"Adam lr {args.lr:g}, {seeds}; RMSE in sunspot units"
        )
    ax.set_title(title, fontsize=9)
    # legend to the right of the axes, never over the forecasts
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
