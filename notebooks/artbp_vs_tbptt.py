# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # ARTBP against TBPTT: bias and variance at matched cost
#
# Every estimator in jbptt is a choice of link weights `w` in one reverse scan
# (docs/design.md, "The one equation"): TBPTT(k) cuts every k steps, ARTBP cuts
# at random with probability `c` and reweights surviving links by `1/(1 − c)`,
# so that `E[ĝ] = ∇L`. Here we measure, on a task whose loss depends on inputs
# up to 12 steps back, how far each estimator is from the exact gradient `g`:
#
# * relative bias `‖E ĝ − g‖ / ‖g‖` with a 95% interval,
# * relative variance `E‖ĝ − E ĝ‖² / ‖g‖²`,
#
# against the expected truncation depth (steps backpropagated), the cost axis.
# `jbptt.sweep` samples all estimators in one `jit`: the forward is shared,
# only the reverse scans are vmapped. The settings are small so that this
# notebook runs in seconds; `make demo` runs the full sweep.

# %%
import sys
from pathlib import Path

if not (Path.cwd() / "experiments").exists():  # run from notebooks/
    sys.path.insert(0, str(Path.cwd().parent))

import jax
import matplotlib.pyplot as plt
import numpy as np

from experiments import bias_sweep, tasks
from jbptt import sweep

T, HIDDEN, BATCH, SAMPLES = 16, 8, 8, 128
task = tasks.delayed_sum((1, 4, 12))
model, problem = tasks.make_problem(task, "elman", jax.random.key(0), T, HIDDEN, BATCH)
print(task.name, problem.xs.shape, problem.ys.shape)

# %% [markdown]
# ## The estimators
# TBPTT(k) for k = 1, 2, 4, 8, 16 = T, and ARTBP matched to the same expected
# depth E[min(L, T)] = k (k < T): geometric truncation (constant c), and a
# poly-tail schedule (α = 4, Tallec & Ollivier 2017).

# %%
specs = bias_sweep.make_estimators([1, 2, 4, 8, 16], T)
estimators = [e for _, _, e in specs]
for family, k, e in specs:
    print(f"{family:11s} k={k:<4g} {e.name:22s} depth={e.expected_depth(T):.2f}")

# %% [markdown]
# ## One sweep at the initial parameters
# `make_sweep` compiles once; we reuse it below at other parameter points.

# %%
run = sweep.make_sweep(model.cell, model.loss_fn, estimators, SAMPLES)


def sweep_at(params, step, key):
    g, stats = run(params, problem.h0, problem.xs, problem.ys, key)
    res = sweep.to_result(estimators, stats, g, T, SAMPLES)
    rows = []
    for (family, k, _), r in zip(specs, res.rows(), strict=True):
        r.update(family=family, k=k, train_step=step, cell="elman")
        rows.append(r)
    return rows


rows0 = sweep_at(problem.params, 0, jax.random.key(1))
bias_sweep.print_table(rows0)

# %% [markdown]
# TBPTT's bias is exact (it is deterministic) and shrinks as k grows; ARTBP's
# intervals contain 0. The price is variance, which grows as the expected
# depth shrinks: with geometric truncation the weights along a segment of
# length m are `(1 − c)^−m`.


