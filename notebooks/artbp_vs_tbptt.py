# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %%

# %% [markdown]
# # ARTBP against TBPTT: bias and variance at matched cost
#
# Every estimator in jbptt is a choice of link weights `w` in one reverse scan
# (docs/design.md, "The one equation"): TBPTT(k) cuts every k steps, ARTBP cuts
# at random with probability `c` and reweights surviving links by `1/(1 − c)`,
# so that `E[ĝ] = ∇L`. Here we measure, on a task whose loss depends on inputs
# up to 24 steps back, how far each estimator is from the exact gradient `g`:
#
# * relative bias `‖E ĝ − g‖ / ‖g‖` with a 95% interval,
# * relative variance `E‖ĝ − E ĝ‖² / ‖g‖²`,
#
# against the expected truncation depth (steps backpropagated), the cost axis.
# `jbptt.sweep` samples all estimators in one `jit`: the forward is shared,
# only the reverse scans are vmapped. The full form runs in about a minute on
# a CPU; `JBPTT_QUICK=1` (the test suite) runs a tiny one in seconds.
# `make demo` runs the same study on more cells and points.

# %%
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jbptt
from jbptt import cells, estimators, plotting, sweep

QUICK = os.environ.get("JBPTT_QUICK") == "1"
T, HIDDEN, BATCH, SAMPLES, STEPS = (
    (16, 8, 8, 32, 60) if QUICK else (64, 32, 32, 256, 400)
)
DELAYS = (1, 4, 12) if QUICK else (2, 8, 24)


def delayed_sum(key, T, batch):
    """y_t = Σ_i x_{t − d_i}^{(i)}: input channel i is recalled d_i steps later."""
    xs = jax.random.normal(key, (T, batch, len(DELAYS)))
    ys = sum(jnp.pad(xs[: T - d, :, i], ((d, 0), (0, 0))) for i, d in enumerate(DELAYS))
    return xs, ys[..., None]


model = jbptt.readout(cells.elman("tanh"), output_size=1)
params = model.init(jax.random.key(0), len(DELAYS), HIDDEN)
h0 = model.cell.initial_state(params, (BATCH,))
xs, ys = delayed_sum(jax.random.key(1), T, BATCH)
print(f"delayed sum, delays {DELAYS}: xs {xs.shape}, ys {ys.shape}")

# %% [markdown]
# ## The estimators
# TBPTT(k) for k = 1, 2, 4, …, T, and ARTBP matched to the same expected
# depth E[min(L, T)] = k (1 < k < T): geometric truncation (constant c), and a
# poly-tail schedule (α = 4, Tallec & Ollivier 2017).

# %%
ks = [2**i for i in range(T.bit_length()) if 2**i <= T]
ests, families = [], []
for k in ks:
    ests.append(estimators.tbptt(k))
    families.append("tbptt")
for k in ks[1:-1]:
    geom = estimators.artbp_matched(k, T=T)
    poly = estimators.artbp_matched(k, "poly_tail", 4.0, T=T)
    ests += [
        geom._replace(name=f"artbp-geom(k={k})"),
        poly._replace(name=f"artbp-poly(k={k})"),
    ]
    families += ["artbp-geom", "artbp-poly"]
for e in ests:
    print(f"{e.name:18s} expected depth {e.expected_depth(T):5.2f}")

# %% [markdown]
# ## One sweep at the initial parameters
# `make_sweep` compiles once; we reuse it below at another parameter point.

# %%
run = sweep.make_sweep(model.cell, model.loss_fn, ests, SAMPLES)


def sweep_at(params, key):
    g, stats = run(params, h0, xs, ys, key)
    rows = sweep.to_result(ests, stats, g, T, SAMPLES).rows()
    for r, family in zip(rows, families, strict=True):
        r["family"] = family
    return rows


def show(rows):
    print(
        f"{'estimator':18s} {'depth':>6s} {'rel. bias':>9s} {'95% CI':>16s} "
        f"{'rel. variance':>13s}"
    )
    for r in rows:
        ci = (
            ""
            if np.isnan(r["rel_bias_lo"])
            else f"[{r['rel_bias_lo']:.3f}, {r['rel_bias_hi']:.3f}]"
        )
        print(
            f"{r['estimator']:18s} {r['expected_depth']:6.1f} {r['rel_bias']:9.3f} "
            f"{ci:>16s} {r['rel_variance']:13.3g}"
        )


rows0 = sweep_at(params, jax.random.key(2))
show(rows0)
title = f"elman, delayed sum {DELAYS}, T = {T}, batch {BATCH}, {SAMPLES} samples"
_ = plotting.bias_variance(rows0, title=f"{title}: initial parameters")

# %% [markdown]
# TBPTT's bias is exact (it is deterministic) and shrinks as k grows; ARTBP's
# intervals contain 0. The price is variance, which grows as the expected
# depth shrinks: with geometric truncation the weights along a segment of
# length m are `(1 − c)^−m`.
#
# ## Bias depends on where you are
# Train with full BPTT (Adam, a fresh batch each step) and sweep again: once
# the network uses its memory, long-range terms carry more of the gradient
# and TBPTT's bias changes, while ARTBP stays unbiased.

# %%
grad_fn = jax.jit(jbptt.value_and_grad(model.cell, model.loss_fn))
opt = optax.adam(3e-3)
state, losses = opt.init(params), []
trained = params
for step in range(STEPS):
    x, y = delayed_sum(jax.random.fold_in(jax.random.key(3), step), T, BATCH)
    (loss, _), g = grad_fn(trained, h0, x, y)
    updates, state = opt.update(g, state, trained)
    trained = optax.apply_updates(trained, updates)
    losses.append(float(loss) / T)
silent = jax.tree.map(jnp.zeros_like, params)  # a readout that predicts 0
silent = float(jbptt.loss(model.cell, model.loss_fn)(silent, h0, xs, ys)[0]) / T
n = max(STEPS // 10, 1)
print(
    f"full BPTT, {STEPS} Adam steps: loss per step {np.mean(losses[:n]):.3f} -> "
    f"{np.mean(losses[-n:]):.3f} (predicting 0: {silent:.3f})"
)

# %%
rows1 = sweep_at(trained, jax.random.key(4))
show(rows1)
_ = plotting.bias_variance(rows1, title=f"{title}: after {STEPS} training steps")

# %%
for k in ks[:-1]:
    b0 = next(r["rel_bias"] for r in rows0 if r["estimator"] == f"tbptt(k={k})")
    b1 = next(r["rel_bias"] for r in rows1 if r["estimator"] == f"tbptt(k={k})")
    print(f"TBPTT(k={k}): relative bias {b0:.3f} at init -> {b1:.3f} after training")
