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
# # Reproductions: influence balancing, a character-level LM, sunspots
#
# Three studies of truncated backpropagation through time, each written with
# the public jbptt API in a few lines. The full form runs in a few minutes on a
# CPU; `JBPTT_QUICK=1` (the test suite) runs a tiny one in seconds. The
# experiments behind `experiments/RESULTS.md` run them at length, over seeds:
# `python -m experiments.influence_balancing`, `python -m experiments.char_lm`
# and `python -m experiments.sunspots`.

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import jbptt
from jbptt import cells, data, estimators, truncation

QUICK = os.environ.get("JBPTT_QUICK") == "1"

# %% [markdown]
# ## 1. Influence balancing (Tallec & Ollivier 2017)
#
# $s_{t+1} = A s_t + \theta v$ with 23 units, $A_{ii} = A_{i,i+1} = 1/2$,
# $v = (+1^{\times 10}, -1^{\times 13})$ and loss $\frac12 (s^{(1)}_t - 1)^2$;
# the optimum is $\theta^* = -1/6$. The influence of $\theta$ on $s^{(1)}$
# over the last $K$ steps changes sign late, so short truncations push
# $\theta$ the wrong way:

# %%
n, p = 23, 10
A = 0.5 * (np.eye(n) + np.eye(n, k=1))
v = np.r_[np.ones(p), -np.ones(n - p)]
for K in (1, 10, 20, 40, 41, 80):
    S = sum((np.linalg.matrix_power(A, k) @ v)[0] for k in range(K))
    print(f"S({K:>2}) = {S:+.3f}")

# %% [markdown]
# The system as a cell (`cells.from_fn`), trained online along one stream:
# one SGD update per segment, step size $\eta_0/\sqrt{1 + t}$. TBPTT(10)
# (its chunks backpropagate 1 to 10 steps: all positive sensitivities)
# against ARTBP with poly-tail segments of mean length 16.


# %%
def step(params, s, x):
    s = s @ A.T + params["theta"] * v
    return s, s[..., 0]


balance = cells.from_fn(
    lambda key, input_size=1, hidden_size=n: {"theta": jnp.asarray(0.5)},
    step,
    lambda params, batch_shape=(): jnp.ones(batch_shape + (n,)),
    name="influence_balancing",
)


def half_square(params, out_t, y_t):
    return 0.5 * (out_t - y_t) ** 2


STEPS = 1_000 if QUICK else 20_000
fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
final = {}
for name, est in [
    ("TBPTT(k=10)", estimators.tbptt(10)),
    ("ARTBP(poly-tail, mean 16)", estimators.artbp(truncation.poly_tail(16.0, 4.0))),
]:
    mean_len = est.expected_depth(STEPS)
    thetas = []
    jbptt.train.train(
        balance,
        half_square,
        balance.init(None),
        np.zeros((STEPS, 1)),
        np.ones(STEPS),
        optax.sgd(lambda u, m=mean_len: 3e-3 / jnp.sqrt(1.0 + m * u)),
        est,
        key=jax.random.key(0),
        callbacks=[lambda e, th=thetas: th.append((e.start, e.state.params["theta"]))],
    )
    ax.plot(*np.array(thetas, dtype=float).T, label=name)
    final[name] = float(thetas[-1][1])
    print(f"{name:26s} θ after {STEPS} steps: {final[name]:+.4g} (θ* = -0.167)")
ax.axhline(-1 / 6, color="gray", ls="--", label="θ* = −1/6")
ax.set(
    xlabel="time step t",
    ylabel="θ (a run that leaves the plot diverges)",
    ylim=(-1, 2),
    title=f"Influence balancing: one stream of {STEPS} steps (batch 1), SGD",
)
ax.legend()
plt.show()
assert abs(final["TBPTT(k=10)"] + 1 / 6) > abs(
    final["ARTBP(poly-tail, mean 16)"] + 1 / 6
)

# %% [markdown]
# TBPTT(10) drifts away from $\theta^*$; ARTBP, at the cost of TBPTT(16),
# converges to it.
#
# ## 2. Character-level language model on the standard library's sources
#
# An embedding, two stacked LSTM layers and an MLP readout read `B` contiguous
# streams of Python source and predict the next character, trained online:
# the state is carried along the streams, one Adam update per segment.
# TBPTT(k = 16) against ARTBP with the same mean segment length (poly-tail):
# the same characters, the same backward steps, about the same number of
# updates. Loss in bits per character on held-out text, against the unigram
# frequencies' entropy and the uniform guess.

# %%
CHARS, B, H = (4_000, 4, 16) if QUICK else (400_000, 32, 128)
corpus = data.load_corpus(max_chars=CHARS)
V = len(corpus.vocab)
lm = jbptt.readout(
    cells.stack([cells.lstm(), cells.lstm()]), V, "xent", vocab_size=V, hidden=(H,)
)
ids = jnp.asarray(data.streams(corpus.train, B))  # [T + 1, B] token ids
valid = jnp.asarray(data.streams(corpus.valid, 4))