# %%
def plot_rows(rows, title):
    fig, (ax_b, ax_v) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    colors = {"tbptt": "tab:red", "artbp-geom": "tab:blue", "artbp-poly": "tab:green"}
    for fam, color in colors.items():
        rs = sorted(
            (r for r in rows if r["family"] == fam), key=lambda r: r["expected_depth"]
        )
        x = np.array([r["expected_depth"] for r in rs])
        b = np.array([r["rel_bias"] for r in rs])
        if fam == "tbptt":
            ax_b.plot(x, b, "o-", color=color, label=fam)
            ok = b > 1e-3
            ax_v.plot(
                x[ok],
                b[ok] ** 2,
                "o--",
                color=color,
                mfc="none",
                label="tbptt bias² (variance 0)",
            )
        else:
            lo = np.array([r["rel_bias_lo"] for r in rs])
            hi = np.array([r["rel_bias_hi"] for r in rs])
            ax_b.errorbar(
                x,
                b,
                yerr=[b - lo, hi - b],
                fmt="s-",
                capsize=3,
                color=color,
                label=f"{fam} (95% CI)",
            )
            ax_v.plot(x, [r["rel_variance"] for r in rs], "s-", color=color, label=fam)
    for ax in (ax_b, ax_v):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("expected truncation depth k")
        ax.grid(alpha=0.3)
        ax.legend()
    ax_b.set_ylabel("relative bias ‖E ĝ − g‖/‖g‖")
    ax_v.set_yscale("log")
    ax_v.set_ylabel("relative variance E‖ĝ − E ĝ‖²/‖g‖²")
    fig.suptitle(title)
    return fig


plot_rows(rows0, "elman, initial parameters")

# %% [markdown]
# ## Bias depends on where you are
# Train with full BPTT (Adam) for a while and sweep again: once the network
# uses its memory, long-range terms carry more of the gradient and TBPTT's
# bias grows, while ARTBP stays unbiased.

# %%
args = bias_sweep.parse_args(
    [
        "--T",
        str(T),
        "--batch",
        str(BATCH),
        "--delays",
        "1",
        "4",
        "12",
        "--train-steps",
        "150",
        "--points",
        "2",
    ]
)
points = list(
    bias_sweep.trajectory(
        model,
        task,
        problem.params,
        problem.h0,
        args,
        jax.random.key(2),
        problem.xs.dtype,
    )
)
step, params, loss = points[-1]
print(f"after {step} steps: training loss per step {loss:.3f}")
rows1 = sweep_at(params, step, jax.random.key(3))
bias_sweep.print_table([r for r in rows1 if r["family"] != "artbp-poly"])
plot_rows(rows1, f"elman after {step} training steps")

# %%
for k in (1, 2, 4, 8):
    b0 = next(r["rel_bias"] for r in rows0 if r["estimator"] == f"tbptt(k={k})")
    b1 = next(r["rel_bias"] for r in rows1 if r["estimator"] == f"tbptt(k={k})")
    print(f"TBPTT(k={k}): relative bias {b0:.3f} at init -> {b1:.3f} after training")

# %% [markdown]
# ## A real model: embedding → 2-layer LSTM → MLP readout, trained with ARTBP
# The same estimators train a character model on the built-in corpus (Python
# standard library sources). `vocab_size=` puts an embedding of the integer
# tokens in front of the cell, `cells.stack` stacks two LSTM layers that keep
# their hand-derived reverse rules, `hidden=` makes the readout an MLP; ARTBP
# segments of expected length 10 drive one Adam update each (`Buckets(min_bucket=64)`:
# segments up to 64 steps share one compiled step).

# %%
import jax.numpy as jnp
import optax

import jbptt
from jbptt import cells, data, estimators

corpus = data.load_corpus(max_chars=20_000)
V = len(corpus.vocab)
lm = jbptt.readout(
    cells.stack([cells.lstm(), cells.lstm()]), V, "xent", vocab_size=V, hidden=(32,)
)
lm_params = lm.init(jax.random.key(4), 8, 32)  # 8-dim embedding, 32 units a layer
ids = jnp.asarray(data.streams(corpus.train[:801], 4))  # [T + 1, B] token ids
hist = jbptt.train.train(
    lm.cell,
    lm.loss_fn,
    lm_params,
    lm.encode(ids[:-1]),
    ids[1:],
    optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-3)),
    estimators.artbp_matched(10, "poly_tail"),
    key=jax.random.key(5),
    buckets=jbptt.train.Buckets(min_bucket=64),
)
first, last = np.mean(hist.loss[:5]), np.mean(hist.loss[-5:])
print(
    f"stacked-LSTM char model, {len(hist.loss)} ARTBP segments: loss per "
    f"character {first:.2f} -> {last:.2f} (uniform guess: {np.log(V):.2f})"
)