def valid_bpc(params):
    h0 = lm.cell.initial_state(params, (4,))
    L, _ = jbptt.loss(lm.cell, lm.loss_fn)(params, h0, lm.encode(valid[:-1]), valid[1:])
    return float(L) / (valid.shape[0] - 1) / np.log(2)


counts = np.bincount(np.asarray(corpus.train), minlength=V) + 1
unigram = -(counts / counts.sum() * np.log2(counts / counts.sum())).sum()
params0 = lm.init(jax.random.key(4), 16, H)  # 16-dim embedding
print(f"{ids.shape[0] - 1} steps x {B} streams, vocabulary {V}")
print(
    f"untrained: {valid_bpc(params0):.2f} bpc; "
    f"unigram {unigram:.2f}, uniform {np.log2(V):.2f}"
)

curves = {}
runs = [
    ("TBPTT(k=16)", estimators.tbptt(16)),
    ("ARTBP(poly-tail, mean 16)", estimators.artbp_matched(16, "poly_tail")),
]
for name, est in runs[:1] if QUICK else runs:  # quick: one run, to test the code
    hist = jbptt.train.train(
        lm.cell,
        lm.loss_fn,
        params0,
        lm.encode(ids[:-1]),
        ids[1:],
        optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-3)),
        est,
        key=jax.random.key(5),
        buckets=jbptt.train.Buckets(min_bucket=32),
    )
    curves[name] = np.asarray(hist.loss) / np.log(2)
    print(
        f"{name:26s} {len(hist.loss)} updates: valid {valid_bpc(hist.params):.2f} bpc"
    )

fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
for name, bpc in curves.items():
    w = max(len(bpc) // 50, 1)  # running mean over w updates
    ax.plot(np.convolve(bpc, np.ones(w) / w, "valid"), label=name)
ax.axhline(unigram, color="gray", ls="--", label="unigram entropy")
ax.set(
    xlabel="update",
    ylabel="training loss (bits per character)",
    title=f"Stacked-LSTM character model: {B} streams of {ids.shape[0] - 1} characters",
)
ax.legend()
plt.show()

# %% [markdown]
# ## 3. Sunspots: one-step-ahead forecasts of the last 60 years
#
# A GRU reads the yearly sunspot numbers (normalised) and predicts the next
# year, trained online over the training years, epochs back to back along one
# stream, with TBPTT(k = 10) and with ARTBP of the same mean segment length.
# Test RMSE on the held-out tail, in sunspot units, against the naive forecast
# "next year = this year".

# %%
series = data.load_sunspots(test_size=60)
s, n_train = series.values, series.n_train
EPOCHS = 3 if QUICK else 150
model = jbptt.readout(cells.gru(), output_size=1)
xs = np.tile(s[: n_train - 1, None], (EPOCHS, 1))
ys = np.tile(s[1:n_train, None], (EPOCHS, 1))


def rmse(pred):
    return float(np.sqrt(np.mean((pred - s[n_train:]) ** 2)) * series.std)


print(f"naive forecast: test RMSE {rmse(s[n_train - 1 : -1]):.1f}")
fig, ax = plt.subplots(figsize=(8, 3.5), constrained_layout=True)
ax.plot(
    series.years[n_train:],
    s[n_train:] * series.std + series.mean,
    "k",
    label="observed",
)
for name, est in [
    ("TBPTT(k=10)", estimators.tbptt(10)),
    ("ARTBP(mean 10)", estimators.artbp_matched(10)),
]:
    hist = jbptt.train.train(
        model.cell,
        model.loss_fn,
        model.init(jax.random.key(6), 1, 16),
        xs,
        ys,
        optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-3)),
        est,
        key=jax.random.key(7),
        buckets=jbptt.train.Buckets(min_bucket=32),
    )
    h0 = model.cell.initial_state(hist.params)
    _, outs = jbptt.rnn_scan(model.cell, hist.params, h0, jnp.asarray(s[:-1, None]))
    pred = np.asarray(model.predict(hist.params, outs))[n_train - 1 :, 0]
    n = max(len(hist.loss) // 10, 1)
    print(
        f"{name:15s} training loss {np.mean(hist.loss[:n]):.3f} -> "
        f"{np.mean(hist.loss[-n:]):.3f}, "
        f"test RMSE {rmse(pred):.1f}"
    )
    ax.plot(
        series.years[n_train:],
        pred * series.std + series.mean,
        label=f"{name} forecast",
    )
ax.set(
    xlabel="year",
    ylabel="sunspot number",
    title="One-step-ahead forecasts on the held-out years",
)
ax.legend()
plt.show()
